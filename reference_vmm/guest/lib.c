/* The few libc pieces the guest needs: memory, strings, numbers, and the
 * 64-bit division helpers gcc calls on i386 (this host has no 32-bit libgcc). */
#include "lib.h"

void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;

    while (n--)
        *d++ = *s++;
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
            return *x < *y ? -1 : 1;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;

    while (s[n])
        n++;
    return n;
}

int str_eq_n(const char *s, size_t n, const char *word)
{
    return strlen(word) == n && memcmp(s, word, n) == 0;
}

int parse_u32(const char *s, size_t n, uint32_t *out)
{
    uint32_t base = 10;
    uint64_t v = 0;

    if (n > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
        n -= 2;
    }
    if (n == 0)
        return -1;
    for (; n; n--, s++) {
        uint32_t digit;

        if (*s >= '0' && *s <= '9')
            digit = (uint32_t)(*s - '0');
        else if (base == 16 && *s >= 'a' && *s <= 'f')
            digit = (uint32_t)(*s - 'a' + 10);
        else if (base == 16 && *s >= 'A' && *s <= 'F')
            digit = (uint32_t)(*s - 'A' + 10);
        else
            return -1;
        if (digit >= base)
            return -1;
        v = v * base + digit;
        if (v > 0xffffffffu)
            return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

/* Shift-and-subtract long division; quotient in the return value, remainder
 * in *rem.  Slow (64 steps) and only used outside the timed loops. */
static uint64_t udivmod64(uint64_t n, uint64_t d, uint64_t *rem)
{
    uint64_t q = 0, r = 0;
    int i;

    if (d == 0) {           /* no trap handler: make it visible, not fatal */
        *rem = 0;
        return ~0ull;
    }
    if ((d >> 32) == 0 && (n >> 32) == 0) {
        uint32_t n32 = (uint32_t)n, d32 = (uint32_t)d;

        *rem = n32 % d32;
        return n32 / d32;
    }
    for (i = 63; i >= 0; i--) {
        uint64_t carry = r >> 63;   /* only when d > 2^63 */

        r = (r << 1) | ((n >> i) & 1);
        if (carry || r >= d) {
            r -= d;
            q |= 1ull << i;
        }
    }
    *rem = r;
    return q;
}

uint64_t __udivmoddi4(uint64_t n, uint64_t d, uint64_t *rem)
{
    uint64_t r;
    uint64_t q = udivmod64(n, d, &r);

    if (rem)
        *rem = r;
    return q;
}

uint64_t __udivdi3(uint64_t n, uint64_t d)
{
    uint64_t r;

    return udivmod64(n, d, &r);
}

uint64_t __umoddi3(uint64_t n, uint64_t d)
{
    uint64_t r;

    udivmod64(n, d, &r);
    return r;
}

uint64_t div_round(uint64_t n, uint64_t d)
{
    return (n + d / 2) / d;
}
