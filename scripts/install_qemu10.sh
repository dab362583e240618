#!/usr/bin/env bash
# Install QEMU 10.0 from Debian 12's backports beside Debian's own 7.2, in a
# private prefix, without adding backports to the host's apt sources:
# apt-get runs with a sources list, package lists and a cache of its own, and
# only *downloads* qemu-system-x86, qemu-system-common, qemu-system-data and
# seabios; dpkg -x unpacks them.  Their shared libraries all come from
# bookworm, so the binary runs against the host's libraries.
#
# Result: $PREFIX/bin/qemu-system-x86_64 and its firmware in $PREFIX/share,
# which must be passed as `-L $PREFIX/share` (without it 10.0 loads 7.2's
# firmware from /usr/share/qemu).  vmtrace resolves `--qemu 10.0` to both.
# Idempotent: a second run checks the binary's version and does nothing.
set -euo pipefail
VERSION=1:10.0.2+ds-2+deb13u1~bpo12+1
PREFIX=${VMTRACE_QEMU10_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/vmtrace/qemu-10.0}
say() { printf 'setup: %s\n' "$*"; }

if [ -x "$PREFIX/bin/qemu-system-x86_64" ] && "$PREFIX/bin/qemu-system-x86_64" --version 2>/dev/null | grep -q "version 10\.0\."; then
  exit 0
fi

# The Debian mirror this host already uses (its bookworm suite), so no
# address is written here.
mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -r "$f" ] || continue
  mirror=$(awk '/^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ {print u; exit}' "$f")
  [ -n "$mirror" ] && break
done
if [ -z "$mirror" ] && [ -r /etc/apt/sources.list ]; then
  mirror=$(awk '$1=="deb" && $0 ~ / bookworm main/ {for (i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)
fi
if [ -z "$mirror" ]; then
  say "WARNING: no bookworm apt source found; QEMU 10.0 not installed (tests and benches use Debian's 7.2 only)"
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm-backports main" > "$work/sources.list"
APT=(-q -o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$work/lists"
     -o "Dir::Cache=$work/cache" -o APT::Sandbox::User=root)
say "downloading QEMU $VERSION from bookworm-backports into $PREFIX (the host's apt sources are not changed)"
apt-get "${APT[@]}" update >/dev/null
(cd "$work/debs" && apt-get "${APT[@]}" download \
  "qemu-system-x86=$VERSION" "qemu-system-common=$VERSION" "qemu-system-data=$VERSION" seabios/bookworm-backports >/dev/null)
rm -rf "$PREFIX.new"
mkdir -p "$PREFIX.new/root" "$PREFIX.new/share" "$PREFIX.new/bin"
for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$PREFIX.new/root"; done
cp -a "$PREFIX.new/root/usr/share/qemu/." "$PREFIX.new/share/"
cp -a "$PREFIX.new/root/usr/share/seabios/." "$PREFIX.new/share/"
# A symlink, not a wrapper script: collectors read symbols from the real ELF
# through realpath, and vmtrace adds `-L $PREFIX/share` (firmware_dir in
# vmtrace.bench) so that 10.0 does not load 7.2's firmware from /usr/share.
ln -s ../root/usr/bin/qemu-system-x86_64 "$PREFIX.new/bin/qemu-system-x86_64"
rm -rf "$PREFIX"
mv "$PREFIX.new" "$PREFIX"
"$PREFIX/bin/qemu-system-x86_64" -L "$PREFIX/share" --version | head -n 1 | sed 's/^/setup: /'
