#!/usr/bin/env bash
# The main job, in one command (Debian 12, root): set up what is missing, then
# reproduce the KVM Forum 2013 PM-timer figure: cycles per PM-timer read at
# 1/2/4/8 vCPUs with and without the BQL, each run untraced (the guest's own
# number) and recorded, broken down by component.  Writes out/sweep-$VMM/
# (traces, summary.csv/json, report.html) and prints the BQL breakdown of the
# largest BQL run.
#   bash scripts/demo.sh            # reference VMM: --locking bql vs unlocked
#   bash scripts/demo.sh qemu       # QEMU 7.2 from Debian (its locking is fixed)
#   VCPUS=1,2 bash scripts/demo.sh  # fewer vCPU counts
#   REPEAT=1 bash scripts/demo.sh   # one run per configuration instead of the
#                                   # median of 3 (faster, noisier: with more
#                                   # vCPUs than host CPUs a run can be off 2x)
#   PYTHONS=ft,gil bash scripts/demo.sh  # the reference VMM runs on the
#                                   # free-threaded CPython setup builds (ft);
#                                   # gil adds its curves under the GIL beside
set -euo pipefail
cd "$(dirname "$0")/.."
VMM=${1:-reference}
VCPUS=${VCPUS:-1,2,4,8}
REPEAT=${REPEAT:-3}
PYTHONS=${PYTHONS:-ft}
bash scripts/setup.sh
V=.venv/bin/vmtrace
out=out/sweep-$VMM
case "$VMM" in
  reference) $V sweep -o "$out" --vmm reference --locking bql,unlocked --vcpus "$VCPUS" --repeat "$REPEAT" \
               --python "$PYTHONS"
             # Without a free-threaded build the runs are the GIL's (-gil).
             last=$out/reference-bql-${VCPUS##*,}vcpu.vmtrace
             [ -e "$last" ] || last=$out/reference-bql-gil-${VCPUS##*,}vcpu.vmtrace ;;
  qemu)      $V sweep -o "$out" --vmm qemu --vcpus "$VCPUS" --repeat "$REPEAT"
             last=$out/qemu-${VCPUS##*,}vcpu.vmtrace ;;
  *) echo "demo: unknown VMM '$VMM': use reference or qemu" >&2; exit 2 ;;
esac
$V report "$last" --bql-breakdown
echo "figure: $out/report.html (self-contained, opens offline); traces and summary in $out/"
