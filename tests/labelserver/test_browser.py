"""End to end in a real headless Chromium (Debian's `chromium`, driven by Playwright): guidelines, keyboard
labeling, undo, reload, end of batch, metrics, next round — and the label store checked at each step.

Skips when Chromium ($SANITIZE_CHROMIUM, else `chromium` on PATH) or the `playwright` package is missing,
except under CI=true, where it fails instead.
Screenshots go to $SANITIZE_TEST_ARTIFACTS (default: the test's tmp folder).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from sanitize.safety.labels import LabelStore

from .conftest import CATEGORY

CHROMIUM = os.environ.get("SANITIZE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# The machines that run this have no network: without these Chromium waits on updates, sync and QUIC probes.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 15_000


def _browser_or_skip():
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing, sync_playwright = "the playwright package is not installed (pip install playwright)", None
    if missing is None and not os.access(CHROMIUM, os.X_OK):
        missing = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser test cannot run in CI: {missing}")
        pytest.skip(missing)
    return sync_playwright


@pytest.fixture
def page(tmp_path):
    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1100, "height": 720})
        context.set_default_timeout(TIMEOUT_MS)
        page = context.pages[0] if context.pages else context.new_page()
        page.problems = []
        page.on("pageerror", lambda exc: page.problems.append(f"page error: {exc}"))
        page.on("console", lambda msg: msg.type == "error" and page.problems.append(f"console: {msg.text}"))
        page.on("response", lambda r: r.status >= 400 and page.problems.append(f"HTTP {r.status}: {r.url}"))
        yield page
        context.close()


@pytest.fixture
def artifacts(tmp_path) -> Path:
    folder = Path(os.environ.get("SANITIZE_TEST_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def active_answers(project_dir) -> list[tuple[str, int]]:
    table = LabelStore(project_dir, CATEGORY).read()
    return [(u, lab) for u, lab, s in zip(*(table[c].to_pylist() for c in ("uid", "label", "source")), strict=True)
            if s == "active"]


def test_label_a_round_with_the_keyboard(page, serve, project_dir, artifacts):
    from playwright.sync_api import expect

    server = serve(n=6)
    uids = server.session.uids
    base = f"http://127.0.0.1:{server.port}/"
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    count, shown = page.locator("#count"), page.locator("#uid")

    # Guidelines first; the token leaves the address bar.
    page.goto(server.url)
    expect(page.locator("#start")).to_be_visible()
    expect(page.locator("#start-guide")).to_contain_text("Label 1 when the image shows the blob cluster.")
    assert page.url == base
    page.keyboard.press("Enter")
    expect(page.locator("#label")).to_be_visible()
    expect(shown).to_have_text(uids[0])
    expect(count).to_have_text("0 of 6")

    # Blurred by default; b reveals and blurs again; each new item starts blurred.
    pic = page.locator("#pic")
    expect(pic).to_have_class("pic blurred")
    page.keyboard.press("b")
    expect(pic).to_have_class("pic")
    page.keyboard.press("?")
    expect(page.locator("#help")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#help")).to_be_hidden()

    # y, n, s, y typed without waiting, then u takes the last answer back.
    for key in "ynsy":
        page.keyboard.press(key)
    expect(count).to_have_text("4 of 6")
    expect(pic).to_have_class("pic blurred")
    page.keyboard.press("u")
    expect(count).to_have_text("3 of 6")
    expect(shown).to_have_text(uids[3])
    assert active_answers(project_dir) == [(uids[0], 1), (uids[1], 0)]
    skips = json.loads((project_dir / "batches" / CATEGORY / "round_1.skips.json").read_text())
    assert list(skips["skipped"]) == [uids[2]]

    # Reload: same place, no guidelines again, nothing duplicated; u now takes back the batch's latest (the skip).
    page.reload()
    expect(page.locator("#label")).to_be_visible()
    expect(count).to_have_text("3 of 6")
    expect(shown).to_have_text(uids[3])
    page.keyboard.press("u")
    expect(count).to_have_text("2 of 6")
    expect(shown).to_have_text(uids[2])
    page.keyboard.press("s")
    expect(shown).to_have_text(uids[3])
    page.keyboard.press("b")
    expect(pic).to_have_class("pic")
    page.screenshot(path=str(artifacts / "label-serve-item.png"))
    assert active_answers(project_dir) == [(uids[0], 1), (uids[1], 0)]

    # The end of the batch: retrain, metrics, then the next round with the chosen strategy.
    for key in "yny":
        page.keyboard.press(key)
    expect(page.locator("#done")).to_be_visible()
    expect(page.locator("#metrics")).to_contain_text("cross-validated precision", timeout=30_000)
    expect(page.locator("#metrics")).to_contain_text("expected removal rate")
    expect(page.locator("#done-summary")).to_have_text("3 yes, 2 no, 1 skipped of 6 images.")
    page.screenshot(path=str(artifacts / "label-serve-done.png"), full_page=True)
    answers = active_answers(project_dir)
    assert sorted(answers) == sorted([(uids[0], 1), (uids[1], 0), (uids[3], 1), (uids[4], 0), (uids[5], 1)])
    assert (project_dir / "models" / f"{CATEGORY}.safetensors").exists()

    page.select_option("#strategy", "random")
    page.keyboard.press("Enter")
    expect(page.locator("#start-kicker")).to_contain_text("round 2")
    expect(page.locator("#start-kicker")).to_contain_text("picked by random")
    assert server.session.round == 2 and not set(server.session.uids) & {u for u, _ in answers}

    assert all(url.startswith(base) for url in requested), [u for u in requested if not u.startswith(base)]
    assert page.problems == []
