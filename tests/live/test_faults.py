"""Faults, live: vmtrace killed or stopped at the worst moments, on real KVM,
QEMU, eBPF and tracefs.

After a SIGKILL at any point (attach, BQL identification, mid-run, the
write) the VMM must be gone, and the next ``record`` must bring the host back
to its baseline: tracefs instances, ``uprobe_events``, BPF programs and
spool directories.  SIGTERM to ``bench``, ``sweep`` and ``vmm run`` must
leave no VMM.  Every QEMU here is a private copy of the binary, so that a
uprobe the kernel keeps (the bug these tests guard against) can never reach
the host's own QEMU.

Host-state checks compare the whole state in CI (nothing else runs there).
On a shared development host other recorders come and go, so outside CI a
difference counts only when it is ours (see ``Snapshot.diff``).
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vmtrace.bench import guest_image, vmm_command

from ..conftest import IN_CI, need

VMTRACE = [sys.executable, "-m", "vmtrace.cli"]
TRACEFS = Path("/sys/kernel/tracing")
TMP = Path(tempfile.gettempdir())
QEMU_COMM = "qemu-system-x86"


# --------------------------------------------------------------- host state
def _bpf_prog_ids() -> set[int]:
    """Every loaded BPF program, by id (BPF_PROG_GET_NEXT_ID, as bpftool)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    attr = (ctypes.c_uint32 * 4)()
    ids: set[int] = set()
    start = 0
    while True:
        attr[0], attr[1] = start, 0
        if libc.syscall(321, 11, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:  # bpf(BPF_PROG_GET_NEXT_ID)
            return ids
        start = attr[1]
        ids.add(start)


def _prog_holders() -> dict[int, set[int]]:
    """BPF program id -> pids holding a file descriptor of it."""
    out: dict[int, set[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for info in (proc / "fdinfo").iterdir():
                text = info.read_text()
                if "prog_id:" in text:
                    pid = int(text.split("prog_id:")[1].split()[0])
                    out.setdefault(pid, set()).add(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _owner(name: str) -> int | None:
    """The owner pid in a vmtrace name (vmtrace-PID-N, vmtrace_PID_N,
    vmtrace-spool-PID-X, vmtrace-doctor-PID), or None."""
    for part in name.replace("_", "-").split("-"):
        if part.isdigit():
            return int(part)
    return None


@dataclass
class Snapshot:
    instances: set[str]
    uprobes: set[str]
    progs: set[int]
    spools: set[str]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(
            set(os.listdir(TRACEFS / "instances")),
            set((TRACEFS / "uprobe_events").read_text().splitlines()),
            _bpf_prog_ids(),
            {p.name for p in TMP.glob("vmtrace-spool-*")},
        )

    def diff(self, later: Snapshot, ours: set[int]) -> dict[str, list[str]]:
        """What ``later`` has that this snapshot lacks.  In CI all of it;
        elsewhere only what is ours: named after one of ``ours`` (pids of the
        vmtrace processes the test ran) or after no live process at all, and
        BPF programs that no live process outside ``ours`` holds."""
        new = {
            "instances": sorted(later.instances - self.instances),
            "uprobes": sorted(later.uprobes - self.uprobes),
            "spools": sorted(later.spools - self.spools),
        }
        progs = sorted(later.progs - self.progs)
        if not IN_CI:

            def mine(name: str) -> bool:
                pid = _owner(name.split()[0].split("/")[0].split(":")[-1])
                return pid is None or pid in ours or not Path(f"/proc/{pid}").exists()

            new = {k: [n for n in v if mine(n)] for k, v in new.items()}
            holders = _prog_holders()
            progs = [p for p in progs if not (holders.get(p, set()) - ours)]
        new["bpf_progs"] = [str(p) for p in progs]
        return {k: v for k, v in new.items() if v}


def settle(base: Snapshot, ours: set[int], timeout: float = 10.0) -> dict[str, list[str]]:
    """The difference from ``base`` once it stops shrinking (the kernel frees
    a dead process's BPF programs a moment after it dies)."""
    deadline = time.monotonic() + timeout
    while True:
        d = base.diff(Snapshot.take(), ours)
        if not d or time.monotonic() > deadline:
            return d
        time.sleep(0.2)


# ----------------------------------------------------------------- processes
def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> set[int]:
    out: set[int] = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        pid = int(d.name)
        try:
            p = pid
            while p > 1:
                p = _ppid(p)
                if p == root:
                    out.add(pid)
                    break
        except (OSError, ValueError, IndexError):
            continue
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def running_exe(path: Path) -> list[int]:
    """Live processes whose executable is ``path``."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.readlink(d / "exe") == str(path) and alive(int(d.name)):
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def wait_for(cond: Callable[[], object], timeout: float, step: float = 0.005) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(step)
    return None


def gone(pids: set[int] | list[int], timeout: float = 10.0) -> list[int]:
    """Those of ``pids`` still alive after ``timeout``."""
    wait_for(lambda: not any(alive(p) for p in pids), timeout, 0.05)
    return [p for p in pids if alive(p)]


# ------------------------------------------------------------------ fixtures
@pytest.fixture
def host(root: None, qemu: None) -> None:
    need(TRACEFS.joinpath("instances").is_dir(), "needs tracefs mounted at /sys/kernel/tracing")


@pytest.fixture(scope="module")
def qemu_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of QEMU: uprobes are per inode, so whatever the kernel
    might keep on it cannot touch the host's QEMU."""
    real = shutil.which("qemu-system-x86_64")
    if real is None:
        pytest.skip("needs qemu-system-x86_64")
    d = tmp_path_factory.mktemp("qemu-copy")
    (d / "bin").mkdir()
    copy = d / "bin" / "qemu-system-x86_64"
    shutil.copy2(os.path.realpath(real), copy)
    # QEMU looks for its firmware relative to its executable (-L help).
    (d / "share").mkdir()
    (d / "lib").mkdir()
    for sub in ("share/qemu", "share/seabios", "lib/ipxe"):
        if Path("/usr", sub).exists():
            (d / sub).symlink_to(Path("/usr", sub))
    return copy


def env_with(qemu_copy: Path) -> dict[str, str]:
    """The environment that makes a plain `qemu-system-x86_64` the copy."""
    return {**os.environ, "PATH": f"{qemu_copy.parent}:{os.environ['PATH']}"}


def long_qemu(qemu_copy: Path, iterations: int = 50_000_000) -> list[str]:
    return vmm_command("qemu", "inl_pmtimer", 1, iterations, guest_image(), qemu=str(qemu_copy))


def have_bcc() -> None:
    from vmtrace.collectors.bcc_backend import bcc_available

    ok, why = bcc_available()
    need(ok, why)


def start(args: list[str], **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([*VMTRACE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        # An orphaned VMM may hold the pipes open: do not wait for their end.
        proc.wait()
        out, err = "", ""
        raise AssertionError(f"vmtrace did not finish within {timeout}s; stderr: {err[-2000:]}") from None
    return proc.returncode, out, err


def qemu_started(proc: subprocess.Popen[str]) -> list[int]:
    found = []
    for pid in descendants(proc.pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == QEMU_COMM:
                found.append(pid)
        except OSError:
            continue
    return found


# ------------------------------------------------- SIGKILL at four points
POINTS = ("attach", "identify", "midrun", "write")


def _kill_at(point: str, proc: subprocess.Popen[str], out: Path, backend: str) -> set[int]:
    """Wait for ``point`` of ``proc``'s recording, SIGKILL it, and return the
    processes it had started."""
    kids: set[int] = set()
    if point == "attach":
        # The target is forked, held before exec, while the collector attaches.
        def attaching() -> bool:
            kids.update(descendants(proc.pid))
            if backend == "ftrace":
                return any(n.startswith(f"vmtrace-{proc.pid}-") for n in os.listdir(TRACEFS / "instances"))
            return bool(kids)

        assert wait_for(attaching, 60), "vmtrace never started attaching"
    elif point == "identify":
        # QEMU has just been released: the BQL-identification uprobes are in.
        assert wait_for(lambda: qemu_started(proc), 90), "QEMU never started"
    elif point == "midrun":
        assert wait_for(lambda: qemu_started(proc), 90), "QEMU never started"
        time.sleep(3)
    else:
        assert wait_for(lambda: qemu_started(proc), 90), "QEMU never started"
        kids.update(descendants(proc.pid))
        tmp = f".{out.name}.tmp-{proc.pid}"

        def writing() -> bool:
            # The trace's temporary file, or else the moment the VMM is gone
            # (--duration ended it; decoding and the write follow).
            return (out.parent / tmp).exists() or not any(alive(k) for k in kids)

        assert wait_for(writing, 90, 0.002), "recording never reached the write"
    kids.update(descendants(proc.pid))
    proc.kill()
    proc.wait()
    return kids


@pytest.mark.parametrize("backend", ["ftrace", "bcc"])
@pytest.mark.parametrize("point", POINTS)
def test_sigkill_then_next_record_restores_the_host(
    host: None, qemu_copy: Path, tmp_path: Path, backend: str, point: str
) -> None:
    if backend == "bcc":
        have_bcc()
    base = Snapshot.take()
    out = tmp_path / "killed.vmtrace"
    extra = ["--duration", "4"] if point == "write" else []
    proc = start(
        ["record", "--backend", backend, "-o", str(out), *extra, "--", *long_qemu(qemu_copy)], env=env_with(qemu_copy)
    )
    ours = {proc.pid}
    try:
        kids = _kill_at(point, proc, out, backend)
        assert not gone(kids), f"processes vmtrace started outlived it: {gone(kids)}"
        assert not running_exe(qemu_copy), "a QEMU outlived the SIGKILLed recorder"
        left = base.diff(Snapshot.take(), ours)
        assert left, "a SIGKILLed recorder left nothing behind: the test did not kill it in time"
        nxt = subprocess.run(
            [*VMTRACE, "record", "--backend", backend, "-o", str(tmp_path / "next.vmtrace"), "--", "true"],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert nxt.returncode == 0, nxt.stderr
        assert "removed leftovers" in nxt.stderr, nxt.stderr
        assert "Traceback" not in nxt.stderr
        assert settle(base, ours) == {}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in running_exe(qemu_copy):
            os.kill(pid, signal.SIGKILL)


def test_bcc_killed_while_naming_the_bql_leaves_ftrace_working(host: None, qemu_copy: Path, tmp_path: Path) -> None:
    """The leaked-uprobe case: bcc 0.26's binding registered its uprobes
    with a garbage ref_ctr_offset, so after a SIGKILL the kernel refused
    every ftrace uprobe on that binary with EINVAL.  Repeated, because the
    garbage was whatever a register held."""
    have_bcc()
    env = env_with(qemu_copy)
    for i in range(3):
        proc = start(
            ["record", "--backend", "bcc", "-o", str(tmp_path / f"k{i}.vmtrace"), "--", *long_qemu(qemu_copy)], env=env
        )
        try:
            assert wait_for(functools.partial(qemu_started, proc), 90), "QEMU never started"
            time.sleep(0.2)  # inside the identification window
            proc.kill()
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            orphans = gone(running_exe(qemu_copy))
            for pid in orphans:
                os.kill(pid, signal.SIGKILL)
        assert not orphans, "QEMU outlived the SIGKILLed recorder"
    ft = subprocess.run(
        [
            *VMTRACE,
            "record",
            "--backend",
            "ftrace",
            "-o",
            str(tmp_path / "ft.vmtrace"),
            "--",
            *long_qemu(qemu_copy, 20000),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    # The guest leaves through isa-debug-exit: QEMU's status is 1 on success.
    assert ft.returncode == 1 and "wrote" in ft.stderr, ft.stderr
    from vmtrace.trace import read_trace

    locks = read_trace(tmp_path / "ft.vmtrace").meta["locks"]
    assert any(lk["name"] == "BQL" and lk["identified"] for lk in locks), locks


@pytest.mark.parametrize("backend", ["ftrace", "bcc"])
def test_a_uprobe_with_another_ref_ctr_offset_is_named(
    host: None, qemu_copy: Path, tmp_path: Path, backend: str
) -> None:
    """What a bcc 0.26 tool leaves (a uprobe with ref_ctr_offset 6 on the BQL
    function, as its binding registered here) makes the kernel refuse ours
    with EINVAL: one line that names the cause and the fix."""
    have_bcc()
    from bcc import BPF

    from vmtrace.collectors.qemu import qemu_symbols, symbol_file_offset
    from vmtrace.collectors.uprobe_pmu import attach_uprobe

    sym = qemu_symbols(str(qemu_copy)).bql_lock
    assert sym is not None
    offset = symbol_file_offset(str(qemu_copy), sym)
    assert offset is not None
    bpf = BPF(text=b"int hit(void *ctx) { return 0; }")
    other = attach_uprobe(bpf.load_func(b"hit", BPF.KPROBE).fd, str(qemu_copy), offset, sym, ref_ctr_offset=6)
    try:
        r = subprocess.run(
            [
                *VMTRACE,
                "record",
                "--backend",
                backend,
                "-o",
                str(tmp_path / "r.vmtrace"),
                "--",
                *long_qemu(qemu_copy, 2000),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            env=env_with(qemu_copy),
        )
    finally:
        other.close()
        bpf.cleanup()
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "ref_ctr_offset" in lines[0] and "EINVAL" in lines[0], r.stderr
    assert not running_exe(qemu_copy)


# ------------------------------------------------------------ SIGTERM paths
def _sigterm_leaves_no_vmm(
    args: list[str], env: dict[str, str], started: Callable[[subprocess.Popen[str]], object], expect_line: str = ""
) -> None:
    proc = start(args, env=env)
    kids: set[int] = set()
    try:
        assert wait_for(lambda: started(proc), 120, 0.05), "the VMM never started"
        time.sleep(1)
        kids = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        rc, _out, err = finish(proc, 60)
        assert rc == 128 + signal.SIGTERM, (rc, err)
        assert "Traceback" not in err
        assert not gone(kids), f"{args[0]} left processes running after SIGTERM: {gone(kids)}"
        if expect_line:
            assert expect_line in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in kids:  # what a failed test orphaned, by pid
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_sigterm_to_bench_leaves_no_vmm(host: None, qemu_copy: Path) -> None:
    _sigterm_leaves_no_vmm(["bench", "--vmm", "qemu", "--iterations", "50000000"], env_with(qemu_copy), qemu_started)
    assert not running_exe(qemu_copy)


def test_sigterm_to_bench_record_keeps_the_trace(host: None, qemu_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.vmtrace"
    _sigterm_leaves_no_vmm(
        ["bench", "--vmm", "qemu", "--iterations", "50000000", "--record", str(out), "--backend", "ftrace"],
        env_with(qemu_copy),
        qemu_started,
        expect_line=f"trace recorded so far was written to {out}",
    )
    from vmtrace.trace import read_trace

    assert len(read_trace(out).events) > 0
    assert not running_exe(qemu_copy)


def test_sigterm_to_sweep_leaves_no_vmm(host: None, qemu_copy: Path, tmp_path: Path) -> None:
    _sigterm_leaves_no_vmm(
        ["sweep", "-o", str(tmp_path / "sw"), "--vmm", "qemu", "--vcpus", "1", "--iterations", "50000000"],
        env_with(qemu_copy),
        qemu_started,
    )
    assert not running_exe(qemu_copy)


def test_sigterm_to_vmm_run_leaves_no_vmm(root: None, kvm: None) -> None:
    def vcpu_running(proc: subprocess.Popen[str]) -> bool:
        # The reference VMM names its vCPU threads as QEMU does.
        for pid in descendants(proc.pid):
            try:
                if any((t / "comm").read_text().startswith("CPU ") for t in Path(f"/proc/{pid}/task").iterdir()):
                    return True
            except OSError:
                continue
        return False

    _sigterm_leaves_no_vmm(
        ["vmm", "run", "--image", str(guest_image()), "--", "bench=inl_pmtimer", "iterations=50000000"],
        dict(os.environ),
        vcpu_running,
    )


# ---------------------------------------------------------------- exit codes
def test_interrupted_record_exits_128_plus_signal(host: None, qemu_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "i.vmtrace"
    proc = start(
        ["record", "--backend", "ftrace", "-o", str(out), "--", *long_qemu(qemu_copy)], env=env_with(qemu_copy)
    )
    assert wait_for(lambda: qemu_started(proc), 90, 0.05)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    rc, _out, err = finish(proc)
    assert rc == 128 + signal.SIGTERM, err
    assert out.exists() and "stopped by signal" in err


def test_signal_during_attach_exits_128_plus_signal(host: None, tmp_path: Path) -> None:
    have_bcc()  # bcc compiles BPF while attaching: a window of a second or more
    proc = start(["record", "--backend", "bcc", "-o", str(tmp_path / "a.vmtrace"), "--", "sleep", "30"])
    assert wait_for(lambda: descendants(proc.pid), 60, 0.01)
    time.sleep(0.3)
    proc.send_signal(signal.SIGHUP)
    rc, _out, err = finish(proc)
    assert rc == 128 + signal.SIGHUP, err


def test_record_returns_the_targets_status(host: None, tmp_path: Path) -> None:
    r = subprocess.run(
        [*VMTRACE, "record", "--backend", "ftrace", "-o", str(tmp_path / "s.vmtrace"), "--", "sh", "-c", "exit 7"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 7, r.stderr


# ----------------------------------------------------------------- full disk
@pytest.fixture
def full_fs(root: None, tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs with 16 KiB left: a real ENOSPC."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "vmtrace-test-full", str(mnt)], capture_output=True, text=True
    )
    need(r.returncode == 0, f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        st = os.statvfs(mnt)
        (mnt / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 16384))
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_full_disk_keeps_the_spool_and_recover_finishes(
    host: None, qemu_copy: Path, full_fs: Path, tmp_path: Path
) -> None:
    out = full_fs / "run.vmtrace"
    r = subprocess.run(
        [*VMTRACE, "record", "--backend", "ftrace", "-o", str(out), "--", *long_qemu(qemu_copy, 20000)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env_with(qemu_copy),
    )
    assert r.returncode == 2, r.stderr
    # The "recording PID ..." line says it attached; then one error line.
    lines = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("vmtrace: recording PID ")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    # isa-debug-exit: QEMU's status is 1 when the guest finished.
    assert "the target exited with status 1" in lines[0], lines[0]
    spool = Path(lines[0].split("vmtrace recover ")[1].split()[0])
    try:
        assert spool.is_dir(), lines[0]
        # A kept spool is not a leftover: the next start must not clean it.
        from vmtrace.record import cleanup_leftovers

        cleanup_leftovers()
        assert spool.is_dir()
        dest = tmp_path / "recovered.vmtrace"
        rec = subprocess.run(
            [*VMTRACE, "recover", str(spool), "-o", str(dest)], capture_output=True, text=True, timeout=120
        )
        assert rec.returncode == 0, rec.stderr
        from vmtrace.trace import read_trace

        tr = read_trace(dest)
        assert (tr.events["event"] == "run_enter").sum() > 1000
        assert tr.meta["target"]["exit_status"] == 1
        assert not spool.exists()
    finally:
        shutil.rmtree(spool, ignore_errors=True)
