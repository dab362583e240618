"""The fleet page in a real browser: headless Chromium opens it offline
with no console error and no network request, and every chart draws."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from vmtrace.fleet.engine import run_fleet
from vmtrace.fleet.render import write_fleet_html
from vmtrace.fleet.report import fleet_report

from .browser import Chromium, chromium_binary, png_stats
from .conftest import need
from .test_fleet import build_fleet

RENDERED = (
    "(() => { const d = [...document.querySelectorAll('.plotly-graph-div')];"
    " return d.length > 0 && d.every(g => g._fullLayout && g.querySelector('.main-svg')); })()"
)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fleet-html")
    rows = run_fleet(build_fleet(d / "traces"), scheduler="synchronous")
    r = fleet_report(pd.DataFrame(rows), by=["vmm_version"], top_n=5)
    return write_fleet_html(r, d / "fleet.html")


@pytest.mark.timeout(120)
def test_fleet_page_opens_offline_and_every_chart_draws(page: Path) -> None:
    binary = chromium_binary()
    need(binary is not None, "needs Chromium (Debian package chromium)")
    assert binary is not None
    with Chromium(binary) as browser:
        report = browser.load(page.as_uri(), ready=RENDERED)
        assert report.network == [], f"the page fetched {report.network}"
        assert report.errors == [], f"the page logged errors: {report.errors}"
        n = browser.evaluate("document.querySelectorAll('.plotly-graph-div').length")
        assert n == 3  # merged histograms, per-trace boxes, the grouped breakdown
        headings = browser.evaluate("[...document.querySelectorAll('h2')].map(h => h.textContent)")
        assert headings == ["Fleet", "Across traces", "By vmm_version", "Top traces by BQL wait", "Failed traces"]
        for i in range(n):
            size, not_background, colourful = png_stats(browser.screenshot(".plotly-graph-div", i))
            assert size[0] > 300 and size[1] > 200, (i, size)
            assert not_background > 0.03 and colourful > 0.005, (i, not_background, colourful)
