/* The few libc pieces the guest needs, written for it (no libc, no libgcc). */
#ifndef VMTRACE_GUEST_LIB_H
#define VMTRACE_GUEST_LIB_H

#include <stddef.h>
#include <stdint.h>

void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/* Compare the n bytes at s with the NUL-terminated word; 1 if equal. */
int str_eq_n(const char *s, size_t n, const char *word);

/* Parse n decimal (or 0x-prefixed hex) characters into *out; 0 on success,
 * -1 on an empty string, a bad digit or overflow of 32 bits. */
int parse_u32(const char *s, size_t n, uint32_t *out);

/* 64-bit unsigned division, which gcc -m32 lowers to calls to these. */
uint64_t __udivmoddi4(uint64_t n, uint64_t d, uint64_t *rem);
uint64_t __udivdi3(uint64_t n, uint64_t d);
uint64_t __umoddi3(uint64_t n, uint64_t d);

/* n / d rounded to nearest (halves up); d != 0. */
uint64_t div_round(uint64_t n, uint64_t d);

#endif
