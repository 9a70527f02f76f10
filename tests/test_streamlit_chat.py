"""apps/streamlit_chat.py: with Streamlit's own test runner (AppTest), and as readers run it,
``streamlit run`` in a real browser (Debian's chromium, headless, driven by Playwright).

Both talk to the OpenAI-compatible app deployed on the session's private Ray (``/openai``).
"""

import os
import socket
import sys
from pathlib import Path

import pytest
import requests

import helpers
from apps import openai_api

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "notebooks" / "apps" / "streamlit_chat.py"
STREAMLIT = str(Path(sys.executable).with_name("streamlit"))
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "assets" / "streamlit_chat.png"
QA = helpers.qa_corpus()


@pytest.fixture(scope="module")
def api_url(deployed):
    return deployed("openai", lambda: openai_api.app) + "/v1"


@pytest.fixture
def page(api_url, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SERVE_OPENAI_URL", api_url)
    at = AppTest.from_file(str(PAGE), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def chat(at, question: str) -> str:
    at.chat_input[0].set_value(question).run()
    assert not at.exception and not at.error, (at.exception, at.error)
    return at.chat_message[-1].markdown[0].value


def test_the_page_names_the_model(page):
    assert page.title[0].value == "Ray Serve chat"
    assert "tiny-chat" in page.caption[0].value


def test_a_conversation_is_kept_in_session_state(page):
    for n, item in enumerate(QA[:2]):
        assert chat(page, item["question"]) == item["answer"]
        assert len(page.session_state.messages) == 2 * (n + 1)
    assert [m.name for m in page.chat_message] == ["user", "assistant", "user", "assistant"]
    page.button[0].click().run()  # "New chat"
    assert page.session_state.messages == [] and len(page.chat_message) == 0


def test_a_long_chat_forgets_its_oldest_turns_instead_of_failing(page):
    """tiny-chat reads 256 tokens: after a few turns the whole history no longer fits."""
    for item in QA[:6]:
        assert chat(page, item["question"]) == item["answer"]
    assert len(page.session_state.messages) == 12  # the page keeps it all; the request does not


def test_without_a_server_the_page_says_so(monkeypatch):
    from streamlit.testing.v1 import AppTest

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SERVE_OPENAI_URL", f"http://127.0.0.1:{port}/v1")
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    at.run()
    assert not at.exception and "No chat API at" in at.error[0].value


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_in_a_browser_the_answer_grows(api_url, tmp_path, local_only):
    from playwright.sync_api import expect, sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "streamlit.log"
    proc = helpers.start_background(
        [STREAMLIT, "run", str(PAGE), "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.address", "127.0.0.1", "--server.port", str(port)],
        log, env={"SERVE_OPENAI_URL": api_url},
    )
    page_url = f"http://127.0.0.1:{port}"
    only_here = local_only(page_url)

    try:
        helpers.wait_until(lambda: requests.get(f"{page_url}/_stcore/health", timeout=2).ok, 60, "streamlit to start")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update"])
            try:
                page = browser.new_page(viewport={"width": 900, "height": 1000})
                page.route("**/*", only_here)
                page.goto(page_url)
                expect(page.get_by_text("Ray Serve chat").first).to_be_visible(timeout=60_000)
                # tiny-chat writes a whole answer in a fraction of a second, faster than the page
                # draws: slow the page's connection down (4 kB/s, now that it is loaded), as a
                # slower model would, so that each step of the stream gets drawn.
                cdp = page.context.new_cdp_session(page)
                cdp.send("Network.enable")
                cdp.send("Network.emulateNetworkConditions",
                         {"offline": False, "latency": 0, "downloadThroughput": 4000, "uploadThroughput": -1})
                # every text the last chat message shows, to see the answer grow
                page.evaluate("""() => { window.seen = []; new MutationObserver(() => {
                    const m = document.querySelectorAll('[data-testid="stChatMessageContent"]');
                    const t = m.length ? m[m.length - 1].innerText.trim() : "";
                    if (t && t !== window.seen.at(-1)) window.seen.push(t);
                  }).observe(document.body, {subtree: true, childList: true, characterData: true}); }""")
                for item in QA[6:9]:
                    box = page.get_by_test_id("stChatInputTextArea")
                    box.fill(item["question"])
                    box.press("Enter")
                    expect(page.get_by_test_id("stChatMessageContent").last).to_have_text(item["answer"], timeout=60_000)
                    page.evaluate("() => { window.answers = (window.answers || []).concat([window.seen]); window.seen = []; }")
                messages = page.get_by_test_id("stChatMessageContent")
                expect(messages).to_have_count(6)
                # The page showed each answer growing: parts of it first, then all of it. Most
                # answers are drawn in several steps; one may come in one or two.
                steps = []
                for grown, item in zip(page.evaluate("window.answers"), QA[6:9]):
                    growing = [t for t in grown if item["answer"].startswith(t)]
                    assert growing[-1] == item["answer"], grown
                    steps.append(len(growing))
                assert sorted(steps)[1] >= 3, steps
                page.evaluate("document.fonts.ready")  # the avatars' icon font
                update = os.environ.get("UPDATE_SCREENSHOT") == "1"
                page.screenshot(path=str(SCREENSHOT if update else tmp_path / "streamlit_chat.png"))
            finally:
                browser.close()
    finally:
        helpers.stop_process_tree(proc)
    assert only_here.outside == [], f"the page tried to reach other hosts: {only_here.outside}"
