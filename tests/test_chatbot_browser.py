"""apps.chatbot in a real browser: Debian's chromium, headless, driven by Playwright.

The page is served by Ray Serve (the session's private Ray, the app at ``/chatbot``), and
every request that leaves that server is blocked and recorded: the chat page must work
offline. The screenshot goes to
pytest's tmp_path; with ``UPDATE_SCREENSHOT=1`` it replaces ``assets/chatbot.png`` instead.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

from pathlib import Path

import pytest
import torch

import helpers
from apps import chatbot

CHROMIUM = Path("/usr/bin/chromium")
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
SCREENSHOT = Path(__file__).resolve().parents[1] / "assets" / "chatbot.png"

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
    ),
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),
]

torch.set_num_threads(1)

# Records every text the latest bot message shows, so that the test sees the answer grow.
RECORD_BOT_TEXTS = """() => {
  window.botTexts = [];
  new MutationObserver(() => {
    const bots = document.querySelectorAll('[data-testid="bot"]');
    const text = bots.length ? bots[bots.length - 1].innerText.trim() : "";
    if (text && text !== window.botTexts.at(-1)) window.botTexts.push(text);
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def base_url(serve_cluster):
    from ray import serve

    serve.run(chatbot.app, name="chatbot", route_prefix="/chatbot")
    yield f"{serve_cluster.http_url}/chatbot"
    serve.delete("chatbot")


def test_chat_in_the_browser(base_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    item = helpers.qa_corpus()[6]
    outside: list[str] = []

    def local_only(route):
        if route.request.url.startswith(base_url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            page.route("**/*", local_only)
            page.goto(f"{base_url}/")
            expect(page.get_by_role("heading", name="Llama Chat Bot")).to_be_visible(timeout=30_000)
            page.evaluate(RECORD_BOT_TEXTS)

            textbox = page.get_by_test_id("textbox")
            textbox.fill(item["question"])
            textbox.press("Enter")

            expect(page.get_by_test_id("user").last).to_have_text(item["question"], timeout=30_000)
            expect(page.get_by_test_id("bot").last).to_have_text(item["answer"], timeout=30_000)
            expect(page.get_by_test_id("submit-button")).to_be_visible(timeout=30_000)  # stream ended
            seen = page.evaluate("window.botTexts")
            assert seen and seen[-1] == item["answer"]
            assert all(item["answer"].startswith(text) for text in seen), seen  # only ever a prefix

            update = os.environ.get("UPDATE_SCREENSHOT") == "1"
            page.screenshot(path=str(SCREENSHOT if update else tmp_path / "chatbot.png"))
        finally:
            browser.close()
    assert outside == [], f"the page tried to reach other hosts: {outside}"
