"""Shared helpers for end-to-end tests: run the real ``streamlit run app.py`` and drive Debian's headless Chromium."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from core.bench.viewer import CHROMIUM_ARGS  # one set of browser flags for the tests and the benchmark

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(env: dict[str, str], log_path: Path, entry: Path | None = None,
                timeout: float = 90) -> Iterator[str]:
    """Start ``streamlit run app.py`` (or another entry script) on a free port; yield its base URL; stop it."""
    port = free_port()
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(entry or ROOT / "app.py"), "--server.headless", "true",
             "--server.port", str(port), "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + timeout
            while True:
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).status == 200:
                        break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError(f"streamlit did not start: {log_path.read_text()[-2000:]}") from None
                    time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def browser_page(width: int = 1500, height: int = 1000) -> Iterator:
    """A fresh Playwright page in headless Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


ARTIFACTS = ROOT / "tests" / "artifacts"
DOC_SCREENSHOTS = ROOT / "docs" / "screenshots"


def save_screenshot(page, name: str, doc: bool = False, full_page: bool = False) -> Path:
    """Screenshot to tests/artifacts/<name>.png; with ``doc`` and SLIDELENS_UPDATE_SCREENSHOTS=1 also refresh the
    README's copy in docs/screenshots/ as a small 256-colour PNG (so a plain test run leaves git clean)."""
    from PIL import Image

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 5_000  # not a blank page
    if doc and os.environ.get("SLIDELENS_UPDATE_SCREENSHOTS") == "1":
        DOC_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        dst = DOC_SCREENSHOTS / f"{name}.png"
        Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)
    return path


def choose_option(page, opener, name: str, tries: int = 3) -> None:  # noqa: ANN001 - playwright Page and Locator
    """Open a Streamlit selectbox (``opener``: a selector or locator) and click its option ``name``. A rerun that
    lands just after the click re-renders the box and closes its list, so the click is retried (up to ``tries``)
    until the option shows; the last failure is raised."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    box = page.locator(opener) if isinstance(opener, str) else opener
    option = page.get_by_role("option", name=name, exact=True)
    for attempt in range(tries):
        box.click()
        try:
            option.wait_for(state="visible", timeout=10_000)
        except PlaywrightTimeout:
            if attempt == tries - 1:
                raise
            page.keyboard.press("Escape")
            continue
        option.click()
        return
