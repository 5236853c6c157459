/*
 * bsdsym.S - a kernel with XEN_ELFNOTE_BSD_SYMTAB "yes" finds its own symbol table after its
 * image, as xen/common/libelf/libelf-loader.c (elf_parse_bsdsyms, elf_load_bsdsyms) puts it:
 * at the end of the image rounded up to 4 bytes, a size word, then an ELF header (ELF magic,
 * e_shoff 64, e_shnum 3), three section headers (null, SYMTAB linked to section 2, STRTAB) with
 * sh_offset relative to that header, the symtab and the strtab; the size word counts from the
 * header to the end of the strtab. start_info lies past it (libelf-dominfo.c moves virt_kend).
 * Prints "bsdsym: ok" (or which check failed) and powers off; `found` keeps the table's address.
 */
#include "common.S"

        ELFNOTE(11, .asciz "yes")               /* BSD_SYMTAB */

.macro CHECK cond, msg
        j\cond  9f
        PRINT   \msg, 12
        POWEROFF
9:
.endm

        .text
        .globl _start
_start:
        movl    $stack_top, %esp
        movl    %esi, %ebp                      /* start_info */
        movl    $image_end+3, %edi
        andl    $~3, %edi                       /* bsd_symtab_pstart */
        movl    %edi, found
        cmpl    $0x464c457f, 4(%edi)            /* "\177ELF" */
        CHECK   e, bad_magic
        cmpw    $3, 4+48(%edi)                  /* e_shnum */
        CHECK   e, bad_shnum
        cmpl    $64, 4+32(%edi)                 /* e_shoff */
        CHECK   e, bad_shoff
        leal    4+64(%edi), %ebx                /* section headers (Elf32_Shdr, 40 bytes) */
        cmpl    $2, 40+4(%ebx)                  /* [1].sh_type: SHT_SYMTAB */
        CHECK   e, bad_symtab
        cmpl    $2, 40+24(%ebx)                 /* [1].sh_link: 2 */
        CHECK   e, bad_link
        cmpl    $3, 80+4(%ebx)                  /* [2].sh_type: SHT_STRTAB */
        CHECK   e, bad_strtab
        movl    80+16(%ebx), %eax               /* [2].sh_offset + sh_size == size */
        addl    80+20(%ebx), %eax
        cmpl    %eax, (%edi)
        CHECK   e, bad_size
        /* the first symbol's name (entry 1 of the symtab): a string of the strtab */
        movl    40+16(%ebx), %edx               /* symtab offset from the ELF header */
        leal    4(%edi,%edx), %edx
        movl    16(%edx), %ecx                  /* symbol 1 st_name */
        movl    80+16(%ebx), %eax
        leal    4(%edi,%eax), %eax              /* the strtab */
        cmpb    $0, -1(%eax,%ecx)               /* names start after a NUL */
        CHECK   e, bad_name
        leal    4(%edi), %eax
        addl    (%edi), %eax                    /* the end of the strtab */
        cmpl    %eax, %ebp
        CHECK   a, bad_end
        PRINT   ok, ok_end-ok
        POWEROFF

        .balign 4096
        .globl hypercall_page
hypercall_page:
        .fill   4096, 1, 0xcc

        .data
        .globl found
found:  .long   0
ok:     .ascii  "bsdsym: ok\n"
ok_end:
bad_magic:  .ascii "bad magic  \n"
bad_shnum:  .ascii "bad shnum  \n"
bad_shoff:  .ascii "bad shoff  \n"
bad_symtab: .ascii "bad symtab \n"
bad_link:   .ascii "bad link   \n"
bad_strtab: .ascii "bad strtab \n"
bad_size:   .ascii "bad size   \n"
bad_name:   .ascii "bad name   \n"
bad_end:    .ascii "bad end    \n"

        .bss
        .balign 16
        .space  4096
stack_top:
        .globl image_end
image_end:
