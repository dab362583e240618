#!/usr/bin/env bash
# Regenerate the sample traces (root, KVM, QEMU): QEMU 7.2 running the
# benchmark guest's inl_pmtimer loop at 1 and 2 vCPUs, default and --precise.
set -euo pipefail
cd "$(dirname "$0")"
V=../.venv/bin/vmtrace
for n in 1 2; do
  $V bench --vmm qemu --bench inl_pmtimer --vcpus $n --iterations 20000 --record qemu-pmtimer-${n}vcpu.vmtrace --json > /dev/null
  $V bench --vmm qemu --bench inl_pmtimer --vcpus $n --iterations 5000 --precise --record qemu-pmtimer-${n}vcpu-precise.vmtrace --json > /dev/null
done
ls -l *.vmtrace
