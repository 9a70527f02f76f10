"""apps.chatbot in a real browser: Debian's chromium, headless, driven by Playwright.

The page is served by Ray Serve (the session's private Ray, the app at ``/chatbot``: one UI
replica, two model replicas), four pages chat at the same time, and every request that leaves
that server is blocked and recorded: the chat page must work offline. The screenshot goes to
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
QA = helpers.qa_corpus()

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
def base_url(deployed):
    return deployed("chatbot", lambda: chatbot.app)


def test_four_pages_chat_at_once(base_url, tmp_path, local_only):
    """Four browser pages (four Gradio sessions) each ask two questions, all at the same time."""
    from playwright.sync_api import expect, sync_playwright

    pages_questions = [QA[6 + 2 * n : 8 + 2 * n] for n in range(4)]
    only_here = local_only(base_url)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            pages = []
            for _ in pages_questions:
                context = browser.new_context(viewport={"width": 1000, "height": 760})  # its own session
                page = context.new_page()
                page.route("**/*", only_here)
                page.goto(f"{base_url}/")
                expect(page.get_by_role("heading", name="Ray Serve chatbot")).to_be_visible(timeout=30_000)
                page.evaluate(RECORD_BOT_TEXTS)
                pages.append(page)

            for turn in range(2):
                for page, items in zip(pages, pages_questions):  # send on every page first ...
                    textbox = page.get_by_test_id("textbox")
                    textbox.fill(items[turn]["question"])
                    textbox.press("Enter")
                for page, items in zip(pages, pages_questions):  # ... then wait for the answers
                    expect(page.get_by_test_id("bot")).to_have_count(turn + 1, timeout=60_000)
                    expect(page.get_by_test_id("bot").last).to_have_text(items[turn]["answer"], timeout=60_000)
                    expect(page.get_by_test_id("submit-button")).to_be_visible(timeout=30_000)  # stream ended

            for page, items in zip(pages, pages_questions):
                expect(page.get_by_test_id("user")).to_have_text([item["question"] for item in items])
                expect(page.get_by_test_id("bot")).to_have_text([item["answer"] for item in items])
                seen = page.evaluate("window.botTexts")
                answers = [item["answer"] for item in items]
                # the answer grew on the page: every text shown was a beginning of an answer
                assert seen[-1] == answers[-1] and len(seen) > 4, seen
                assert all(any(answer.startswith(text) for answer in answers) for text in seen), seen

            update = os.environ.get("UPDATE_SCREENSHOT") == "1"
            pages[0].screenshot(path=str(SCREENSHOT if update else tmp_path / "chatbot.png"))
        finally:
            browser.close()
    assert only_here.outside == [], f"the page tried to reach other hosts: {only_here.outside}"


def test_answers_are_shown_as_written_not_as_markdown(base_url, local_only):
    """An answer with ``__init__`` in it shows ``__init__``, not a bold "init"."""
    from playwright.sync_api import expect, sync_playwright

    item = next(item for item in QA if "__init__" in item["answer"])
    only_here = local_only(base_url)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            page.route("**/*", only_here)
            page.goto(f"{base_url}/")
            expect(page.get_by_role("heading", name="Ray Serve chatbot")).to_be_visible(timeout=30_000)
            textbox = page.get_by_test_id("textbox")
            textbox.fill(item["question"])
            textbox.press("Enter")
            bot = page.get_by_test_id("bot").last
            expect(bot).to_have_text(item["answer"], timeout=60_000)
            assert "__init__" in bot.inner_text()
            expect(bot.locator("strong, em, b, i")).to_have_count(0)
        finally:
            browser.close()
    assert only_here.outside == [], f"the page tried to reach other hosts: {only_here.outside}"
