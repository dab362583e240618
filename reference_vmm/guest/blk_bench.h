/* The virtio-blk benchmarks: blk_randread, blk_randwrite, blk_verify,
 * blk_malformed and blk_mixed (rows of bench_table in bench.c). */
#ifndef VMTRACE_GUEST_BLK_BENCH_H
#define VMTRACE_GUEST_BLK_BENCH_H

#include <stdint.h>

#include "bench.h"

/* blk_verify's pattern: 32-bit little-endian word i (0..127) of 512-byte
 * sector s holds PATTERN(seed, s, i).  Sector numbers are taken modulo 2^32. */
#define BLK_PATTERN_SECTOR_MUL 0x9e3779b1u
#define BLK_PATTERN_WORD_MUL   0x85ebca77u
#define BLK_PATTERN(seed, s, i) \
    ((seed) ^ ((uint32_t)(s) * BLK_PATTERN_SECTOR_MUL) ^ ((uint32_t)(i) * BLK_PATTERN_WORD_MUL))

/* 32-bit FNV-1a over 32-bit words (not bytes): h = (h ^ w) * prime. */
#define BLK_FNV_OFFSET 0x811c9dc5u
#define BLK_FNV_PRIME  0x01000193u

/* Largest blk_verify region, in 4 KiB blocks. */
#define BLK_VERIFY_MAX_BLOCKS 1024

/* A request that takes this long stalls the bench (status 2). */
#define BLK_STALL_MS 10000

int blk_setup_randread(const struct bench_env *env, const char **err);
int blk_setup_randwrite(const struct bench_env *env, const char **err);
int blk_setup_verify(const struct bench_env *env, const char **err);
int blk_setup_malformed(const struct bench_env *env, const char **err);

uint64_t run_blk_rand(int vcpu, uint32_t warmup, uint32_t iterations);
uint64_t run_blk_verify(int vcpu, uint32_t warmup, uint32_t iterations);
uint64_t run_blk_malformed(int vcpu, uint32_t warmup, uint32_t iterations);

int report_blk(void);
int report_malformed(void);

/* For blk_mixed (blk_mixed.c): the random-read setup under another bench
 * name, and report_blk's records for vCPUs 0 .. nreaders-1 only, with more()
 * (if not NULL) printing the bench's own records right after the summary. */
int blk_setup_reads(const struct bench_env *env, const char *name, const char **err);
int report_blk_readers(int nreaders, void (*more)(void));

int blk_setup_mixed(const struct bench_env *env, const char **err);
uint64_t run_blk_mixed(int vcpu, uint32_t warmup, uint32_t iterations);
int report_blk_mixed(void);

#endif
