"""DuckDB reads fleet.parquet, and the README's example queries run and
agree with the library's fleet view."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from vmtrace.fleet import histograms as hist
from vmtrace.fleet.engine import run_fleet
from vmtrace.fleet.report import fleet_report
from vmtrace.fleet.summary import COLUMNS, write_fleet

from .test_fleet import REPO, build_fleet


def readme_queries() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Fleet analysis", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fleet-duckdb")
    rows = run_fleet(build_fleet(d / "traces"), scheduler="synchronous")
    return Path(write_fleet(rows, str(d / "fleet.parquet")))


def _run(query: str, table: Path) -> pd.DataFrame:
    assert "'fleet.parquet'" in query
    return duckdb.connect().execute(query.replace("'fleet.parquet'", f"'{table}'")).df()


def test_duckdb_reads_every_column(table: Path) -> None:
    con = duckdb.connect()
    described = con.execute(f"DESCRIBE SELECT * FROM '{table}'").df()
    assert described["column_name"].tolist() == list(COLUMNS)
    types = dict(zip(described["column_name"], described["column_type"], strict=True))
    assert types["vcpus"] == "INTEGER" and types["hist_total"] == "BIGINT[]"
    assert types["recorded"].startswith("TIMESTAMP") and types["top_locks"].startswith("STRUCT")
    n_failed = con.execute(f"SELECT count(*) FROM '{table}' WHERE error IS NOT NULL").fetchone()
    assert n_failed == (3,)
    top = con.execute(f"SELECT top_locks[1].name FROM '{table}' WHERE path LIKE '%large-qemu10%'").fetchone()
    assert top == ("BQL",)


def test_readme_has_two_queries() -> None:
    assert len(readme_queries()) == 2


def test_bql_share_query_agrees_with_the_fleet_report(table: Path) -> None:
    got = _run(readme_queries()[0], table)
    r = fleet_report(pd.read_parquet(table), by=["vmm", "vmm_version", "vcpus"])
    assert len(got) == len(r.groups) >= 3
    assert list(got["bql_share"]) == sorted(got["bql_share"], reverse=True)

    def key(vmm: Any, version: Any, vcpus: Any) -> tuple[str, str, int]:  # cells
        return ("-" if pd.isna(vmm) else str(vmm), "-" if pd.isna(version) else str(version), int(vcpus))

    want = {key(g.vmm, g.vmm_version, g.vcpus): g.bql_share for g in r.groups.itertuples()}
    for row in got.itertuples():
        key_ = key(row.vmm, row.vmm_version, row.vcpus)
        assert row.bql_share == pytest.approx(want[key_])


def test_histogram_query_is_the_merged_histogram(table: Path) -> None:
    got = _run(readme_queries()[1], table)
    rows = pd.read_parquet(table)
    merged = hist.merge(rows.loc[rows["error"].isna(), "hist_total"])
    nz = np.flatnonzero(merged)
    assert got["bucket"].tolist() == nz.tolist()
    assert got["exits"].astype(np.int64).tolist() == merged[nz].tolist()
    assert got["low_cycles"].tolist() == pytest.approx([hist.bucket_bounds(int(i))[0] for i in nz])
    assert got["cumulative"].iloc[-1] == pytest.approx(1.0)
    p99 = int(got.loc[got["cumulative"] >= 0.99, "bucket"].iloc[0])
    found = hist.quantile(merged, 0.99)
    assert found is not None and p99 == found.bucket
