"""apps.openai_api under Ray Serve, called the way its users call it: the official ``openai``
client (sync and async, streaming and not), raw HTTP with hostile bodies, many at once."""

import asyncio
import json

import pytest
import requests
from openai import AsyncOpenAI, AuthenticationError, BadRequestError, NotFoundError, OpenAI

import helpers
from apps import openai_api
from apps.llm import Generator

QA = helpers.qa_corpus()
MODEL = "tiny-chat"


@pytest.fixture(scope="module")
def url(deployed):
    return deployed("openai", lambda: openai_api.app)


@pytest.fixture(scope="module")
def client(url):
    with OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def ask(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def test_models_lists_the_one_model(client, url):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).owned_by == "ray-serve"
    with pytest.raises(NotFoundError):
        client.models.retrieve("gpt-4o")


def test_answer_and_usage(client):
    item = QA[3]
    reply = client.chat.completions.create(model=MODEL, messages=ask(item["question"]))
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == item["answer"]
    assert reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_max_tokens_cuts_the_answer(client):
    reply = client.chat.completions.create(model=MODEL, messages=ask(QA[3]["question"]), max_tokens=4)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 4
    assert QA[3]["answer"].startswith(reply.choices[0].message.content)


def test_stream_grows_to_the_same_answer_with_usage_last(client):
    item = QA[5]
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=ask(item["question"]), stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3 and "".join(pieces).strip() == item["answer"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_usage_is_null_on_every_chunk_but_the_last_as_at_openai(client):
    """With include_usage, OpenAI sends "usage": null on every chunk before the last; without
    it, no usage field at all. ``to_dict()`` keeps the fields the server sent, nulls included."""
    question = ask(QA[5]["question"])
    chunks = [c.to_dict() for c in client.chat.completions.create(
        model=MODEL, messages=question, stream=True, stream_options={"include_usage": True})]
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1]), chunks[:2]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    plain = [c.to_dict() for c in client.chat.completions.create(model=MODEL, messages=question, stream=True)]
    assert not any("usage" in c for c in plain)


def test_stream_options_without_stream_is_400_as_at_openai(client):
    for stream in ({}, {"stream": False}):
        with pytest.raises(BadRequestError) as caught:
            client.chat.completions.create(model=MODEL, messages=ask("hi"), stream_options={"include_usage": True},
                                           **stream)
        assert caught.value.param == "stream_options", caught.value.body


def test_max_completion_tokens_replaces_the_deprecated_max_tokens(client):
    question = ask(QA[3]["question"])
    reply = client.chat.completions.create(model=MODEL, messages=question, max_completion_tokens=4)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 4
    both = client.chat.completions.create(model=MODEL, messages=question, max_completion_tokens=3, max_tokens=9)
    assert both.usage.completion_tokens == 3  # max_completion_tokens wins


def test_raw_stream_is_server_sent_events_ending_with_done(url):
    body = {"model": MODEL, "messages": ask(QA[1]["question"]), "stream": True}
    with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines(decode_unicode=True) if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content", "") for line in lines[:-1])
    assert text.strip() == QA[1]["answer"]


def test_a_conversation_and_text_parts(client):
    first, second = QA[0], QA[2]
    messages = [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": first["question"]}]},
        {"role": "assistant", "content": first["answer"]},
        {"role": "user", "content": second["question"]},
    ]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
    assert reply.choices[0].message.content
    assert reply.usage.prompt_tokens > 40  # the whole conversation was read


def test_sixteen_async_clients_at_once(url):
    async def main() -> list[tuple[str, str]]:
        async with AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120) as client:

            async def one(item: dict, stream: bool) -> tuple[str, str]:
                if stream:
                    chunks = await client.chat.completions.create(model=MODEL, messages=ask(item["question"]), stream=True)
                    text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
                else:
                    reply = await client.chat.completions.create(model=MODEL, messages=ask(item["question"]))
                    text = reply.choices[0].message.content
                return text.strip(), item["answer"]

            return await asyncio.gather(*(one(QA[n % len(QA)], n % 2 == 0) for n in range(16)))

    results = asyncio.run(main())
    assert [got for got, _ in results] == [want for _, want in results]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"model": MODEL, "messages": [{"role": "user", "content": 42}]}, "messages.0.content.str"),
        ({"model": MODEL, "messages": ask("hi"), "temperature": 3}, "temperature"),
        ({"model": MODEL, "messages": ask("hi"), "temperature": "hot"}, "temperature"),
        ({"model": MODEL, "messages": ask("hi"), "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "messages": ask("hi"), "n": 2}, "n"),
        ({"model": MODEL, "messages": ask("hi"), "top_p": 0.5}, "top_p"),
        ({"model": MODEL, "messages": ask("hi"), "tools": []}, "tools"),
        ({"model": MODEL, "messages": ask("hi"), "stream": "yes"}, "stream"),
    ],
)
def test_bad_body_is_400_in_openais_shape(url, body, param):
    r = requests.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert error["message"].startswith(param)


@pytest.mark.parametrize(
    "data, content_type",
    [
        (b"not json", "application/json"),
        (b"\xff\xfe\x00", "application/json"),
        (b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "\\ud800"}]}', "application/json"),
        (b"[1, 2]", "application/json"),
        (b"model=tiny-chat", "application/x-www-form-urlencoded"),
    ],
)
def test_hostile_bytes_are_400_never_500(url, data, content_type):
    r = requests.post(f"{url}/v1/chat/completions", data=data, headers={"content-type": content_type}, timeout=30)
    assert r.status_code == 400, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_what_the_model_cannot_take_is_400_before_any_stream(client):
    too_long = "Serve " * 1000  # fits the schema, not the 256-token context of tiny-chat
    for stream in (False, True):
        with pytest.raises(BadRequestError) as caught:
            client.chat.completions.create(model=MODEL, messages=ask(too_long), stream=stream)
        assert caught.value.code == "context_length_exceeded", caught.value.body
    with pytest.raises(BadRequestError, match="last message must come from the user"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "assistant", "content": "hi"}])
    with pytest.raises(BadRequestError, match="must not be blank"):
        client.chat.completions.create(model=MODEL, messages=ask("   "))
    # and it keeps answering
    assert client.chat.completions.create(model=MODEL, messages=ask(QA[0]["question"])).choices[0].message.content


def test_another_models_name_and_unknown_paths_are_404(client, url):
    with pytest.raises(NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=ask("hi"))
    assert caught.value.code == "model_not_found"
    r = requests.get(f"{url}/v1/embeddings", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    r = requests.get(f"{url}/v1/chat/completions", timeout=30)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


@pytest.fixture(scope="module")
def keyed_url(deployed):
    return deployed("openai-key", lambda: openai_api.OpenAIServer.bind(Generator.bind(), api_key="s3cret-key"))


def test_with_a_key_only_its_bearer_gets_in(keyed_url):
    for key in ("wrong", "s3cret-ke", "s3cret-key2"):
        with OpenAI(base_url=f"{keyed_url}/v1", api_key=key, max_retries=0) as client, pytest.raises(AuthenticationError):
            client.models.list()
    assert requests.get(f"{keyed_url}/v1/models", timeout=30).status_code == 401
    r = requests.post(f"{keyed_url}/v1/chat/completions", json={"model": MODEL, "messages": ask("hi")},
                      headers={"Authorization": "Basic s3cret-key"}, timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    with OpenAI(base_url=f"{keyed_url}/v1", api_key="s3cret-key", max_retries=0, timeout=120) as client:
        reply = client.chat.completions.create(model=MODEL, messages=ask(QA[4]["question"]))
    assert reply.choices[0].message.content == QA[4]["answer"]


def test_with_a_key_the_api_description_stays_open_and_holds_no_key(keyed_url):
    """FastAPI's /docs and /openapi.json are not behind the key: they describe the API only."""
    for path in ("/docs", "/openapi.json"):
        r = requests.get(f"{keyed_url}{path}", timeout=30)
        assert r.status_code == 200 and "s3cret-key" not in r.text
    assert "/v1/chat/completions" in requests.get(f"{keyed_url}/openapi.json", timeout=30).json()["paths"]


def test_a_bound_key_is_not_in_the_dashboard_but_is_kept_in_the_gcs(keyed_url, serve_cluster):
    """What notebook 08 says: a bind argument is not in the dashboard's Serve API, and it is in
    the controller's checkpoint in the GCS (pickled, readable by anyone who can connect)."""
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_list

    assert "s3cret-key" not in json.dumps(helpers.serve_details(serve_cluster.dashboard_url))
    stored = [_internal_kv_get(k, namespace=b"serve") or b"" for k in _internal_kv_list(b"", namespace=b"serve")]
    assert any(b"s3cret-key" in value for value in stored)
