#!/usr/bin/env bash
# Install everything vmtrace needs on Debian 12, as root.  Idempotent: a
# second run checks each step and does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "setup: must run as root (apt-get, tracefs, BPF); try: sudo $0" >&2
  exit 2
fi

# 1. Debian packages, only when one is missing.
PKGS="qemu-system-x86 bpfcc-tools python3-bpfcc python3-venv linux-headers-amd64 gcc make nasm binutils chromium tmux"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  say "installing Debian packages:$missing"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
fi

# 2. Kernel headers for bcc.  Only when this kernel has none: then link the
#    newest Debian linux-headers-* (bcc compiles tracepoint and uprobe
#    programs correctly against them).
REL=$(uname -r)
if [ ! -e "/lib/modules/$REL/build" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$hdr" ]; then
    common="${hdr%-amd64}-common"
    mkdir -p "/lib/modules/$REL"
    ln -sfn "$hdr" "/lib/modules/$REL/build"
    [ -d "$common" ] && ln -sfn "$common" "/lib/modules/$REL/source"
    say "no kernel headers for $REL: linked $hdr as /lib/modules/$REL/build (bcc needs headers)"
  else
    say "WARNING: no kernel headers found; bcc will fail (vmtrace record --backend ftrace still works)"
  fi
fi

# 3. tracefs.
if [ ! -d /sys/kernel/tracing/events ]; then
  mount -t tracefs nodev /sys/kernel/tracing && say "mounted tracefs at /sys/kernel/tracing"
fi

# 4. The virtualenv: Debian's python3 with system site packages, so bcc
#    (python3-bpfcc) is importable beside pandas & co. from PyPI.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  say "creating .venv from /usr/bin/python3 (--system-site-packages)"
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.vmtrace-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing vmtrace and its Python dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[test]"
  touch "$stamp"
fi

# 5. The benchmark guest, built from source.
make -s -C reference_vmm/guest

# 6. A free-threaded CPython 3.13 for the reference VMM (vmtrace itself stays
#    on Debian's Python, beside bcc).  Built once into a cache outside the
#    repository; when it cannot be built, the script says why and the VMM
#    runs on the GIL interpreter, so setup goes on.
bash scripts/build_python_ft.sh || true
# 7. QEMU 10.0 beside Debian's 7.2, in a private prefix (`--qemu 10.0`; the
#    live tests run on both).  When it cannot be fetched, QEMU 7.2 alone is used.
bash "$REPO/scripts/install_qemu10.sh" || say "WARNING: QEMU 10.0 not installed; benches and tests use QEMU 7.2 only"

say "ready: $REPO/.venv/bin/vmtrace"
