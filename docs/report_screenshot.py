"""The first screen of a report as a reader sees it (1280 × 800 in Debian's chromium), as a small PNG.

    python docs/report_screenshot.py sharpdiv-quickstart/report docs/quickstart-report.png

README.md shows the quickstart's: run ``sharpdiv quickstart`` first. Needs the test extras
(Playwright for Python) and ``apt-get install chromium``; Playwright never downloads a browser here.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
from pathlib import Path


def screenshot(report: Path, out: Path, width: int = 1280, height: int = 800) -> Path:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--disable-dev-shm-usage"] + (
            ["--no-sandbox"] if os.geteuid() == 0 else []))
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto((report / "index.html").resolve().as_uri(), wait_until="load")
        picture = page.screenshot()
        browser.close()
    # 256 colours are plenty for text, tables and a plot, at a third of the size; octree quantization
    # keeps the plot's colours (the default median cut turned a green marker blue)
    image = Image.open(io.BytesIO(picture)).convert("RGB")
    image.quantize(256, method=Image.Quantize.FASTOCTREE).save(out, optimize=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a report folder (sharpdiv report --out)")
    parser.add_argument("out", type=Path, help="the PNG to write")
    arguments = parser.parse_args()
    print(screenshot(arguments.report, arguments.out))


if __name__ == "__main__":
    main()
