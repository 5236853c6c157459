/*
 * lib.c - freestanding string functions and printf-style formatting for
 * pvdemo64.  No libc, no libgcc (64-bit division is a single divq).
 */
#include "lib.h"

/* ------------------------------------------------------------------------
 * Memory and string functions
 * ------------------------------------------------------------------------ */
void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;

    while (n--)
        *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;

    if (d < s) {
        while (n--)
            *d++ = *s++;
    } else {
        while (n--)
            d[n] = s[n];
    }
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;

    while (n--)
        *d++ = (unsigned char)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;

    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x - *y;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;

    while (s[n])
        n++;
    return n;
}

size_t strnlen(const char *s, size_t max)
{
    size_t n = 0;

    while (n < max && s[n])
        n++;
    return n;
}

int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return (unsigned char)*a - (unsigned char)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (unsigned char)*a - (unsigned char)*b;
        if (!*a)
            break;
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Formatting
 * ------------------------------------------------------------------------ */
struct outbuf {
    char *buf;
    size_t size;        /* capacity including the terminating NUL */
    size_t len;         /* characters produced so far (may exceed size) */
};

static void out_char(struct outbuf *o, char c)
{
    if (o->len + 1 < o->size)
        o->buf[o->len] = c;
    o->len++;
}

/* Divide *v by 10 and return the remainder (one "divq" on x86_64). */
static unsigned int div64_10(uint64_t *v)
{
    unsigned int rem = (unsigned int)(*v % 10);

    *v /= 10;
    return rem;
}

#define FL_ZERO  1
#define FL_LEFT  2
#define FL_ALT   4

static void out_number(struct outbuf *o, uint64_t v, int base, int negative,
                       int upper, int flags, int width)
{
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    char tmp[24];
    int n = 0, len;

    if (v == 0)
        tmp[n++] = '0';
    while (v) {
        if (base == 16) {
            tmp[n++] = digits[v & 15];
            v >>= 4;
        } else {
            tmp[n++] = digits[div64_10(&v)];
        }
    }

    len = n + (negative ? 1 : 0) + ((flags & FL_ALT) && base == 16 ? 2 : 0);
    if (!(flags & FL_LEFT) && !(flags & FL_ZERO))
        for (; width > len; width--)
            out_char(o, ' ');
    if (negative)
        out_char(o, '-');
    if ((flags & FL_ALT) && base == 16) {
        out_char(o, '0');
        out_char(o, upper ? 'X' : 'x');
    }
    if (!(flags & FL_LEFT) && (flags & FL_ZERO))
        for (; width > len; width--)
            out_char(o, '0');
    while (n)
        out_char(o, tmp[--n]);
    if (flags & FL_LEFT)
        for (; width > len; width--)
            out_char(o, ' ');
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct outbuf o = { buf, size, 0 };

    for (; *fmt; fmt++) {
        int flags = 0, width = 0, prec = -1, lng = 0;

        if (*fmt != '%') {
            out_char(&o, *fmt);
            continue;
        }
        fmt++;

        for (;; fmt++) {
            if (*fmt == '0')
                flags |= FL_ZERO;
            else if (*fmt == '-')
                flags |= FL_LEFT;
            else if (*fmt == '#')
                flags |= FL_ALT;
            else
                break;
        }
        if (*fmt == '*') {
            width = va_arg(ap, int);
            fmt++;
        } else {
            while (*fmt >= '0' && *fmt <= '9')
                width = width * 10 + (*fmt++ - '0');
        }
        if (*fmt == '.') {
            fmt++;
            prec = 0;
            if (*fmt == '*') {
                prec = va_arg(ap, int);
                fmt++;
            } else {
                while (*fmt >= '0' && *fmt <= '9')
                    prec = prec * 10 + (*fmt++ - '0');
            }
        }
        while (*fmt == 'l') {
            lng++;
            fmt++;
        }

        switch (*fmt) {
        case 'd':
        case 'i': {
            int64_t v = lng >= 2 ? va_arg(ap, long long)
                      : lng == 1 ? va_arg(ap, long) : va_arg(ap, int);
            out_number(&o, v < 0 ? -(uint64_t)v : (uint64_t)v, 10, v < 0, 0,
                       flags, width);
            break;
        }
        case 'u':
        case 'x':
        case 'X': {
            uint64_t v = lng >= 2 ? va_arg(ap, unsigned long long)
                       : lng == 1 ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int);
            out_number(&o, v, *fmt == 'u' ? 10 : 16, 0, *fmt == 'X', flags, width);
            break;
        }
        case 'p':
            out_number(&o, (uintptr_t)va_arg(ap, void *), 16, 0, 0,
                       FL_ALT | FL_ZERO, 18);
            break;
        case 'c':
            out_char(&o, (char)va_arg(ap, int));
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            int n;

            if (!s)
                s = "(null)";
            n = prec >= 0 ? (int)strnlen(s, prec) : (int)strlen(s);
            if (!(flags & FL_LEFT))
                for (; width > n; width--)
                    out_char(&o, ' ');
            for (int i = 0; i < n; i++)
                out_char(&o, s[i]);
            for (; width > n; width--)
                out_char(&o, ' ');
            break;
        }
        case '%':
            out_char(&o, '%');
            break;
        case '\0':
            fmt--;      /* a lone '%' at the end: stop at the NUL */
            break;
        default:        /* unknown conversion: print it verbatim */
            out_char(&o, '%');
            out_char(&o, *fmt);
            break;
        }
    }

    if (size)
        buf[o.len < size ? o.len : size - 1] = '\0';
    return (int)o.len;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

void vprintk(const char *fmt, va_list ap)
{
    char buf[512];
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);

    if (n > (int)sizeof(buf) - 1)
        n = sizeof(buf) - 1;
    console_write(buf, n);
}

void printk(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vprintk(fmt, ap);
    va_end(ap);
}
