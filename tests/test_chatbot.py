"""apps.chatbot without Ray: the streaming engine, POST /generate, the Gradio chat endpoint.

The web app is served by plain uvicorn in a background thread on 127.0.0.1 (a port in
7860-7899), exactly as the replica builds it; Ray and Serve are never started here.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import asyncio
import socket
import threading

import httpx
import pytest
import requests
import torch
from starlette.routing import Mount
from transformers import StoppingCriteriaList

import helpers
from apps import chatbot

torch.set_num_threads(1)  # the model is tiny: more threads only add contention
QA = helpers.qa_corpus()

pytestmark = [
    # Serve's ingress wrappers have an async __del__ that Serve awaits at shutdown; replicas
    # made here are simply garbage-collected, and Python warns that it was not awaited.
    pytest.mark.filterwarnings("ignore:coroutine .*__del__. was never awaited:RuntimeWarning"),
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
def engine():
    return chatbot.ChatEngine()


@pytest.fixture(scope="module")
def base_url(engine):
    with chatbot.serve_locally(chatbot.build_api(engine), free_port()) as url:
        yield url


# -- the engine ---------------------------------------------------------------------------


@pytest.mark.parametrize("item", QA[:3], ids=lambda item: item["id"])
def test_engine_streams_the_corpus_answer_in_chunks(engine, item):
    chunks = list(engine.stream(item["question"]))
    assert len(chunks) > 5 and all(chunks)
    assert "".join(chunks) == item["answer"]


def test_engine_sends_only_the_last_message_by_default(engine):
    history = [{"role": "user", "content": QA[0]["question"]}, {"role": "assistant", "content": QA[0]["answer"]}]
    assert engine.answer(QA[1]["question"], history=history) == QA[1]["answer"]
    # tiny-chat never saw a conversation: with the history it goes astray.
    assert engine.answer(QA[1]["question"], history=history, include_history=True) != QA[1]["answer"]


@pytest.mark.parametrize(
    "message, kwargs, error",
    [
        ("", {}, "non-empty string"),
        ("  \n ", {}, "non-empty string"),
        (None, {}, "non-empty string"),
        ("x" * 9000, {}, "the limit is 8000"),
        ("word " * 300, {}, "context of 256 tokens leaves no room"),
        ("hi", {"max_new_tokens": 0}, "positive integer"),
    ],
)
def test_engine_refuses_bad_input_before_generating(engine, message, kwargs, error):
    with pytest.raises(chatbot.BadPrompt, match=error) as err:
        engine.stream(message, **kwargs)
    assert err.value.status == 422


def test_max_new_tokens_is_capped_to_the_context(engine):
    inputs, budget = engine.prepare(QA[0]["question"])
    assert budget == engine.max_context - inputs["input_ids"].shape[1] < chatbot.MAX_NEW_TOKENS
    assert engine.prepare(QA[0]["question"], max_new_tokens=4)[1] == 4
    start = "".join(engine.stream(QA[0]["question"], max_new_tokens=4))
    assert start and QA[0]["answer"].startswith(start) and len(start.split()) <= 4


def test_a_set_stop_event_ends_generation_after_one_token(engine):
    inputs, _ = engine.prepare(QA[0]["question"])
    event = threading.Event()
    event.set()
    out = engine.model.generate(
        **inputs,
        max_new_tokens=50,
        do_sample=False,
        pad_token_id=engine.tokenizer.pad_token_id,
        stopping_criteria=StoppingCriteriaList([chatbot._StopWhenSet(event)]),
    )
    assert out.shape[1] == inputs["input_ids"].shape[1] + 1


def test_closing_the_async_chunks_cancels_the_generation(engine):
    async def first_chunk_then_close(stream):
        parts = chatbot.chunks(stream)
        first = await anext(parts)
        await parts.aclose()
        return first

    stream = engine.stream(QA[0]["question"])
    assert asyncio.run(first_chunk_then_close(stream)) == "Ray "
    assert stream._stop.is_set()


def test_a_failing_generation_raises_instead_of_hanging(engine, monkeypatch):
    def boom(**kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine.model, "generate", boom)
    with pytest.raises(RuntimeError, match="generation failed.*device lost"):
        list(engine.stream(QA[0]["question"]))


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
    chunks = post_streaming(base_url, {"message": QA[0]["question"], "greedy": False, "max_new_tokens": 8})
    assert chunks and len("".join(chunks).split()) <= 8


@pytest.mark.parametrize(
    "kwargs, where, error",
    [
        ({"json": {}}, "message", "Field required"),
        ({"json": {"message": ""}}, "message", "non-empty string"),
        ({"json": {"message": "   "}}, "message", "non-empty string"),
        ({"json": {"message": 5}}, "message", "valid string"),
        ({"json": {"message": "x" * 9000}}, "message", "at most 8000 characters"),
        ({"json": {"message": "hi", "temperature": 2}}, "temperature", "Extra inputs"),
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


def test_generate_too_many_tokens_is_422_before_streaming(base_url):
    response = requests.post(f"{base_url}/generate", json={"message": "word " * 300}, timeout=60)
    assert response.status_code == 422
    assert "context of 256 tokens" in response.json()["detail"]


# -- the Gradio UI's API -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gradio_client(base_url):
    from gradio_client import Client

    client = Client(f"{base_url}/", verbose=False, analytics_enabled=False, download_files=False)
    yield client
    client.close()  # ends its heartbeat stream, which would hold up the server's shutdown


def test_ui_page_is_served(base_url):
    response = requests.get(f"{base_url}/", timeout=30)
    assert response.status_code == 200 and "Llama Chat Bot" in response.text


def test_chat_endpoint_is_named_chat(gradio_client):
    assert list(gradio_client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == ["/chat"]


def test_chat_endpoint_streams_the_growing_answer(gradio_client):
    item = QA[4]
    job = gradio_client.submit(item["question"], api_name="/chat")
    assert job.result(timeout=60) == item["answer"]
    outputs = [text for text in job.outputs() if text]
    assert len(outputs) > 5 and outputs[-1] == item["answer"]
    assert all(later.startswith(earlier) and later != earlier for earlier, later in zip(outputs, outputs[1:]))


@pytest.mark.parametrize("message, error", [("", "non-empty string"), ("word " * 300, "leaves no room")])
def test_chat_endpoint_shows_bad_input_as_the_reply(gradio_client, message, error):
    reply = gradio_client.submit(message, api_name="/chat").result(timeout=60)
    assert reply.startswith("Error: ") and error in reply


# -- the replica, built as Serve builds it ----------------------------------------------------


@pytest.fixture(scope="module")
def replica_url():
    """GradioBot's replica object, made the way Serve makes it, served by uvicorn.

    Serve awaits the (async) wrapper ``__init__``, then calls ``__serve_build_asgi_app__``
    and hands the app to the wrapper, whose ``__call__`` forwards ASGI messages to it.
    """
    cls = chatbot.GradioBot.func_or_class
    replica = cls.__new__(cls)
    asyncio.run(replica.__init__())
    replica._set_asgi_app(replica.__serve_build_asgi_app__())
    with chatbot.serve_locally(replica, free_port()) as url:
        yield url


def test_replica_keeps_serving_after_bad_input(replica_url):
    for body in ({"message": ""}, {"message": "word " * 300}, {"prompt": "hi"}):
        assert requests.post(f"{replica_url}/generate", json=body, timeout=60).status_code == 422
        item = QA[5]
        assert "".join(post_streaming(replica_url, {"message": item["question"]})) == item["answer"]
    assert requests.get(f"{replica_url}/", timeout=30).status_code == 200


async def get_under_prefix(asgi_app, prefix):
    """Requests as Serve's proxy sends them for route_prefix=prefix (root_path set, full path)."""
    transport = httpx.ASGITransport(app=asgi_app, root_path=prefix)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
        page = await client.get(f"{prefix}/")
        config = await client.get(f"{prefix}/config")
        answer = await client.post(f"{prefix}/generate", json={"message": QA[0]["question"]})
    return page, config, answer


def test_app_works_under_a_route_prefix(engine):
    page, config, answer = asyncio.run(get_under_prefix(chatbot.build_api(engine), "/chatbot"))
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


def test_rays_gradio_ingress_is_broken_on_gradio_6():
    """GradioIngress builds the app with gradio's App.create_app alone: no theme, no queue.

    If this fails, a newer Ray fixed GradioIngress: the notebook's explanation needs updating.
    """
    from ray.serve.gradio_integrations import GradioIngress

    wrapper = GradioIngress(echo_ui)
    status, queue_started = asyncio.run(first_page(wrapper, wrapper.app.get_blocks))
    assert (status, queue_started) == (500, False)


def test_gradio_server_drop_in_serves_a_working_page():
    cls = chatbot.GradioServer.func_or_class
    replica = cls.__new__(cls)
    asyncio.run(replica.__init__(echo_ui))
    api = replica.__serve_build_asgi_app__()
    replica._set_asgi_app(api)
    (gradio_app,) = [route.app for route in api.routes if isinstance(route, Mount)]
    status, queue_started = asyncio.run(first_page(replica, gradio_app.get_blocks))
    assert (status, queue_started) == (200, True)
