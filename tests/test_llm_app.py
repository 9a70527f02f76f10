"""apps.llm: the chat deployment, in process, through a DeploymentHandle and over HTTP."""

import grpc
import pytest
import requests
from conftest import GRPC_PORT

import helpers
from apps import llm
from apps.protos import chat_pb2, chat_pb2_grpc

QA = helpers.qa_corpus()


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b'"What is Ray Serve?"', ("What is Ray Serve?", None)),
        (b'{"prompt": "hi"}', ("hi", None)),
        (b'{"prompt": "hi", "max_new_tokens": 8}', ("hi", 8)),
    ],
)
def test_parse_body_accepts(raw, expected):
    assert llm.parse_body(raw) == expected


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"not json", "body must be JSON"),
        (b"\xff\xfe", "body must be JSON"),
        (b"[1, 2]", "not an array"),
        (b"42", "not a number"),
        (b"null", "not null"),
        (b"{}", "missing field 'prompt'"),
        (b'{"prompt": "x", "temperature": 2}', "unknown field(s): temperature"),
    ],
)
def test_parse_body_rejects_with_400(raw, message):
    with pytest.raises(llm.BadPrompt, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        llm.parse_body(raw)
    assert err.value.status == 400


@pytest.fixture(scope="module")
def model():
    """The deployment's class, instantiated in this process (no Ray)."""
    return llm.LLM.func_or_class()


def test_in_process_answers_verbatim(model):
    for item in QA[:5]:
        assert model.chat(item["question"]) == item["answer"]


@pytest.mark.parametrize(
    "prompt, kwargs, message",
    [
        ("", {}, "non-empty string"),
        ("   ", {}, "non-empty string"),
        (5, {}, "non-empty string"),
        ("hi", {"max_new_tokens": 0}, "positive integer"),
        ("hi", {"max_new_tokens": True}, "positive integer"),
        ("word " * 300, {}, "exceeds the model's context of 256 tokens"),
        ("x" * 9000, {}, "the limit is 8000"),
    ],
)
def test_in_process_bad_prompts_are_422(model, prompt, kwargs, message):
    with pytest.raises(llm.BadPrompt, match=message) as err:
        model.chat(prompt, **kwargs)
    assert err.value.status == 422


def test_reconfigure_sets_the_default_length(model):
    item = QA[1]
    try:
        model.reconfigure({"max_new_tokens": 5})
        short = model.chat(item["question"])
        assert short and item["answer"].startswith(short) and len(short) < len(item["answer"])
        assert model.chat(item["question"], max_new_tokens=96) == item["answer"]
    finally:
        model.reconfigure({})
    assert model.chat(item["question"]) == item["answer"]


@pytest.mark.parametrize(
    "user_config, message",
    [({"max_tokens": 5}, "unknown user_config key"), ({"max_new_tokens": 0}, "integer in 1..255"),
     ({"max_new_tokens": "5"}, "integer in 1..255"), ({"max_new_tokens": 999}, "integer in 1..255")],
)
def test_reconfigure_rejects_bad_user_config(model, user_config, message):
    with pytest.raises(ValueError, match=message):
        model.reconfigure(user_config)


@pytest.fixture(scope="module")
def handle(serve_cluster):
    from ray import serve

    yield serve.run(llm.app, name="llm", route_prefix="/llm")
    serve.delete("llm")


def test_handle_path(handle):
    item = QA[1]
    assert handle.chat.remote(item["question"]).result(timeout_s=60) == item["answer"]


def test_handle_path_bad_prompt_raises_the_apps_error(handle):
    with pytest.raises(llm.BadPrompt, match="non-empty"):
        handle.chat.remote("").result(timeout_s=60)


def test_http_answers_every_topic_verbatim(handle, base_url):
    by_topic = {item["topic"]: item for item in QA}
    for item in by_topic.values():
        response = requests.post(f"{base_url}/llm", json={"prompt": item["question"]}, timeout=60)
        assert response.status_code == 200
        body = response.json()
        assert body["answer"] == item["answer"]
        assert body["model"] == "tiny-chat" and body["device"] == "cpu"


def test_http_accepts_the_chapters_bare_string_body(handle, base_url):
    item = QA[0]
    response = requests.post(f"{base_url}/llm", json=item["question"], timeout=60)
    assert response.json()["answer"] == item["answer"]


@pytest.mark.parametrize(
    "kwargs, status, message",
    [
        ({"data": b"not json"}, 400, "body must be JSON"),
        ({"json": [1, 2]}, 400, "not an array"),
        ({"json": {}}, 400, "missing field 'prompt'"),
        ({"json": {"prompt": ""}}, 422, "non-empty string"),
        ({"json": {"prompt": 7}}, 422, "non-empty string"),
        ({"json": {"prompt": "word " * 300}}, 422, "exceeds the model's context"),
        ({"json": {"prompt": "hi", "max_new_tokens": -3}}, 422, "positive integer"),
    ],
)
def test_http_bad_input_gets_4xx_and_replica_keeps_serving(handle, base_url, kwargs, status, message):
    response = requests.post(f"{base_url}/llm", timeout=60, **kwargs)
    assert response.status_code == status
    assert message in response.json()["error"]
    ok = requests.post(f"{base_url}/llm", json=QA[2]["question"], timeout=60)
    assert ok.status_code == 200 and ok.json()["answer"] == QA[2]["answer"]


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
        assert "non-empty" in err.value.details()
        ok = stub.Chat(chat_pb2.ChatRequest(prompt=QA[0]["question"]), metadata=(("application", "llm"),), timeout=60)
        assert ok.answer == QA[0]["answer"]
