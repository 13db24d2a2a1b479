"""`videorefer app` in a real headless browser: Debian's chromium driven by Playwright (nothing downloads a browser).

One app (tiny random model, fake segmenter, synthetic examples) and one browser serve every test of the module;
the app listens on 127.0.0.1 on a free port and is stopped through its own handle. The page loads and says the
model is random, an example opens, a click on an object makes a masklet (the overlay's pixels change where the
object is, and go back when it is removed), a question gets an answer and both downloads, a bad upload shows its
message and the server keeps serving. Without chromium or playwright the module skips, except in CI (CI=true),
where `.ci/run` installs them and a skip would hide a broken page.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TIMEOUT_MS = 60_000


def _require(condition: bool, why: str) -> None:
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}: .ci/run installs it")
    pytest.skip(why)


_require(Path(CHROMIUM).is_file(), "Debian's chromium is not installed (apt-get install chromium)")
try:
    import gradio  # noqa: F401
    from playwright.sync_api import sync_playwright
except ImportError as exc:  # pragma: no cover - depends on the environment
    _require(False, f"the app's extra is not installed ({exc})")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from flows.cli_app import build_service
    from flows.webapp import start

    service = build_service(model=None, tiny=True, segmenter_config=None, workdir=tmp_path_factory.mktemp("app"),
                            max_new_tokens=8, max_frames=24, max_seconds=60)
    port = _free_port()
    handle = start(service, host="127.0.0.1", port=port)
    try:
        yield service, f"http://127.0.0.1:{port}/"
    finally:
        handle.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(app, browser):
    _, url = app
    context = browser.new_context(viewport={"width": 1400, "height": 1300})
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    tab.goto(url)
    tab.wait_for_selector("#notice")
    tab.wait_for_selector("button.example")
    try:
        yield tab
    finally:
        context.close()


def _open_first_example(page, service):
    page.locator("button.example").first.click()
    page.wait_for_function("document.querySelector('#message') && "
                           "document.querySelector('#message').innerText.includes('Opened')")
    page.wait_for_selector("#frame img")
    _settle(page)
    return service.examples[0]


def _settle(page) -> None:
    """Wait until the frame is idle (no update pending, its image loaded): a click during an update is lost."""
    page.wait_for_function(
        """() => { const tracker = document.querySelector('#frame [data-testid=status-tracker]');
        const img = document.querySelector('#frame img');
        return (!tracker || tracker.classList.contains('hide')) && img && img.complete && img.naturalWidth > 0; }"""
    )
    page.wait_for_timeout(300)  # the swapped image's fade-in


def _sample_href(page) -> str:
    return page.locator("#sample-file a").first.evaluate("a => a.href")


def _frame_geometry(page):
    """Where the frame's pixels are on the screen: the <img> box and its natural size (object-fit contain)."""
    return page.evaluate(
        """() => { const img = document.querySelector('#frame img'); const r = img.getBoundingClientRect();
        return {x: r.x, y: r.y, w: r.width, h: r.height, nw: img.naturalWidth, nh: img.naturalHeight,
                src: img.src}; }"""
    )


def _frame_pixels(page) -> np.ndarray:
    from PIL import Image

    shot = page.locator("#frame img").screenshot()
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(np.int16)


def _to_screen(geometry, x: float, y: float, video_width: int) -> tuple[float, float]:
    """Video pixel (x, y) -> page coordinates, through the display scale and the <img>'s contain fit."""
    from flows.webapp import display_scale

    shown = display_scale(video_width)
    fit = min(geometry["w"] / geometry["nw"], geometry["h"] / geometry["nh"])
    left = geometry["x"] + (geometry["w"] - geometry["nw"] * fit) / 2
    top = geometry["y"] + (geometry["h"] - geometry["nh"] * fit) / 2
    return left + (x + 0.5) * shown * fit, top + (y + 0.5) * shown * fit


def _mask_on_screenshot(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def test_the_page_loads_and_says_the_model_is_random_and_the_segmenter_fake(page) -> None:
    notice = page.locator("#notice").inner_text()
    assert "RANDOM" in notice and "FAKE" in notice
    assert page.locator("button.example").count() == 2


def test_an_example_opens_and_a_click_on_an_object_makes_its_masklet(page, app) -> None:
    from engine.masks import decode_rle
    from engine.synthetic import load_ground_truth

    service, _ = app
    example = _open_first_example(page, service)
    assert page.locator("#player video").count() == 1  # the clip plays in the page's player
    truth = load_ground_truth(example.path)
    target = max(truth.objects, key=lambda o: decode_rle(o.masks[0]).sum())
    mask = decode_rle(target.masks[0]).astype(bool)
    ys, xs = np.nonzero(mask)
    inside = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)  # the object pixel nearest its centre
    before = _frame_pixels(page)
    geometry = _frame_geometry(page)
    page.mouse.click(*_to_screen(geometry, float(xs[inside]), float(ys[inside]), truth.width))
    page.wait_for_function(f"document.querySelector('#frame img').src !== {geometry['src']!r}")
    page.wait_for_function("document.querySelector('#message').innerText.includes('segmented')")
    _settle(page)
    after = _frame_pixels(page)
    assert after.shape == before.shape
    changed = np.abs(after - before).sum(axis=2) > 30
    on_object = _mask_on_screenshot(mask, changed.shape)
    import cv2

    near = cv2.dilate(on_object.astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool)
    assert changed[on_object].mean() > 0.8, "the overlay does not cover the clicked object"
    assert changed[~near].mean() < 0.01, "the overlay changed pixels away from the object"
    assert "object 1" in page.locator("#objects").inner_text()
    page.wait_for_selector("#masks-file a")  # the masks download is offered
    page.wait_for_selector("#masklets img")  # and the masklet plays over the clip

    # Scrub to frame 5: the masklet was propagated, so the overlay covers the object where it is now.
    from engine.video import read_frames
    from flows.webapp import _resized, display_scale

    src = _frame_geometry(page)["src"]
    page.locator("#frame-slider input[type=range]").fill("5")
    page.wait_for_function(f"document.querySelector('#frame img').src !== {src!r}")
    _settle(page)
    plain = _resized(read_frames(example.path, [5])[0], display_scale(truth.width)).astype(np.int16)
    import cv2

    shot = cv2.resize(_frame_pixels(page).astype(np.uint8), plain.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    shot = shot.astype(np.int16)
    moved = _mask_on_screenshot(decode_rle(target.masks[5]).astype(bool), plain.shape[:2])
    tinted = np.abs(shot - plain).sum(axis=2) > 30
    assert tinted[moved].mean() > 0.8 and not np.array_equal(moved, on_object)

    _settle(page)
    geometry = _frame_geometry(page)
    page.locator("#remove-object").click()
    page.wait_for_function(f"document.querySelector('#frame img').src !== {geometry['src']!r}")
    _settle(page)
    shot = cv2.resize(_frame_pixels(page).astype(np.uint8), plain.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    untinted = np.abs(shot.astype(np.int16) - plain).sum(axis=2) > 30
    assert untinted[moved].mean() < 0.1 and untinted.mean() < 0.02  # removed: the frame is plain again


def test_a_question_gets_a_streamed_answer_and_the_downloads(page, app) -> None:
    import json

    from engine.masks import decode_rle
    from engine.synthetic import load_ground_truth

    service, _ = app
    example = _open_first_example(page, service)
    truth = load_ground_truth(example.path)
    geometry = _frame_geometry(page)
    for number, obj in enumerate(truth.objects[:2], start=1):
        page.locator("#new-object").click()
        page.wait_for_function("document.querySelector('#message').innerText.includes('next click starts')")
        _settle(page)
        ys, xs = np.nonzero(decode_rle(obj.masks[0]))
        inside = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)
        page.mouse.click(*_to_screen(geometry, float(xs[inside]), float(ys[inside]), truth.width))
        page.wait_for_function(f"document.querySelector('#message').innerText.includes('Object {number} segmented')")
    page.locator("#question textarea").fill("What is <region2> doing?")
    page.locator("#ask").click()
    page.wait_for_selector("#sample-file a")
    answer = page.locator("#answer textarea").input_value()
    assert answer.strip(), "no answer"
    single_href = _sample_href(page)
    sample = json.loads(page.request.get(single_href).body())
    assert sample["task"] == "qa" and sample["conversations"][0]["value"].endswith("What is <region> doing?")
    assert sample["conversations"][1]["value"] == answer.strip() and len(sample["objects"]) == 1
    assert sample["extra"]["mode"] == "single"

    page.locator("#ask-mode label", has_text="multi").click()
    page.locator("#question textarea").fill("Is <region> near <region>?")
    page.locator("#ask").click()
    page.wait_for_function(f"document.querySelector('#sample-file a') && "
                           f"document.querySelector('#sample-file a').href !== {single_href!r}")
    multi = json.loads(page.request.get(_sample_href(page)).body())
    assert multi["extra"]["mode"] == "multi" and len(multi["objects"]) == 2
    assert all(len(obj["masks"]) > 1 for obj in multi["objects"])  # a mask on every sampled frame

    page.locator("#question textarea").fill("Where is <region5>?")
    page.locator("#ask").click()
    page.wait_for_function("document.querySelector('#message').innerText.includes('no object 5')")


def test_a_bad_upload_shows_its_message_and_the_server_keeps_serving(page, app, tmp_path) -> None:
    service, _ = app
    bad = tmp_path / "holiday.mp4"
    bad.write_bytes(b"this is a text file, not a video\n" * 20)
    page.locator("#upload input[type=file]").set_input_files(str(bad))
    page.wait_for_function("document.querySelector('#message').innerText.includes('cannot be opened')")
    assert "holiday.mp4" in page.locator("#message").inner_text()
    _open_first_example(page, service)  # the server still serves
