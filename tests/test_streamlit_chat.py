"""apps/streamlit_chat.py: with Streamlit's own test runner (AppTest), and as readers run it,
``streamlit run`` in a real browser (Debian's chromium, headless, driven by Playwright).

Both talk to the OpenAI-compatible app deployed on the session's private Ray (``/openai``).
"""

import contextlib
import os
import socket
import sys
from pathlib import Path

import pytest
import requests
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

import helpers
from apps import openai_api

# Starts Ray, a model server or a browser: not part of `make check` (see tests/conftest.py).
pytestmark = pytest.mark.ray

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
    return at.chat_message[-1].text[0].value


# An answer with Markdown's marks in it: read as Markdown, "__init__" shows as a bold "init".
MARKED = next(item for item in QA if "__init__" in item["answer"])


class BreaksOff:
    """What the model deployment's handle yields to ``openai_api.sse``: some pieces of text,
    then an exception, as when the model's replica dies in the middle of an answer."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = list(pieces)

    def __aiter__(self):
        return self

    async def __anext__(self) -> str:
        if self.pieces:
            return self.pieces.pop(0)
        raise RuntimeError("the model's replica died")

    def cancel(self) -> None:
        pass


PARTIAL = ["Serve calls ", "__init__ once ", "per replica"]


@pytest.fixture(scope="module")
def breaking_api():
    """An API that answers with openai_api's own stream, which breaks off after three pieces
    (an error event after the 200, as a replica lost mid-answer produces)."""
    api = FastAPI()

    @api.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": "breaks-off", "object": "model", "created": 0, "owned_by": "test"}]}

    @api.post("/v1/chat/completions")
    async def completions() -> StreamingResponse:
        chunks = BreaksOff(PARTIAL)
        first = await anext(chunks)
        head = {"id": "chatcmpl-test", "created": 0, "model": "breaks-off"}
        return StreamingResponse(openai_api.sse(head, first, chunks, False), media_type="text/event-stream")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with helpers.serve_locally(api, port) as url:
        yield url + "/v1"


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


def test_answers_are_shown_as_written_not_as_markdown(page):
    assert chat(page, MARKED["question"]) == MARKED["answer"]
    assert "__init__" in page.chat_message[-1].text[0].value
    assert len(page.chat_message[-1].markdown) == 0  # st.text, never st.markdown
    page.chat_input[0].set_value(QA[0]["question"]).run()  # on the next run, drawn again from the state
    assert page.chat_message[1].text[0].value == MARKED["answer"]


def test_a_stream_that_breaks_off_keeps_what_arrived(breaking_api, monkeypatch):
    """An error event after the 200 reaches the openai client as ``openai.APIError`` (neither
    a status nor a connection error): the page shows it and keeps the part of the answer."""
    import openai
    from streamlit.testing.v1 import AppTest

    with openai.OpenAI(base_url=breaking_api, api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.APIError) as caught:
            list(client.chat.completions.create(model="breaks-off", messages=[{"role": "user", "content": "hi"}],
                                                stream=True))
    assert not isinstance(caught.value, (openai.APIStatusError, openai.APIConnectionError))

    monkeypatch.setenv("SERVE_OPENAI_URL", breaking_api)
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    at.run()
    at.chat_input[0].set_value("What does Serve call?").run()
    assert not at.exception, at.exception
    assert at.chat_message[-1].text[0].value == "".join(PARTIAL)
    assert "broke off" in at.error[0].value and "generation failed" in at.error[0].value
    assert at.session_state.messages[-1]["content"] == "".join(PARTIAL)
    at.run()  # drawn again from the session state: the part and the error stay
    assert at.chat_message[-1].text[0].value == "".join(PARTIAL) and "broke off" in at.error[0].value


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
    from playwright.sync_api import expect

    with streamlit_in_chromium(api_url, tmp_path / "streamlit.log", local_only, height=1000) as page:
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
        # An answer with Markdown's marks in it is shown as the model wrote it.
        box = page.get_by_test_id("stChatInputTextArea")
        box.fill(MARKED["question"])
        box.press("Enter")
        last = page.get_by_test_id("stChatMessageContent").last
        expect(last).to_have_text(MARKED["answer"], timeout=60_000)
        assert "__init__" in last.inner_text()
        expect(last.locator("strong, em, b, i")).to_have_count(0)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_in_a_browser_a_stream_that_breaks_off_keeps_what_arrived(breaking_api, tmp_path, local_only):
    from playwright.sync_api import expect

    with streamlit_in_chromium(breaking_api, tmp_path / "streamlit.log", local_only, height=800) as page:
        expect(page.get_by_text("breaks-off").first).to_be_visible(timeout=60_000)
        box = page.get_by_test_id("stChatInputTextArea")
        box.fill("What does Serve call?")
        box.press("Enter")
        answer = page.get_by_test_id("stChatMessage").last
        expect(answer.get_by_test_id("stAlert")).to_contain_text("broke off", timeout=60_000)
        expect(answer.get_by_test_id("stText")).to_have_text("".join(PARTIAL))
        expect(answer.locator("strong, em, b, i")).to_have_count(0)  # __init__ as written
        expect(page.get_by_test_id("stException")).to_have_count(0)  # the page did not crash


@contextlib.contextmanager
def streamlit_in_chromium(api_url: str, log, local_only, height: int):
    """The page started with `streamlit run` on a free port of 127.0.0.1, opened in headless
    chromium that may reach nothing but the page; stopped afterwards, and checked to have stayed local."""
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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
                page = browser.new_page(viewport={"width": 900, "height": height})
                page.route("**/*", only_here)
                page.goto(page_url)
                yield page
            finally:
                browser.close()
    finally:
        helpers.stop_process_tree(proc)
    assert only_here.outside == [], f"the page tried to reach other hosts: {only_here.outside}"
