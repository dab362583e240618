#!/usr/bin/env bash
# Build a free-threaded CPython 3.13 (`--disable-gil`) for the reference VMM,
# once, into a cache outside the repository:
#   $PREFIX/bin/python3.13t    PREFIX=${XDG_CACHE_HOME:-$HOME/.cache}/vmtrace/cpython-3.13-ft
#
# The sources are Debian trixie's `python3.13` source package, fetched with
# `apt-get source` through a sources list of this script's own that holds a
# single deb-src line, with package lists and cache of its own: the host's apt
# configuration is never changed, and no trixie binary package can be
# installed through it (apt has no `deb` line for trixie, here or anywhere).
# Only the package's upstream tarball is built; Debian's patches adapt Python
# to Debian's own layout (dist-packages, multiarch), which a private prefix
# does not want.  No build-dep is installed: the bookworm -dev packages that
# setup.sh already has (libffi, libssl, zlib, ...) are enough for the modules
# the reference VMM uses (ctypes, threading, mmap, json).
#
# Idempotent: done when the binary runs with the GIL disabled.  A lock keeps
# two concurrent setups from building twice (the second waits, then finds it
# done).  Exit status 0 when the interpreter is there, 1 when it could not be
# built: setup.sh goes on, and vmtrace falls back to its own interpreter.
set -uo pipefail
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/vmtrace
PREFIX=${VMTRACE_PYTHON_FT_PREFIX:-$CACHE/cpython-3.13-ft}
PY=$PREFIX/bin/python3.13t
LOG=$CACHE/cpython-3.13-ft.build.log
say() { printf 'setup: %s\n' "$*"; }

# The check vmtrace relies on: the interpreter starts, has ctypes and threads,
# and runs without the GIL (PYTHON_GIL=1 in the caller's environment would
# re-enable it, so the check runs without it).
usable() {
  [ -x "$PY" ] && env -u PYTHON_GIL "$PY" -s -c '
import sys, sysconfig, ctypes, threading, mmap, json
sys.exit(0 if sysconfig.get_config_var("Py_GIL_DISABLED") and not sys._is_gil_enabled() else 1)
' 2>/dev/null
}

fail() {
  say "WARNING: free-threaded CPython not built: $*"
  say "the reference VMM will run on the interpreter vmtrace runs on, with the GIL; log: $LOG"
  exit 1
}

usable && exit 0
mkdir -p "$CACHE" || fail "cannot create $CACHE"
exec 9>"$CACHE/cpython-3.13-ft.lock" || fail "cannot open the lock file in $CACHE"
if ! flock -n 9; then
  say "another setup is building the free-threaded CPython; waiting for it"
  flock 9
fi
usable && exit 0

# The Debian mirror this host already uses (its bookworm suite), so that no
# address is written here.
mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -r "$f" ] || continue
  mirror=$(awk '/^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ {print u; exit}' "$f")
  [ -n "$mirror" ] && break
done
if [ -z "$mirror" ] && [ -r /etc/apt/sources.list ]; then
  mirror=$(awk '$1=="deb" && $0 ~ / bookworm / {for (i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)
fi
[ -n "$mirror" ] || fail "no bookworm apt source found to take the Debian mirror from"

work=$(mktemp -d "$CACHE/cpython-build.XXXXXX") || fail "cannot create a build directory in $CACHE"
trap 'rm -rf "$work"' EXIT
: >"$LOG"
started=$(date +%s)
# One line, rewritten in place on a terminal; one line per stage otherwise.
progress() {
  local msg
  msg=$(printf 'building free-threaded CPython 3.13 into %s: %s (%ss)' "$PREFIX" "$1" $(( $(date +%s) - started )))
  if [ -t 1 ]; then printf '\rsetup: %s\033[K' "$msg"; else say "$msg"; fi
}
stage() {  # stage NAME CMD...: run CMD with its output in the log, ticking the line on a terminal
  local name=$1; shift
  progress "$name"
  "$@" >>"$LOG" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 5
    [ -t 1 ] && progress "$name"
  done
  wait "$pid"
}
finish_line() { [ -t 1 ] && printf '\n'; return 0; }

mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/src"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$work/sources.list"
APT=(-q -o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$work/lists"
     -o "Dir::Cache=$work/cache" -o APT::Sandbox::User=root)
stage "fetching trixie's python3.13 source package" apt-get "${APT[@]}" update \
  || { finish_line; fail "apt-get update of the trixie deb-src list failed"; }
(cd "$work/src" && stage "fetching trixie's python3.13 source package" apt-get "${APT[@]}" source --download-only python3.13) \
  || { finish_line; fail "apt-get source python3.13 (trixie) failed"; }
orig=$(ls "$work"/src/python3.13_*.orig.tar.* 2>/dev/null | head -n 1)
[ -n "$orig" ] || { finish_line; fail "the source package has no upstream tarball"; }
stage "unpacking $(basename "$orig")" tar -C "$work/src" -xf "$orig" || { finish_line; fail "cannot unpack $orig"; }
srcdir=$(ls -d "$work"/src/Python-3.13* 2>/dev/null | head -n 1)
[ -n "$srcdir" ] || { finish_line; fail "no Python-3.13* directory in $orig"; }
cd "$srcdir" || fail "cannot enter $srcdir"
# No PGO/LTO: they triple the build time for a few percent; no ensurepip:
# the reference VMM needs the standard library only.
stage "configure" ./configure --prefix="$PREFIX" --disable-gil --without-ensurepip --disable-test-modules \
  || { finish_line; fail "configure failed"; }
stage "make -j2" make -j2 || { finish_line; fail "make failed"; }
# Installed into a staging root and moved into place whole, so that a
# half-installed interpreter is never found at $PY.
stage "make install" make install DESTDIR="$work/dest" || { finish_line; fail "make install failed"; }
rm -rf "$PREFIX"
mkdir -p "$(dirname "$PREFIX")"
mv "$work/dest$PREFIX" "$PREFIX" || { finish_line; fail "cannot move the build into $PREFIX"; }
finish_line
usable || fail "the built interpreter does not run without the GIL"
say "free-threaded CPython ready: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'), $(( $(date +%s) - started ))s)"
