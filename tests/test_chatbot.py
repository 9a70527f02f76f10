"""apps.chatbot without Ray: the UI's web app serving the chat core directly.

``build_app`` is given ``ChatModel.astream`` where the replica gives it the model
deployment's streaming handle; the app is served by plain uvicorn in a background thread on
127.0.0.1 (a port in 7860-7899). Ray and Serve are never started here (see
test_chatbot_serve.py for the deployed application).
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import asyncio
import socket

import httpx
import pytest
import requests
import torch

import helpers
from apps import chatbot
from apps.chat_core import ChatModel

torch.set_num_threads(1)  # the model is tiny: more threads only add contention
QA = helpers.qa_corpus()

pytestmark = [
    # Gradio 6's queue uses pandas options that pandas 3 deprecates: Gradio's business.
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),
]


def free_port() -> int:
    for port in range(7860, 7900):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port in 7860-7899")


@pytest.fixture(scope="module")
def model():
    return ChatModel()


def build(model, **kwargs):
    return chatbot.build_app(model.astream, {"model": model.name, "device": model.device}, **kwargs)


@pytest.fixture(scope="module")
def base_url(model):
    with helpers.serve_locally(build(model), free_port()) as url:
        yield url


# -- the conversation the UI sends ----------------------------------------------------------------


def test_conversation_keeps_the_earlier_turns_in_order():
    history = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": [{"type": "text", "text": "an "}, {"type": "text", "text": "answer"}]},
        {"role": "assistant", "content": {"path": "image.png"}},  # a file: no text, left out
    ]
    assert chatbot.conversation("second", history, include_history=True) == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "second"},
    ]
    assert chatbot.conversation("second", history, include_history=False) == [{"role": "user", "content": "second"}]


# -- POST /generate -------------------------------------------------------------------------


def post_streaming(url, body):
    with requests.post(f"{url}/generate", json=body, stream=True, timeout=60) as response:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        return list(response.iter_content(chunk_size=None, decode_unicode=True))


def test_generate_streams_the_answer_in_chunks(base_url):
    item = QA[3]
    chunks = post_streaming(base_url, {"message": item["question"]})
    assert len(chunks) > 5
    assert "".join(chunks) == item["answer"]


def test_generate_can_sample(base_url):
    chunks = post_streaming(base_url, {"message": QA[0]["question"], "temperature": 0.9, "max_new_tokens": 8})
    assert len("".join(chunks).split()) <= 8


@pytest.mark.parametrize(
    "kwargs, where, error",
    [
        ({"json": {}}, "message", "Field required"),
        ({"json": {"message": ""}}, "message", "at least 1 character"),
        ({"json": {"message": 5}}, "message", "valid string"),
        ({"json": {"message": "x" * 9000}}, "message", "at most 8000 characters"),
        ({"json": {"message": "hi", "greedy": True}}, "greedy", "Extra inputs"),
        ({"json": {"message": "hi", "temperature": 3}}, "temperature", "less than or equal to 2"),
        ({"json": {"message": "hi", "max_new_tokens": 0}}, "max_new_tokens", "greater than or equal to 1"),
        ({"json": "What is Ray Serve?"}, "body", "valid dictionary"),
        ({"data": b"not json", "headers": {"content-type": "application/json"}}, 0, "JSON decode error"),
    ],
)
def test_generate_bad_body_is_422(base_url, kwargs, where, error):
    response = requests.post(f"{base_url}/generate", timeout=60, **kwargs)
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["loc"][-1] == where and error in detail["msg"]


@pytest.mark.parametrize(
    "body, error",
    [({"message": "word " * 300}, "context of 256 tokens"), ({"message": "  "}, "must not be blank"),
     ({"message": "hi", "max_new_tokens": 300}, "exceeds the model's context")],
)
def test_generate_checks_the_prompt_before_streaming(base_url, body, error):
    response = requests.post(f"{base_url}/generate", json=body, timeout=60)
    assert response.status_code == 422
    assert error in response.json()["detail"]
    item = QA[5]
    assert "".join(post_streaming(base_url, {"message": item["question"]})) == item["answer"]


# -- the Gradio UI's API -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gradio_client(base_url):
    from gradio_client import Client

    client = Client(f"{base_url}/", verbose=False, analytics_enabled=False, download_files=False)
    yield client
    client.close()  # ends its heartbeat stream, which would hold up the server's shutdown


def test_ui_page_is_served(base_url):
    response = requests.get(f"{base_url}/", timeout=30)
    assert response.status_code == 200 and "Ray Serve chatbot" in response.text


def test_chat_endpoint_is_named_chat(gradio_client):
    assert list(gradio_client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == ["/chat"]


def test_chat_endpoint_streams_the_growing_answer(gradio_client):
    item = QA[4]
    job = gradio_client.submit(item["question"], api_name="/chat")
    assert job.result(timeout=60) == item["answer"]
    outputs = [text for text in job.outputs() if text]
    assert len(outputs) > 5 and outputs[-1] == item["answer"]
    assert all(later.startswith(earlier) and later != earlier for earlier, later in zip(outputs, outputs[1:]))


@pytest.mark.parametrize("message, error", [("  ", "must not be blank"), ("word " * 300, "leaves no room")])
def test_chat_endpoint_shows_bad_input_as_the_reply(gradio_client, message, error):
    reply = gradio_client.submit(message, api_name="/chat").result(timeout=60)
    assert reply.startswith("Error: ") and error in reply


# -- under a route prefix -------------------------------------------------------------------


async def get_under_prefix(asgi_app, prefix):
    """Requests as Serve's proxy sends them for route_prefix=prefix (root_path set, full path)."""
    transport = httpx.ASGITransport(app=asgi_app, root_path=prefix)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
        page = await client.get(f"{prefix}/")
        config = await client.get(f"{prefix}/config")
        answer = await client.post(f"{prefix}/generate", json={"message": QA[0]["question"]})
    return page, config, answer


def test_app_works_under_a_route_prefix(model):
    page, config, answer = asyncio.run(get_under_prefix(build(model), "/chatbot"))
    assert page.status_code == 200
    assert config.json()["root"] == "http://127.0.0.1:8000/chatbot"
    assert answer.text == QA[0]["answer"]


# -- why not ray.serve.gradio_integrations.GradioIngress -----------------------------------


def echo_ui():
    import gradio as gr

    async def echo(message, history):
        yield message

    return gr.ChatInterface(echo, api_name="chat", analytics_enabled=False)


async def first_page(wrapper, blocks):
    """Start the wrapped app as a replica does, GET /; (status, whether Gradio's queue runs)."""
    await wrapper._run_asgi_lifespan_startup()
    try:
        transport = httpx.ASGITransport(app=wrapper.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
            return (await client.get("/")).status_code, blocks().is_running
    finally:
        await wrapper._serve_asgi_lifespan.shutdown()


# GradioIngress's wrapper has an async __del__ that Serve awaits at shutdown; the one made here
# is simply garbage-collected, and Python warns that it was not awaited.
@pytest.mark.filterwarnings("ignore:coroutine .*__del__. was never awaited:RuntimeWarning")
def test_rays_gradio_ingress_is_broken_on_gradio_6():
    """GradioIngress builds the app with gradio's App.create_app alone: no theme, no queue.

    If this fails, a newer Ray fixed GradioIngress: the notebook's explanation needs updating.
    """
    from ray.serve.gradio_integrations import GradioIngress

    wrapper = GradioIngress(echo_ui)
    status, queue_started = asyncio.run(first_page(wrapper, wrapper.app.get_blocks))
    assert (status, queue_started) == (500, False)


@pytest.mark.parametrize("include_history", [True, False])
def test_the_page_sends_the_conversation_when_asked(model, include_history):
    """ChatUI.bind(model, include_history=...): what the model deployment receives."""
    from gradio_client import Client

    seen = []

    def spy(prompt, **options):
        seen.append(prompt)
        return model.astream(prompt, **options)

    app = chatbot.build_app(spy, {"model": model.name, "device": model.device}, include_history=include_history)
    with helpers.serve_locally(app, free_port()) as url:
        client = Client(f"{url}/", verbose=False, analytics_enabled=False)
        try:
            answers = [client.predict(item["question"], api_name="/chat") for item in QA[:2]]
        finally:
            client.close()
    assert answers == [QA[0]["answer"], QA[1]["answer"]]
    second = [{"role": "user", "content": QA[1]["question"]}]
    if include_history:
        second = [{"role": "user", "content": QA[0]["question"]}, {"role": "assistant", "content": QA[0]["answer"]}, *second]
    assert seen == [[{"role": "user", "content": QA[0]["question"]}], second]
