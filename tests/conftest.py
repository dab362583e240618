"""Shared test fixtures, and the one signal for the test tiers.

A test that needs root, /dev/kvm, tracefs, BPF, QEMU or a browser asks for it
through one of the fixtures below (directly or through another fixture), and
that alone marks it ``live``: ``pytest -m "not live"`` runs the rest as any
user, ``pytest -m live`` only these.  On a host without what a live test
needs it skips *and says why*; under CI (CI=true) a skip of that kind is a
failure, because CI machines have all of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The CLI sizes its tables by COLUMNS when set, else 160 when piped: without
# this, text assertions would depend on the caller's terminal (pytest-xdist's
# workers set 80).  Tests that care about width pass COLUMNS themselves.
os.environ.pop("COLUMNS", None)

# Requesting any of these fixtures, however indirectly, makes a test live.
# fresh_venv needs no privilege, but installs from the package index and
# takes minutes: it belongs with the tests CI runs, not the quick tier.
LIVE_FIXTURES = frozenset({"kvm", "root", "qemu", "bpf", "chromium", "fresh_venv"})


def need(condition: bool, why: str) -> None:
    """Skip the calling test unless ``condition``; under CI, fail instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI host is missing a requirement: {why}", pytrace=False)
    pytest.skip(why)


def have_root() -> bool:
    return os.geteuid() == 0


def have_kvm() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def have_qemu() -> bool:
    return shutil.which("qemu-system-x86_64") is not None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # tryfirst: the marks must be on before `-m` deselects by them.
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & LIVE_FIXTURES:
            item.add_marker(pytest.mark.live)
        if "qemu" in used:
            item.add_marker(pytest.mark.qemu)


# Session scope, so that module fixtures that record once for many tests can
# ask for them too.  A skip here is remembered for the session.
@pytest.fixture(scope="session")
def kvm() -> None:
    need(have_kvm(), "needs read/write access to /dev/kvm")


@pytest.fixture(scope="session")
def root() -> None:
    need(have_root(), "needs root (tracefs, BPF and uprobes)")


@pytest.fixture(scope="session")
def qemu(kvm: None) -> None:
    need(have_qemu(), "needs qemu-system-x86_64 (Debian package qemu-system-x86)")


@pytest.fixture(scope="session")
def bpf(root: None) -> None:
    """bcc and the kernel headers it compiles against."""
    from vmtrace.collectors.bcc_backend import bcc_available

    ok, why = bcc_available()
    need(ok, why)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a headless-capable Chromium binary."""
    from tests.browser import chromium_binary

    binary = chromium_binary()
    need(binary is not None, "needs Chromium (Debian package chromium)")
    assert binary is not None
    return binary


@pytest.fixture(scope="session")
def guest_image() -> Path:
    """The benchmark guest, built by vmtrace's own lookup when missing (in the
    checkout, ``reference_vmm/guest/build``).  Not live by itself: building it
    takes gcc and nasm, not privileges."""
    from vmtrace.bench import guest_image as find_or_build
    from vmtrace.errors import VmtraceError

    try:
        return find_or_build()
    except VmtraceError as e:
        need(False, f"needs the benchmark guest: {e}")
        raise


@pytest.fixture
def fresh_venv(tmp_path: Path) -> Path:
    """The python of a new virtualenv made as scripts/setup.sh makes .venv:
    Debian's python3, --system-site-packages (bcc stays importable)."""
    venv = tmp_path / "venv"
    proc = subprocess.run(
        ["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    need(proc.returncode == 0, f"needs /usr/bin/python3 with venv (Debian package python3-venv): {proc.stderr.strip()}")
    return venv / "bin" / "python"


def _known_qemus() -> tuple[str, ...]:
    from vmtrace.qemu_versions import KNOWN_VERSIONS

    return KNOWN_VERSIONS


@pytest.fixture(scope="session", params=_known_qemus())
def qemu_version(request: pytest.FixtureRequest) -> str:
    """Each QEMU version vmtrace knows (7.2: Debian's; 10.0: the private
    prefix scripts/setup.sh installs): a live QEMU test that takes this runs
    once per version.  A missing one skips here and fails under CI."""
    from vmtrace.qemu_versions import available_qemus

    v = str(request.param)
    need(have_kvm(), "needs read/write access to /dev/kvm")
    need(v in available_qemus(), f"needs QEMU {v} (scripts/setup.sh installs 10.0 beside Debian's 7.2)")
    return v
