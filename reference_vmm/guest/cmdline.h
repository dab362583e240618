/* The guest's command line: bench=NAME iterations=K warmup=W vcpus=N, and
 * for the blk benches qd= seed= write_sector= write_blocks= read_sector=
 * read_blocks= timeout_ms=, and for blk_mixed readers= hammer=. */
#ifndef VMTRACE_GUEST_CMDLINE_H
#define VMTRACE_GUEST_CMDLINE_H

#include <stdint.h>

#include "bench.h"

#define CMDLINE_MAX 512
#define MAX_BENCHES 8

#define DEFAULT_ITERATIONS 20000
#define DEFAULT_WARMUP 1000

#define DEFAULT_QD 1
#define DEFAULT_SEED 1
#define DEFAULT_WRITE_SECTOR 0
#define DEFAULT_READ_SECTOR 2048
#define DEFAULT_VERIFY_BLOCKS 8
#define DEFAULT_TIMEOUT_MS 300

struct options {
    const struct bench *benches[MAX_BENCHES];  /* in run order */
    int nbench;
    uint32_t iterations;       /* per vCPU, >= 1 */
    uint32_t warmup;
    uint32_t vcpus;            /* cap on vCPUs, 0 = every enabled CPU in the MADT */
    struct blk_params blk;
    char args[CMDLINE_MAX];    /* the command line without the image name */
};

/* Parse raw (the multiboot command line, possibly starting with the image
 * path).  Unknown keys print a warning record and are skipped.  Returns 0,
 * or -1 with *err set for a value that makes the run meaningless. */
int cmdline_parse(const char *raw, struct options *o, const char **err);

#endif
