/* Command-line parsing.  Tokens are separated by spaces; each is KEY=VALUE.
 * Multiboot loaders (GRUB, QEMU -kernel) pass the image path as the first
 * token: a first token without '=' is taken to be that and skipped. */
#include <stddef.h>
#include <stdint.h>

#include "cmdline.h"
#include "console.h"
#include "lib.h"

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int has_char(const char *s, size_t n, char c)
{
    for (; n; n--, s++)
        if (*s == c)
            return 1;
    return 0;
}

static void warn_token(const char *what, const char *tok, size_t n)
{
    kprintf("VMTRACE-BENCH warning msg=\"%s '", what);
    console_write_quoted(tok, n);
    kprintf("' ignored\"\n");
}

static int parse_bench(struct options *o, const char *v, size_t n, const char **err)
{
    const struct bench *b;

    o->nbench = 0;
    if (str_eq_n(v, n, "all")) {
        for (b = bench_table; b->name && o->nbench < MAX_BENCHES; b++)
            if (b->in_all)
                o->benches[o->nbench++] = b;
        return 0;
    }
    b = bench_find(v, (uint32_t)n);
    if (!b) {
        *err = "unknown bench (expected inl_pmtimer, inl_vmm, inl_kernel, cpuid, all, "
               "blk_randread, blk_randwrite, blk_verify, blk_malformed or blk_mixed)";
        return -1;
    }
    o->benches[o->nbench++] = b;
    return 0;
}

static int parse_number(const char *v, size_t n, uint32_t min, uint32_t *out,
                        const char *bad, const char **err)
{
    if (parse_u32(v, n, out) != 0 || *out < min) {
        *err = bad;
        return -1;
    }
    return 0;
}

int cmdline_parse(const char *raw, struct options *o, const char **err)
{
    const char *p = raw, *start, *end;
    size_t len;

    memset(o, 0, sizeof(*o));
    o->iterations = DEFAULT_ITERATIONS;
    o->warmup = DEFAULT_WARMUP;
    o->benches[0] = bench_find("inl_pmtimer", 11);
    o->nbench = 1;
    o->blk.qd = DEFAULT_QD;
    o->blk.seed = DEFAULT_SEED;
    o->blk.write_sector = DEFAULT_WRITE_SECTOR;
    o->blk.write_blocks = DEFAULT_VERIFY_BLOCKS;
    o->blk.read_sector = DEFAULT_READ_SECTOR;
    o->blk.read_blocks = DEFAULT_VERIFY_BLOCKS;
    o->blk.timeout_ms = DEFAULT_TIMEOUT_MS;

    /* Skip the image name, then keep the rest (trimmed) for the begin record. */
    while (is_space(*p))
        p++;
    for (start = p; *p && !is_space(*p); p++)
        ;
    if (p == start || has_char(start, (size_t)(p - start), '='))
        p = start;
    while (is_space(*p))
        p++;
    len = strlen(p);
    while (len && is_space(p[len - 1]))
        len--;
    if (len >= sizeof(o->args))
        len = sizeof(o->args) - 1;
    memcpy(o->args, p, len);
    o->args[len] = '\0';

    for (p = o->args; *p;) {
        const char *key, *eq, *val;
        size_t klen, vlen;

        while (is_space(*p))
            p++;
        if (!*p)
            break;
        for (key = p; *p && !is_space(*p); p++)
            ;
        end = p;
        for (eq = key; eq < end && *eq != '='; eq++)
            ;
        if (eq == end) {
            warn_token("token without '=':", key, (size_t)(end - key));
            continue;
        }
        klen = (size_t)(eq - key);
        val = eq + 1;
        vlen = (size_t)(end - val);

        if (str_eq_n(key, klen, "bench")) {
            if (parse_bench(o, val, vlen, err))
                return -1;
        } else if (str_eq_n(key, klen, "iterations")) {
            if (parse_number(val, vlen, 1, &o->iterations,
                             "iterations must be an integer >= 1", err))
                return -1;
        } else if (str_eq_n(key, klen, "warmup")) {
            if (parse_number(val, vlen, 0, &o->warmup,
                             "warmup must be an integer >= 0", err))
                return -1;
        } else if (str_eq_n(key, klen, "vcpus")) {
            if (parse_number(val, vlen, 1, &o->vcpus,
                             "vcpus must be an integer >= 1", err))
                return -1;
        } else if (str_eq_n(key, klen, "qd")) {
            if (parse_number(val, vlen, 1, &o->blk.qd, "qd must be an integer >= 1", err))
                return -1;
        } else if (str_eq_n(key, klen, "seed")) {
            if (parse_number(val, vlen, 0, &o->blk.seed, "seed must be a 32-bit integer", err))
                return -1;
        } else if (str_eq_n(key, klen, "write_sector")) {
            if (parse_number(val, vlen, 0, &o->blk.write_sector,
                             "write_sector must be an integer >= 0", err))
                return -1;
        } else if (str_eq_n(key, klen, "write_blocks")) {
            if (parse_number(val, vlen, 0, &o->blk.write_blocks,
                             "write_blocks must be an integer >= 0", err))
                return -1;
        } else if (str_eq_n(key, klen, "read_sector")) {
            if (parse_number(val, vlen, 0, &o->blk.read_sector,
                             "read_sector must be an integer >= 0", err))
                return -1;
        } else if (str_eq_n(key, klen, "read_blocks")) {
            if (parse_number(val, vlen, 0, &o->blk.read_blocks,
                             "read_blocks must be an integer >= 0", err))
                return -1;
        } else if (str_eq_n(key, klen, "timeout_ms")) {
            if (parse_number(val, vlen, 1, &o->blk.timeout_ms,
                             "timeout_ms must be an integer >= 1", err))
                return -1;
        } else if (str_eq_n(key, klen, "readers")) {
            if (parse_number(val, vlen, 1, &o->blk.readers, "readers must be an integer >= 1", err))
                return -1;
        } else if (str_eq_n(key, klen, "hammer")) {
            if (str_eq_n(val, vlen, "pmtimer")) {
                o->blk.hammer = HAMMER_PMTIMER;
            } else if (str_eq_n(val, vlen, "serial")) {
                o->blk.hammer = HAMMER_SERIAL;
            } else {
                *err = "hammer must be pmtimer or serial";
                return -1;
            }
        } else {
            warn_token("unknown key", key, klen);
        }
    }
    return 0;
}
