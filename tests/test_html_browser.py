"""The HTML report in a real browser: headless Chromium opens it offline
with no console error and no network request, and every chart draws."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from vmtrace.render.html import write_html_report
from vmtrace.trace import read_trace

from .browser import Chromium, png_stats
from .conftest import REPO

SAMPLE = REPO / "sample_traces" / "qemu-pmtimer-2vcpu-precise.vmtrace"
# Every plotly div drawn: plotly sets _fullLayout once a plot is laid out.
RENDERED = (
    "(() => { const d = [...document.querySelectorAll('.plotly-graph-div')];"
    " return d.length > 0 && d.every(g => g._fullLayout && g.querySelector('.main-svg')); })()"
)


@pytest.fixture(scope="module")
def browser(chromium: str):
    with Chromium(chromium) as b:
        yield b


@pytest.fixture(scope="module")
def report_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("html") / "report.html"
    return write_html_report(read_trace(SAMPLE), path)


@pytest.mark.timeout(60)
def test_report_opens_offline_and_every_chart_draws(browser: Chromium, report_page: Path) -> None:
    t0 = time.monotonic()
    page = browser.load(report_page.as_uri(), ready=RENDERED)
    assert page.network == [], f"the page fetched {page.network}"
    assert page.errors == [], f"the page logged errors: {page.errors}"
    assert page.requests and all(u.startswith("file:") for u in page.requests)
    n = browser.evaluate("document.querySelectorAll('.plotly-graph-div').length")
    assert n >= 6  # breakdown, histogram, locks, off-CPU, timeline overview and detail
    traces = browser.evaluate(
        "[...document.querySelectorAll('.plotly-graph-div')].map(g => g.querySelectorAll("
        "'.trace, .scatterlayer .trace').length)"
    )
    assert all(t > 0 for t in traces), traces
    for i in range(n):
        size, not_background, colourful = png_stats(browser.screenshot(".plotly-graph-div", i))
        assert size[0] > 300 and size[1] > 200, (i, size)
        # Axes and labels alone are grey; data is drawn in colour.
        assert not_background > 0.03, (i, not_background)
        assert colourful > 0.005, (i, colourful)
    assert time.monotonic() - t0 < 45


@pytest.mark.timeout(60)
def test_the_harness_sees_requests_and_errors(browser: Chromium, tmp_path: Path) -> None:
    # The checks above only mean something if this harness would catch a
    # page that fetches or fails: show it on a page that does both.
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png">'
        '<script>console.error("boom"); undefined_function();</script></body></html>'
    )
    page = browser.load(bad.as_uri(), settle=1.0)
    assert any(u.startswith("http://127.0.0.1:9/") for u in page.network)
    assert any("boom" in e for e in page.console_errors)
    assert any("undefined_function" in e for e in page.exceptions)
    blank = tmp_path / "blank.html"
    blank.write_text('<!DOCTYPE html><html><body><div id="x" style="width:400px;height:300px"></div></body></html>')
    browser.load(blank.as_uri())
    _size, not_background, colourful = png_stats(browser.screenshot("#x"))
    assert not_background == 0 and colourful == 0
