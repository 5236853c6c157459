/*
 * lib.h - freestanding helpers for pvdemo64: string functions and a small
 * printf-style formatter (lib.c).
 */
#ifndef PVDEMO64_LIB_H
#define PVDEMO64_LIB_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* gcc may emit calls to these four even in freestanding code. */
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);

size_t strlen(const char *s);
size_t strnlen(const char *s, size_t max);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

/*
 * Formatting: %s %c %d %i %u %x %X %p %%, with flags '0' '-' '#', a field
 * width, a precision for %s ("%.20s", "%.*s") and the length modifiers
 * l and ll (both 64-bit here, e.g. %lx, %llu).  %p prints 0x%016lx.
 * No libgcc is linked.
 */
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Provided by kernel.c: raw console output (buffered until Xen can be called). */
void console_write(const char *s, unsigned int len);

/* printk: format into a 512-byte buffer and write it to the console. */
void printk(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void vprintk(const char *fmt, va_list ap);

#endif /* PVDEMO64_LIB_H */
