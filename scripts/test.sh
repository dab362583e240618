#!/usr/bin/env bash
# Run vmtrace's tests on a Debian 12 machine as root: sets up what is missing
# (scripts/setup.sh, idempotent), then runs pytest.  Live tests (KVM, BPF,
# tracefs, QEMU, a browser, the wheel install) run here; under CI=true a live
# test that cannot run fails.  Arguments go to pytest:
#   bash scripts/test.sh -m "not live"   # the quick tier: no root needed (add -n 2 for both cores)
#   bash scripts/test.sh -m live         # only what needs the host
# First `ruff check`, `ruff format --check` and `mypy` (the same checks as the
# pre-commit hooks); the first that fails stops the run.  VMTRACE_LINT=0 skips
# them, e.g. for a quick pytest run while editing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${VMTRACE_LINT:-1}" = 1 ]; then
  echo "test: ruff check" >&2
  .venv/bin/ruff check .
  echo "test: ruff format --check" >&2
  .venv/bin/ruff format --check .
  echo "test: mypy" >&2
  .venv/bin/mypy
fi
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "test: pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"
