"""apps/triton_chat.py on PyTriton, called over plain HTTP as notebook 09 calls it.

The server runs from PyTriton's own environment (``make .venv-pytriton``), and it is a copy of
the module in an empty folder, next to the three modules it needs, as a reader would use it.
Without that environment these tests are skipped, unless ``REQUIRE_PYTRITON`` is set (``make
test`` sets it), where they fail.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

import helpers
from helpers import pytriton
from helpers.models import ASSETS

QA = helpers.qa_corpus()
PORT = 8110  # not the notebook's 8100: a test run must not meet a reader's server


def _environment() -> None:
    try:
        pytriton.pytriton_python()
    except FileNotFoundError as exc:
        if os.environ.get("REQUIRE_PYTRITON"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _environment()
    folder = tmp_path_factory.mktemp("my_project")
    for name in ("triton_chat.py", "chat_core.py", "accelerator.py", "validation.py"):
        shutil.copy(pytriton.APP.parent / name, folder / name)
    started = pytriton.start_triton(
        folder / "triton.log", http_port=PORT, model=ASSETS / "tiny-chat", app=folder / "triton_chat.py"
    )
    yield started
    if started.process.poll() is None:
        started.stop()


def infer(server, model: str, prompts: list, max_new_tokens: list[int] | None = None, batched: bool = False):
    """POST /v2/models/<model>/infer (KServe v2 JSON); the answer and error of each prompt."""
    shape = [len(prompts), 1] if batched else [len(prompts)]
    inputs = [{"name": "prompt", "datatype": "BYTES", "shape": shape, "data": [json.dumps(p) for p in prompts]}]
    if max_new_tokens is not None:
        inputs.append({"name": "max_new_tokens", "datatype": "INT32", "shape": shape, "data": max_new_tokens})
    response = requests.post(f"{server.url}/v2/models/{model}/infer", json={"inputs": inputs}, timeout=60)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    return list(zip(outputs["answer"], outputs["error"]))


def stream(server, prompt, **extra) -> list[dict]:
    """POST /v2/models/chat_stream/generate_stream; the server-sent events, decoded."""
    body = {"prompt": json.dumps(prompt), **extra}
    with requests.post(f"{server.url}/v2/models/chat_stream/generate_stream", json=body, stream=True, timeout=60) as r:
        assert r.status_code == 200, r.text
        return [json.loads(line[len("data: "):]) for line in r.iter_lines(decode_unicode=True) if line.startswith("data: ")]


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)


def test_it_listens_on_loopback_only(server):
    family = [psutil.Process(server.process.pid), *psutil.Process(server.process.pid).children(recursive=True)]
    pids = {p.pid for p in family}
    listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    ports = {c.laddr.port for c in listening}
    assert {PORT, PORT + 1, PORT + 2} <= ports
    # every socket it listens on, not only those three (an IPv6 socket may hold ::ffff:127.0.0.1)
    assert all(_loopback(c.laddr.ip) for c in listening), listening


@pytest.mark.parametrize("item", QA[:3], ids=lambda item: item["id"])
def test_plain_answers_verbatim(server, item):
    assert infer(server, "chat", [item["question"]]) == [(item["answer"], "")]


def test_the_generate_endpoint_and_a_conversation(server):
    conversation = [
        {"role": "user", "content": QA[0]["question"]},
        {"role": "assistant", "content": QA[0]["answer"]},
        {"role": "user", "content": QA[1]["question"]},
    ]
    body = {"prompt": json.dumps(conversation)}
    answer = requests.post(f"{server.url}/v2/models/chat/generate", json=body, timeout=60).json()
    assert (answer["answer"], answer["error"]) == (QA[1]["answer"], "")


def test_concurrent_requests_are_batched_and_answer_as_alone(server):
    questions = [item["question"] for item in QA[:16]]
    alone = [infer(server, "chat", [q])[0] for q in questions]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda q: infer(server, "chat_batched", [q], batched=True)[0], questions))
    assert together == alone
    assert all(answer == item["answer"] for (answer, _), item in zip(together, QA))
    # One request may also carry several rows.
    assert infer(server, "chat_batched", questions[:3], [200, 200, 200], batched=True) == alone[:3]


def test_a_bad_prompt_fails_alone_in_its_batch(server):
    rows = infer(server, "chat_batched", [QA[0]["question"], "   ", QA[1]["question"]], batched=True)
    assert rows[0] == (QA[0]["answer"], "")
    assert rows[1] == ("", "prompt: the message must not be blank")
    assert rows[2] == (QA[1]["answer"], "")


def test_streaming_yields_growing_text(server):
    events = stream(server, QA[2]["question"])
    chunks = [e["answer"] for e in events]
    assert len(chunks) > 3 and all(e["error"] == "" for e in events)
    assert "".join(chunks).strip() == QA[2]["answer"]
    assert len(stream(server, QA[2]["question"], max_new_tokens=4)) <= 4


@pytest.mark.parametrize(
    "prompt, max_new_tokens, error",
    [
        ("", None, "prompt: String should have at least 1 character"),
        (["not", "messages"], None, "prompt[0]: Input should be a valid dictionary or instance of Message"),
        ([{"role": "assistant", "content": "hi"}], None, "prompt: the last message must come from the user"),
        (QA[0]["question"], -3, "max_new_tokens: Input should be greater than or equal to 1"),
        (QA[0]["question"], 100_000, "exceeds the model's context of 256 tokens"),
        ("x" * 9000, None, "String should have at most 8000 characters"),
    ],
)
def test_bad_prompts_get_their_reason(server, prompt, max_new_tokens, error):
    tokens = None if max_new_tokens is None else [max_new_tokens]
    for model, batched in (("chat", False), ("chat_batched", True)):
        [(answer, reason)] = infer(server, model, [prompt], tokens, batched)
        assert answer == "" and error in reason, (model, reason)
    extra = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
    [event] = stream(server, prompt, **extra)
    assert event["answer"] == "" and error in event["error"]


def test_a_prompt_that_is_not_json_gets_its_reason(server):
    body = {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["What is Ray Serve?"]}]}
    response = requests.post(f"{server.url}/v2/models/chat/infer", json=body, timeout=60)
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs["error"][0].startswith("prompt: not a JSON string or list of messages")


@pytest.mark.parametrize(
    "inputs, message",
    [
        ([{"name": "question", "datatype": "BYTES", "shape": [1], "data": ["\"hi\""]}], "unexpected inference input 'question'"),
        ([{"name": "prompt", "datatype": "INT32", "shape": [1], "data": [3]}], "expects 'BYTES'"),
        ([], "missing required input(s) ['prompt']"),
    ],
)
def test_a_request_that_breaks_the_protocol_gets_tritons_400(server, inputs, message):
    response = requests.post(f"{server.url}/v2/models/chat/infer", json={"inputs": inputs}, timeout=60)
    assert response.status_code == 400 and message in response.json()["error"], response.text


def test_still_answers_after_all_that_then_stops_cleanly_on_sigterm(server):
    assert infer(server, "chat", [QA[0]["question"]]) == [(QA[0]["answer"], "")]
    family = psutil.Process(server.process.pid).children(recursive=True)
    tritonservers = [p for p in family if p.name() == "tritonserver"]
    assert len(tritonservers) == 1
    # SIGTERM (what a service manager sends) stops it as cleanly as Ctrl-C: nothing orphaned.
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    _, alive = psutil.wait_procs(family, timeout=30)
    assert alive == []
