"""The CLI invocations whose output is pinned in tests/golden/out/.

Each case runs ``vmtrace`` in-process (typer's runner, piped, so rich lays
tables out at 160 columns) and records its exit status, stderr and stdout;
the files a command writes (HTML, Perfetto JSON) are pinned by a digest.
Paths are replaced by placeholders so a case reads the same from any
checkout.  ``python -m tests.golden.cli_cases`` rewrites the expected
files: do it only for a deliberate change of output, and say why in the
commit.
"""

from __future__ import annotations

import hashlib
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "out"
SAMPLES = sorted((REPO / "sample_traces").glob("*.vmtrace"))
# A virtio-blk trace of each kind: the reference VMM's (request probes) and
# QEMU's (kernel events only), so --requests is pinned on both of its paths.
BLK = sorted((Path(__file__).resolve().parent / "traces").glob("*.vmtrace"))
VIEWS = ("--bql-breakdown", "--exits", "--locks", "--offcpu", "--requests")


def cases() -> dict[str, list[str]]:
    """Case name -> arguments; ``{tmp}`` stands for a scratch directory."""
    out: dict[str, list[str]] = {}
    for path in SAMPLES + BLK:
        t = str(path)
        stem = path.stem
        for view in VIEWS:
            out[f"{stem}.report{view}.txt"] = ["report", t, view]
            out[f"{stem}.report{view}.json"] = ["report", t, view, "-f", "json"]
        out[f"{stem}.report.default.txt"] = ["report", t]
        out[f"{stem}.report.all-exits.json"] = ["report", t, "--all-exits", "-f", "json"]
        out[f"{stem}.export-perfetto"] = ["export", t, "--perfetto", "{tmp}/out.json"]
        out[f"{stem}.report-html"] = ["report", t, "--exits", "--html", "{tmp}/out.html"]
    # Several views in one call: one object keyed by view, tables in order.
    # The 7.2 2-vCPU trace (QEMU 10.0's samples sort after it).
    four = next(p for p in SAMPLES if p.name == "qemu-pmtimer-2vcpu.vmtrace")
    for path in (four, *BLK):
        out[f"{path.stem}.report.four-views.txt"] = ["report", str(path), *VIEWS[:4]]
        out[f"{path.stem}.report.four-views.json"] = ["report", str(path), *VIEWS[:4], "-f", "json"]
    for path in BLK:
        out[f"{path.stem}.report.five-views.json"] = ["report", str(path), *VIEWS, "-f", "json"]
    for path in SAMPLES:
        if "callsites" in path.name:
            out[f"{path.stem}.report--callsites.txt"] = ["report", str(path), "--callsites"]
            out[f"{path.stem}.report--callsites.json"] = ["report", str(path), "--callsites", "-f", "json"]
    one = str(SAMPLES[0])
    out["port.json"] = ["report", one, "--bql-breakdown", "--exits", "--port", "0x608", "-f", "json"]
    out["port.txt"] = ["report", one, "--bql-breakdown", "--exits", "--port", "0x608"]
    out["lock-name.txt"] = ["report", one, "--locks", "--lock", "mine=0x1000"]
    out["error-port.txt"] = ["report", one, "--locks", "--port", "0x608"]
    out["error-format.txt"] = ["report", one, "-f", "yaml"]
    out["error-lock.txt"] = ["report", one, "--locks", "--lock", "nonsense"]
    out["error-missing.txt"] = ["report", "{tmp}/nope.vmtrace"]
    out["compare.txt"] = ["compare", *(str(p) for p in SAMPLES)]
    out["compare.json"] = ["compare", *(str(p) for p in SAMPLES), "--format", "json"]
    out["compare-html"] = ["compare", str(SAMPLES[0]), str(SAMPLES[1]), "--html", "{tmp}/cmp.html"]
    return out


def _normalise(text: str, tmp: str) -> str:
    return text.replace(tmp, "<tmp>").replace(str(REPO), "<repo>")


def _digest(path: Path, tmp: str) -> str:
    data = path.read_bytes()
    if path.suffix == ".html":
        # plotly.js is inlined whole: its version is not vmtrace's output.
        from plotly.offline import get_plotlyjs

        data = data.replace(get_plotlyjs().encode(), b"<plotly.js>")
    data = _normalise(data.decode(), tmp).encode()
    # The generator tag carries vmtrace's version.
    data = re.sub(rb"vmtrace \d+\.\d+\.\d+\S*", b"vmtrace <version>", data)
    return hashlib.sha256(data).hexdigest()


def run(args: list[str]) -> str:
    """One case's pinned text: status, stderr, stdout, digests of written files."""
    from typer.testing import CliRunner

    from vmtrace.cli import app

    with tempfile.TemporaryDirectory() as tmp:
        argv = [a.replace("{tmp}", tmp) for a in args]
        res = CliRunner().invoke(
            app, argv, env={"COLUMNS": None, "LINES": None, "FORCE_COLOR": None, "NO_COLOR": None, "TERM": "dumb"}
        )
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            raise res.exception
        parts = [
            f"exit: {res.exit_code}",
            "stderr:",
            _normalise(res.stderr, tmp),
            "stdout:",
            _normalise(res.stdout, tmp),
        ]
        for written in sorted(Path(tmp).iterdir()):
            parts.append(f"wrote {written.name}: sha256 {_digest(written, tmp)}")
    return "\n".join(parts) + "\n"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    for name, args in cases().items():
        (OUT / name).write_text(run(args))
        print(name, file=sys.stderr)


if __name__ == "__main__":
    main()
