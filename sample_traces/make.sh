#!/usr/bin/env bash
# Regenerate the sample traces (root, KVM, QEMU): QEMU 7.2 running the
# benchmark guest's inl_pmtimer loop at 1 and 2 vCPUs, default and --precise;
# QEMU 10.0 (scripts/install_qemu10.sh) at 2 vCPUs, and its contended
# fwcfg_pmtimer bench with --callsites full.
set -euo pipefail
cd "$(dirname "$0")"
V=../.venv/bin/vmtrace
for n in 1 2; do
  $V bench --vmm qemu --bench inl_pmtimer --vcpus $n --iterations 20000 --record qemu-pmtimer-${n}vcpu.vmtrace --json > /dev/null
  $V bench --vmm qemu --bench inl_pmtimer --vcpus $n --iterations 5000 --precise --record qemu-pmtimer-${n}vcpu-precise.vmtrace --json > /dev/null
done
$V bench --vmm qemu --qemu 10.0 --bench inl_pmtimer --vcpus 2 --iterations 5000 --record qemu10-pmtimer-2vcpu.vmtrace --json > /dev/null
$V bench --vmm qemu --qemu 10.0 --bench fwcfg_pmtimer --vcpus 2 --iterations 1600 --callsites full \
  --record qemu10-fwcfg-2vcpu-callsites.vmtrace --json > /dev/null
ls -l *.vmtrace
