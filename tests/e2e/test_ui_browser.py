"""`textinv ui` in a real browser (Debian's Chromium driven by Playwright): upload, train, watch, generate, download.

CI installs Chromium with apt-get (.ci/run). Without it this test fails, naming the fix: it never skips.
Set TEXTINV_UI_SCREENSHOTS=DIR to also save a screenshot of each tab there (docs/ holds the README's).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image
from ui_server import EXAMPLE, running_ui

pytestmark = pytest.mark.slow

TRAIN_TIMEOUT_MS = 300_000
STEPS = 300  # long enough (~30 s on the toy model) to reload the page while it trains


def chromium_path() -> str:
    path = os.environ.get("TEXTINV_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no Chromium found: `apt-get install -y chromium` (Debian), or set TEXTINV_CHROMIUM to its binary")
    return path


def _shot(page, name: str) -> None:
    folder = os.environ.get("TEXTINV_UI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        path = Path(folder) / f"ui-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        with Image.open(path) as shot:  # 256 colours: a page's flat colours survive, the file is a third
            small = shot.convert("RGB").quantize(256)
        small.save(path, optimize=True)


def _train(page) -> None:
    page.locator("#train-images input[type=file]").set_input_files([str(p) for p in sorted(EXAMPLE.glob("*.png"))])
    page.locator("#train-preview img").nth(4).wait_for()  # all five previews shown
    assert "5 image(s)" in page.locator("#train-upload-note").inner_text()
    page.locator("#train-token input, #train-token textarea").first.fill("<pw-star>")
    init = page.locator("#train-init input, #train-init textarea").first
    init.fill("zxq")
    page.get_by_text("is 2 tokens").wait_for()  # checked as you type: a word the tokenizer splits
    init.fill("star")
    page.get_by_text("is one token").wait_for()
    page.locator("#cfg-max_train_steps input").fill(str(STEPS))
    page.locator("#cfg-validation_steps input").fill(str(STEPS // 2))
    page.locator("#cfg-validation_prompt input, #cfg-validation_prompt textarea").first.fill("a photo of a <pw-star>")
    page.locator("#train-button").click()
    page.locator('#train-progress-state[data-state="running"]').wait_for(timeout=TRAIN_TIMEOUT_MS)
    # A reload mid-run picks the live view up again where the run is, not from an empty page.
    page.reload()
    page.locator('#train-progress-state[data-state="running"]').wait_for(timeout=TRAIN_TIMEOUT_MS)
    assert int(page.locator("#train-progress-state").get_attribute("data-step")) < STEPS
    page.locator('#train-progress-state[data-state="finished"]').wait_for(timeout=TRAIN_TIMEOUT_MS)
    assert page.locator("#train-progress-state").get_attribute("data-step") == str(STEPS)
    page.locator("#train-validation img").first.wait_for()
    assert "textinv train" in page.locator("#train-command").inner_text()
    link = page.locator("#train-embedding a").first
    link.wait_for()
    assert "learned_embeds" in (link.get_attribute("href") or "") + link.inner_text()


def _generate(page, downloads: Path) -> Path:
    page.get_by_role("tab", name="Generate").click()
    page.locator("#gen-concepts").get_by_text("pw-star").wait_for()  # the concept just trained, preselected
    page.locator("#gen-prompt input, #gen-prompt textarea").first.fill("a photo of a <pw-star>")
    page.locator("#gen-n input").fill("2")
    page.locator("#gen-button").click()
    page.locator("#gen-gallery img").nth(1).wait_for(timeout=120_000)
    link = page.locator("#gen-downloads a").first
    link.wait_for()
    with page.expect_download() as info:
        link.click()
    target = downloads / info.value.suggested_filename
    info.value.save_as(target)
    return target


def test_upload_train_watch_generate_download_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with running_ui(tmp_path / "root") as (url, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900}, accept_downloads=True)
            page.goto(url)
            page.locator("#train-token").wait_for(timeout=60_000)
            _train(page)
            _shot(page, "train")
            png = _generate(page, tmp_path)
            _shot(page, "generate")
            page.get_by_role("tab", name="Concepts").click()
            page.locator("#concepts-table").get_by_text("<pw-star>").filter(visible=True).first.wait_for()
            _shot(page, "concepts")
        finally:
            browser.close()
    with Image.open(png) as image:
        parameters = image.text["parameters"]
    assert parameters.startswith("a photo of a <pw-star>") and "Textual inversion: <pw-star>" in parameters
