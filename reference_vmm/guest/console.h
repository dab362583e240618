/* COM1 output (polled 16550 at 0x3f8) and a small printf. */
#ifndef VMTRACE_GUEST_CONSOLE_H
#define VMTRACE_GUEST_CONSOLE_H

#include <stdarg.h>
#include <stddef.h>

#define COM1_PORT 0x3f8

void console_init(void);
void console_putc(char c);
void console_write(const char *s);

/* Write n bytes of s for use inside a quoted record value ("..."): a double
 * quote becomes a single quote, control characters become '?'. */
void console_write_quoted(const char *s, size_t n);

/* printf subset: %s %c %d %u %x %lu %lx %llu %llx %%, an optional width and
 * '0' flag for the integer conversions.  Output goes to COM1 only. */
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void kvprintf(const char *fmt, va_list ap);

#endif
