"""The HTML report as a person sees it: headless Chromium (Debian's chromium + chromium-driver, driven by
selenium; no browser is downloaded) opens report.html from disk, the page logs no console errors,
every image has loaded, and a screenshot is taken."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1280,1600",
)


def _browser_or_skip(user_data_dir: Path):
    if not Path(CHROMIUM).exists() or not Path(CHROMEDRIVER).exists():
        pytest.skip("needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install 'kvplan[test]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path keeps Selenium Manager from trying to download one.
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_report_page_loads_cleanly_in_chromium(run_cli, tmp_path):
    out = tmp_path / "report"
    result = run_cli("report", "--models", "opt-1.3b,llama-3-8b", "--gpus", "t4,a100-40g-pcie", "--seqs", "2k,16k",
                     "--batches", "64", "--strategies", "auto,resident,transfer,recompute",
                     "--price", "t4=0.35,a100-40g-pcie=1.8", "--gen", "32", "-o", out)
    assert result.exit_code == 0, result.output
    n_figures = len(list((out / "figures").glob("*.png")))
    assert n_figures >= 5

    driver = _browser_or_skip(tmp_path / "chromium-profile")
    try:
        driver.get((out / "report.html").resolve().as_uri())
        assert driver.title.startswith("kvplan capacity report")
        images = driver.execute_script(
            "return Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth}))"
        )
        assert len(images) == n_figures
        not_loaded = [img["alt"] for img in images if not (img["complete"] and img["w"] > 0)]
        assert not not_loaded, f"images that did not load: {not_loaded}"
        errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
        assert not errors, f"console errors: {errors}"
        headings = driver.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        assert "Best GPU for each model and context" in headings and "Infeasible configurations" in headings
        shot = tmp_path / "report-screenshot.png"
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    width, height = _png_size(shot)
    assert width >= 1000 and height >= 800
