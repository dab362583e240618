/* The contended-BQL bench (contend_bench.c). */
#ifndef VMTRACE_GUEST_CONTEND_BENCH_H
#define VMTRACE_GUEST_CONTEND_BENCH_H

#include <stdint.h>

#include "bench.h"

int contend_setup(const struct bench_env *env, const char **err);
uint64_t run_serial_pmtimer(int vcpu, uint32_t warmup, uint32_t n);
int fwcfg_setup(const struct bench_env *env, const char **err);
uint64_t run_fwcfg_pmtimer(int vcpu, uint32_t warmup, uint32_t n);

#endif
