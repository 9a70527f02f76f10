"""apps.llm: the chat deployment, in process, through a DeploymentHandle, over HTTP and gRPC."""

import asyncio

import grpc
import pytest
import requests
from conftest import GRPC_PORT

import helpers
from apps import llm
from apps.protos import chat_pb2, chat_pb2_grpc

QA = helpers.qa_corpus()


@pytest.fixture(scope="module")
def methods():
    """What both chat deployments run, instantiated in this process (no Ray)."""
    return llm.ChatMethods()


def test_reconfigure_sets_the_default_length(methods):
    item = QA[1]
    try:
        methods.reconfigure({"max_new_tokens": 5})
        short = asyncio.run(methods.chat(item["question"]))
        assert short and item["answer"].startswith(short) and len(short) < len(item["answer"])
        assert asyncio.run(methods.chat(item["question"], max_new_tokens=96)) == item["answer"]
    finally:
        methods.reconfigure({})
    assert asyncio.run(methods.chat(item["question"])) == item["answer"]


@pytest.mark.parametrize(
    "user_config, message",
    [({"max_tokens": 5}, "unknown user_config key"), ({"max_new_tokens": 0}, "integer in 1..255"),
     ({"max_new_tokens": "5"}, "integer in 1..255"), ({"max_new_tokens": 999}, "integer in 1..255")],
)
def test_reconfigure_rejects_bad_user_config(methods, user_config, message):
    with pytest.raises(ValueError, match=message):
        methods.reconfigure(user_config)


@pytest.fixture(scope="module")
def handle(deployed):
    from ray import serve

    deployed("llm", lambda: llm.app)
    return serve.get_app_handle("llm")


def test_handle_path(handle):
    item = QA[1]
    assert handle.chat.remote(item["question"]).result(timeout_s=60) == item["answer"]


def test_handle_path_bad_prompt_raises_the_apps_error(handle):
    with pytest.raises(llm.BadPrompt, match="at least 1 character"):
        handle.chat.remote("").result(timeout_s=60)


def test_http_answers_every_topic_verbatim(handle, base_url):
    by_topic = {item["topic"]: item for item in QA}
    for item in by_topic.values():
        response = requests.post(f"{base_url}/llm", json={"prompt": item["question"]}, timeout=60)
        assert response.status_code == 200
        body = response.json()
        assert body["answer"] == item["answer"]
        assert body["model"] == "tiny-chat" and body["device"] == "cpu"


def test_http_reports_usage(handle, base_url):
    body = requests.post(f"{base_url}/llm", json={"prompt": QA[1]["question"], "max_new_tokens": 5}, timeout=60).json()
    assert (body["completion_tokens"], body["finish_reason"]) == (5, "length")
    assert body["prompt_tokens"] > 5


@pytest.mark.parametrize(
    "kwargs, status, where, message",
    [
        ({"data": b"not json", "headers": {"content-type": "application/json"}}, 422, "body", "JSON decode error"),
        ({"data": b"\xff\xfe"}, 422, "body", "valid dictionary"),  # not UTF-8: not echoed back
        ({"json": "What is Ray Serve?"}, 422, "body", "valid dictionary"),
        ({"json": [1, 2]}, 422, "body", "valid dictionary"),
        ({"json": {}}, 422, "prompt", "Field required"),
        ({"json": {"prompt": ""}}, 422, "prompt", "at least 1 character"),
        ({"json": {"prompt": 7}}, 422, "prompt", "valid string"),
        ({"json": {"prompt": "hi", "temperature": 2}}, 422, "temperature", "Extra inputs"),
        ({"json": {"prompt": "hi", "max_new_tokens": -3}}, 422, "max_new_tokens", "greater than or equal to 1"),
        ({"json": {"prompt": "   "}}, 422, None, "must not be blank"),
        ({"json": {"prompt": "word " * 300}}, 422, None, "leaves no room for an answer"),
        ({"json": {"prompt": "hi", "max_new_tokens": 300}}, 422, None, "exceeds the model's context"),
    ],
)
def test_http_bad_input_gets_4xx_and_replica_keeps_serving(handle, base_url, kwargs, status, where, message):
    response = requests.post(f"{base_url}/llm", timeout=60, **kwargs)
    assert response.status_code == status
    detail = response.json()["detail"]
    if where is None:  # the app's own check: a sentence
        assert message in detail
    else:  # the schema's: a list naming the field
        assert where in detail[0]["loc"] and message in detail[0]["msg"]
    ok = requests.post(f"{base_url}/llm", json={"prompt": QA[2]["question"]}, timeout=60)
    assert ok.status_code == 200 and ok.json()["answer"] == QA[2]["answer"]


def test_handle_streams_chunks(handle):
    async def collect():
        chunks = handle.options(stream=True).stream.remote(QA[3]["question"])
        return [chunk async for chunk in chunks]

    chunks = asyncio.run(collect())
    assert len(chunks) > 5 and "".join(chunks) == QA[3]["answer"]


def test_handle_stream_refuses_a_bad_prompt_before_any_chunk(handle):
    async def first():
        return await anext(handle.options(stream=True).stream.remote("   "))

    with pytest.raises(llm.BadPrompt, match="must not be blank"):
        asyncio.run(first())


def test_info(handle):
    info = handle.info.remote().result(timeout_s=30)
    assert {k: info[k] for k in ("model", "device", "context")} == {"model": "tiny-chat", "device": "cpu", "context": 256}


def test_grpc_chat(handle):
    item = QA[3]
    with grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}") as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        reply = stub.Chat(chat_pb2.ChatRequest(prompt=item["question"]), metadata=(("application", "llm"),), timeout=60)
        assert (reply.answer, reply.model) == (item["answer"], "tiny-chat")
        short = stub.Chat(
            chat_pb2.ChatRequest(prompt=item["question"], max_new_tokens=3),
            metadata=(("application", "llm"),), timeout=60,
        )
        assert item["answer"].startswith(short.answer) and short.answer != item["answer"]


def test_grpc_bad_prompt_is_invalid_argument(handle):
    with grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}") as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Chat(chat_pb2.ChatRequest(prompt=" "), metadata=(("application", "llm"),), timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "must not be blank" in err.value.details()
        ok = stub.Chat(chat_pb2.ChatRequest(prompt=QA[0]["question"]), metadata=(("application", "llm"),), timeout=60)
        assert ok.answer == QA[0]["answer"]
