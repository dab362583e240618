#!/usr/bin/env bash
# Run vmtrace's tests on a Debian 12 machine as root: sets up what is missing
# (scripts/setup.sh, idempotent), then runs pytest.  Live tests (KVM, BPF,
# tracefs, QEMU) run here; under CI=true a live test that cannot run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "test: pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"
