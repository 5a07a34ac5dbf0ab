"""`fluid serve` in a real browser: headless Chromium (Debian's `chromium` package, driven by
Playwright) opens the page on a loopback server with the shipped models, submits prompts,
sees bad values explained on the page, the progressive frames and the final images.

Set FLUID_SERVE_SCREENSHOT=docs/images/serve.png to refresh the README's screenshot, and
FLUID_CHROMIUM to use another Chromium binary.
"""

import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from fluid.serve.app import create_app, running_server
from fluid.serve.worker import ModelSet

CHROMIUM = os.environ.get("FLUID_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# Headless on a closed network: no sandbox (containers), no GPU, and none of the browser's
# own background connections (they would be refused, and slow the start).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

try:
    from playwright.sync_api import sync_playwright
except ImportError:
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(
        sync_playwright is None,
        reason="the browser test needs the Python package playwright (pip install -e '.[test]')",
    ),
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium found: install Debian's chromium package "
        "(`make browser`, or apt-get install chromium), or set FLUID_CHROMIUM",
    ),
]


@pytest.fixture(scope="module")
def server(minilm):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `fluid serve` runs
    t0 = time.perf_counter()
    try:
        with running_server(create_app(ModelSet.shipped(text_encoder=minilm))) as url:
            yield url, t0
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1180, "height": 720},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(120_000)
            yield page
        finally:
            context.close()


def _wait_until_loaded(url: str, models: int = 4, timeout: float = 120) -> None:
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url + "/healthz", timeout=10) as r:
            if len(json.loads(r.read())["loaded"]) == models:
                return
        time.sleep(0.1)
    raise TimeoutError("the shipped models did not load")


def test_bad_values_are_explained_on_the_page(server, page):
    url, _ = server
    page.goto(url + "/")
    page.wait_for_selector("body[data-state=ready]")
    assert page.title().startswith("Fluid")
    page.click("#go")  # empty prompt
    page.wait_for_selector("#errors:not([hidden])")
    assert "empty prompt" in page.inner_text("#errors")
    page.fill("#prompt", "a red square")
    page.fill("#cfg", "50")
    page.fill("#seed", "abc")
    page.click("#go")
    page.wait_for_function("document.querySelector('#errors').innerText.includes('cfg')")
    text = page.inner_text("#errors")
    assert "cfg must be from 1 to 20; 50 is out of range." in text and "seed must be a whole number" in text
    assert page.get_attribute("#cfg", "aria-invalid") == "true"
    assert "Traceback" not in page.content()


def test_the_image_forms_step_by_step_side_by_side(server, page, tmp_path):
    url, started = server
    _wait_until_loaded(url)
    ready_s = time.perf_counter() - started
    page.goto(url + "/")
    page.wait_for_selector("body[data-state=ready]")
    # Record every frame the page shows, as it shows it.
    page.evaluate("""() => {
        window.shown = [];
        new MutationObserver((changes) => {
            for (const c of changes) {
                const fig = c.target.closest('figure');
                if (fig && c.attributeName === 'src')
                    window.shown.push([fig.dataset.model, fig.querySelector('.step').textContent]);
            }
        }).observe(document.querySelector('#results'), {subtree: true, attributes: true, attributeFilter: ['src']});
    }""")
    page.fill("#prompt", "a red square")
    page.select_option("#model", "all")
    page.fill("#seed", "3")
    page.click("#go")
    page.wait_for_selector("body[data-state=done]")
    figures = page.query_selector_all("figure")
    assert [f.get_attribute("data-model") for f in figures] == [
        "continuous-random",
        "continuous-raster",
        "discrete-random",
        "discrete-raster",
    ]
    for fig in figures:
        assert fig.get_attribute("data-done") == "true"
        assert int(fig.get_attribute("data-frames")) == 16  # 16 tokens: 16 random-order steps, 16 raster steps
        assert fig.query_selector("img").evaluate("img => img.complete && img.naturalWidth") == 64
        assert "seed 3" in fig.inner_text()
    shown = page.evaluate("window.shown")
    raster = [s for m, s in shown if m == "discrete-raster"]
    assert raster[0].startswith("step 1/16: 1/16 tokens") and "step 8/16: 8/16 tokens" in raster
    timing = page.evaluate("window.fluidTiming")
    assert "Done in" in page.inner_text("#status")
    shot = page.screenshot(full_page=True)
    (tmp_path / "serve.png").write_bytes(shot)
    target = os.environ.get("FLUID_SERVE_SCREENSHOT")
    if target:
        Path(target).write_bytes(shot)
    print(
        f"\nbrowser: models ready {ready_s:.1f} s after the server started; first frame {timing['firstFrame']:.0f} ms "
        f"after Generate, all four images {timing['done']:.0f} ms"
    )
