/* COM1 output: a polled 16550 UART at 0x3f8.
 *
 * The guest asks little of the UART: a write to THR (0x3f8) sends a byte,
 * and LSR (0x3fd) bit 5 (THR empty) says when the next one may be sent.  The
 * poll is bounded, so a VMM whose LSR never reports empty still gets every
 * byte, just without flow control.  No baud-rate programming: virtual UARTs
 * ignore it, and leaving the divisor alone keeps DLAB writes (which a VMM
 * without DLAB support would print as garbage) out of the stream. */
#include <stdint.h>

#include "console.h"
#include "io.h"
#include "lib.h"

#define UART_THR 0  /* transmit holding register (write) */
#define UART_IER 1  /* interrupt enable */
#define UART_LCR 3  /* line control */
#define UART_LSR 5  /* line status */
#define UART_LSR_THRE 0x20
#define UART_LCR_8N1 0x03
#define UART_POLL_LIMIT 100000

void console_init(void)
{
    outb(COM1_PORT + UART_IER, 0x00);           /* polled: no UART interrupts */
    outb(COM1_PORT + UART_LCR, UART_LCR_8N1);   /* 8N1, DLAB clear */
}

void console_putc(char c)
{
    int i;

    for (i = 0; i < UART_POLL_LIMIT; i++)
        if (inb(COM1_PORT + UART_LSR) & UART_LSR_THRE)
            break;
    outb(COM1_PORT + UART_THR, (uint8_t)c);
}

void console_write(const char *s)
{
    for (; *s; s++) {
        if (*s == '\n')
            console_putc('\r');
        console_putc(*s);
    }
}

void console_write_quoted(const char *s, size_t n)
{
    for (; n; n--, s++) {
        char c = *s;

        if (c == '"')
            c = '\'';
        else if ((unsigned char)c < 0x20 || (unsigned char)c >= 0x7f)
            c = '?';
        console_putc(c);
    }
}

static void put_uint(uint64_t v, unsigned base, int width, char pad)
{
    char buf[24];
    int n = 0;

    do {
        unsigned digit = (unsigned)(v % base);

        buf[n++] = (char)(digit < 10 ? '0' + digit : 'a' + digit - 10);
        v /= base;
    } while (v);
    while (n < width && n < (int)sizeof(buf))
        buf[n++] = pad;
    while (n)
        console_putc(buf[--n]);
}

void kvprintf(const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        int width = 0, longs = 0;
        char pad = ' ';

        if (*fmt != '%') {
            if (*fmt == '\n')
                console_putc('\r');
            console_putc(*fmt);
            continue;
        }
        fmt++;
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l') {
            longs++;
            fmt++;
        }
        switch (*fmt) {
        case 's': {
            const char *s = va_arg(ap, const char *);

            console_write(s ? s : "(null)");
            break;
        }
        case 'c':
            console_putc((char)va_arg(ap, int));
            break;
        case 'd': {
            int64_t v = longs >= 2 ? va_arg(ap, long long)
                      : longs == 1 ? va_arg(ap, long) : va_arg(ap, int);

            if (v < 0) {
                console_putc('-');
                put_uint((uint64_t)0 - (uint64_t)v, 10, width, pad);
            } else {
                put_uint((uint64_t)v, 10, width, pad);
            }
            break;
        }
        case 'u':
        case 'x': {
            uint64_t v = longs >= 2 ? va_arg(ap, unsigned long long)
                       : longs == 1 ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int);

            put_uint(v, *fmt == 'x' ? 16 : 10, width, pad);
            break;
        }
        case '%':
            console_putc('%');
            break;
        case '\0':
            return;
        default:
            console_putc('%');
            console_putc(*fmt);
            break;
        }
    }
}

void kprintf(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    kvprintf(fmt, ap);
    va_end(ap);
}
