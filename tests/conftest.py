"""Shared test fixtures.

Live tests need root, /dev/kvm, tracefs, BPF or QEMU.  On a host without them
they skip *and say why*; under CI (CI=true) a skip of that kind is a failure,
because CI machines have all of them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


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


@pytest.fixture
def kvm() -> None:
    need(have_kvm(), "needs read/write access to /dev/kvm")


@pytest.fixture
def root() -> None:
    need(have_root(), "needs root (tracefs, BPF and uprobes)")


@pytest.fixture
def qemu() -> None:
    need(have_kvm(), "needs read/write access to /dev/kvm")
    need(have_qemu(), "needs qemu-system-x86_64 (Debian package qemu-system-x86)")
