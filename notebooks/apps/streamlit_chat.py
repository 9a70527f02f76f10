"""A Streamlit chat page over the OpenAI-compatible API of ``openai_api.py``.

    streamlit run apps/streamlit_chat.py --server.headless true \\
        --browser.gatherUsageStats false --server.address 127.0.0.1

``--server.headless true``: without it, Streamlit's first run asks for an e-mail address on
the terminal and waits. ``SERVE_OPENAI_URL`` is the API's base URL (default
``http://127.0.0.1:8000/v1``); ``SERVE_API_KEY`` the key, if the server wants one.

Streamlit runs this whole script again on every interaction (a message sent, a button
pressed), once per browser tab. So what must outlive a run is kept on purpose: the
conversation in ``st.session_state`` (one per tab), the API client in ``st.cache_resource``
(one for all tabs: the ``openai`` client is safe to share between threads). The answer is
drawn as it streams in, as plain text (``st.text``): the model's words are shown as it wrote
them, not read as Markdown (where ``__init__`` would turn into a bold "init"). An error in the
middle of a stream (``openai.APIError``) keeps the part of the answer that arrived.
"""

import os

import streamlit as st
from openai import APIConnectionError, APIError, APIStatusError, BadRequestError, OpenAI

BASE_URL = os.environ.get("SERVE_OPENAI_URL", "http://127.0.0.1:8000/v1")
# The openai client refuses to start without a key: "unused" when the server wants none.
API_KEY = os.environ.get("SERVE_API_KEY") or "unused"


@st.cache_resource  # one client per server for every tab and every rerun
def _client(base_url: str, api_key: str) -> OpenAI:
    return OpenAI(base_url=base_url, api_key=api_key, max_retries=1)


def client() -> OpenAI:
    return _client(BASE_URL, API_KEY)


@st.cache_data(ttl=60)  # asked once a minute, not on every rerun
def _model_name(base_url: str, api_key: str) -> str:
    return _client(base_url, api_key).models.list().data[0].id


def model_name() -> str:
    return _model_name(BASE_URL, API_KEY)


def answer_stream(history: list[dict[str, str]], prompt: str):
    """Start streaming the answer to ``prompt`` after ``history``. A small model's context holds
    only a few turns: while the server says it is too long, forget the oldest question and answer."""
    history = [{"role": m["role"], "content": m["content"]} for m in history]  # what the API takes
    while True:
        try:
            return client().chat.completions.create(
                model=model_name(), messages=[*history, {"role": "user", "content": prompt}], stream=True
            )
        except BadRequestError as exc:
            if exc.code != "context_length_exceeded" or not history:
                raise
            history = history[2:]


# __streamlit_page_begin__
st.title("Ray Serve chat")
try:
    model = model_name()
except (APIConnectionError, APIStatusError) as exc:
    st.error(f"No chat API at {BASE_URL}: {exc}")
    st.stop()
st.caption(f"{model}, served by Ray Serve at {BASE_URL}")

if "messages" not in st.session_state:  # this tab's conversation, kept across reruns
    st.session_state.messages = []

for message in st.session_state.messages:  # the page is drawn anew on every rerun
    with st.chat_message(message["role"]):
        st.text(message["content"], width="stretch")  # as written: st.markdown would read `__init__` as bold
        if message.get("error"):
            st.error(message["error"])

if prompt := st.chat_input("Ask about Ray Serve"):
    with st.chat_message("user"):
        st.text(prompt, width="stretch")
    with st.chat_message("assistant"):
        shown, answer, error = st.empty(), "", None
        try:
            for chunk in answer_stream(st.session_state.messages, prompt):
                if chunk.choices and chunk.choices[0].delta.content:
                    answer += chunk.choices[0].delta.content
                    shown.text(answer, width="stretch")  # the answer so far, redrawn as it grows
        except APIStatusError as exc:  # e.g. 400: this message alone does not fit the model
            error = exc.message
        except APIConnectionError as exc:  # no server, or the connection broke
            error = f"The chat API did not answer: {exc}"
        except APIError as exc:  # an error event in the middle of the stream (after the 200)
            error = f"The answer broke off: {exc.message}"
        if error:
            st.error(error)
        if answer:  # keep what arrived, even when the stream broke off
            turn = {"role": "assistant", "content": answer, **({"error": error} if error else {})}
            st.session_state.messages += [{"role": "user", "content": prompt}, turn]

if st.session_state.messages and st.button("New chat"):
    st.session_state.messages = []
    st.rerun()
# __streamlit_page_end__
