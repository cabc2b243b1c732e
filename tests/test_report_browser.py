"""report.html in a real browser: headless Chromium (Debian's `chromium` package; .ci/run installs
it) opens the fixture's report from disk with the network cut off, and the page must render
without script errors with every figure at a non-zero size. A screenshot is saved beside the
report in pytest's temporary folder.

The report carries a tiny inline script that, on load, writes data-figures-ok / data-figures-total
(figures whose image decoded and whose box is non-empty) and data-errors onto <body>; --dump-dom
prints the DOM after load, so the test reads those attributes. Uncaught errors also show in
Chromium's log (--enable-logging=stderr) as "Uncaught ..."."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dropbench.reports import FIGURE_NAMES, write_report
from dropbench.reports.html import CHECK_SCRIPT
from report_fixture import build_fixture

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions", "--enable-logging=stderr", "--v=0",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=5000"]


def find_chromium() -> str:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("headless Chromium not found (looked for $CHROMIUM, /usr/bin/chromium, chromium on PATH); "
                "install it with `apt-get update && apt-get install -y chromium` (CI's .ci/run does)")


def chromium(page: Path, profile: Path, *args) -> subprocess.CompletedProcess:
    command = [find_chromium(), *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as exc:  # e.g. a modal dialog from an unescaped <script>alert(1)</script>
        pytest.fail(f"Chromium did not finish within 90 s on {page}: {(exc.stderr or b'')[-1000:]!r}")


def body_attributes(dom: str) -> dict:
    match = re.search(r"<body([^>]*)>", dom)
    assert match, f"no <body> in the dumped DOM: {dom[:300]!r}"
    return dict(re.findall(r'([\w-]+)="([^"]*)"', match.group(1)))


def uncaught(log: str) -> list:
    return [line for line in log.splitlines() if "Uncaught" in line or ":CONSOLE" in line and "error" in line.lower()]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = build_fixture(tmp_path_factory.mktemp("browser"))
    return write_report(out)


def test_report_renders_in_headless_chromium(report, tmp_path):
    result = chromium(report, tmp_path / "profile", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    attributes = body_attributes(result.stdout)
    assert attributes.get("data-figures-total") == str(len(FIGURE_NAMES)), attributes
    assert attributes.get("data-figures-ok") == str(len(FIGURE_NAMES)), f"figures with zero size or not decoded: {attributes}"
    assert attributes.get("data-errors") == "0", attributes
    assert not uncaught(result.stderr), uncaught(result.stderr)
    # what the browser shows is escaped text, not markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in result.stdout


def test_screenshot_of_the_report(report, tmp_path):
    screenshot = report.parent / "report.png"
    result = chromium(report, tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1280,4000", "--hide-scrollbars")
    assert result.returncode == 0, result.stderr[-2000:]
    assert screenshot.is_file() and screenshot.stat().st_size > 20_000, "screenshot missing or blank"
    from PIL import Image  # matplotlib's dependency

    with Image.open(screenshot) as image:
        assert image.size == (1280, 4000)
        colours = image.convert("RGB").resize((320, 1000)).getcolors(maxcolors=1_000_000)
        assert len(colours) > 50, "the screenshot is (nearly) one colour: nothing rendered"


def test_the_check_catches_a_broken_page(tmp_path):
    """The harness itself can fail: a script error and an undecodable figure are both reported."""
    page = tmp_path / "broken.html"
    page.write_text(f"<!DOCTYPE html><html><head><script>{CHECK_SCRIPT}</script></head><body>"
                    "<img class='figure' src='data:image/svg+xml;base64,AAAA'><script>notDefined();</script></body></html>")
    result = chromium(page, tmp_path / "profile", "--dump-dom")
    attributes = body_attributes(result.stdout)
    assert attributes["data-figures-total"] == "1" and attributes["data-figures-ok"] == "0"
    assert attributes["data-errors"] == "1" and uncaught(result.stderr)
