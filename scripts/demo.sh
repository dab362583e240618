#!/usr/bin/env bash
# The main job, in one command (Debian 12, root): set up what is missing, run
# the PM-timer benchmark guest on a VMM while recording it, and print the BQL
# breakdown.  VMM: reference (default, the bundled Python VMM) or qemu.
#   bash scripts/demo.sh            # reference VMM, 2 vCPUs, BQL locking
#   bash scripts/demo.sh qemu       # QEMU 7.2 from Debian
set -euo pipefail
cd "$(dirname "$0")/.."
VMM=${1:-reference}
VCPUS=${VCPUS:-2}
bash scripts/setup.sh
mkdir -p out
V=.venv/bin/vmtrace
trace=out/demo-$VMM-${VCPUS}vcpu.vmtrace
if [ "$VMM" = reference ]; then
  $V bench --vmm reference --bench inl_pmtimer --vcpus "$VCPUS" --locking bql --iterations 5000 --record "$trace"
else
  $V bench --vmm qemu --bench inl_pmtimer --vcpus "$VCPUS" --iterations 20000 --record "$trace"
fi
$V report "$trace" --bql-breakdown
echo "trace: $trace  (open it with pandas: vmtrace.trace.read_trace, or any Parquet reader)"
