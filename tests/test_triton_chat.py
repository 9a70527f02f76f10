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
import subprocess
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

import helpers
import triton_start
from helpers.models import ASSETS

# Starts Ray, a model server or a browser: not part of `make check` (see tests/conftest.py).
pytestmark = pytest.mark.ray

QA = helpers.qa_corpus()
PORT = 8110  # not the notebook's 8100: a test run must not meet a reader's server


def _environment() -> None:
    try:
        triton_start.pytriton_python()
    except FileNotFoundError as exc:
        if os.environ.get("REQUIRE_PYTRITON"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    _environment()
    folder = tmp_path_factory.mktemp("my_project")
    for name in ("triton_chat.py", "chat_core.py", "accelerator.py", "validation.py"):
        shutil.copy(triton_start.APP.parent / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def server(folder):
    started = triton_start.start_triton(
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


# The stream model called with several requests at once, as PyTriton's inference handler calls
# it, every list it yields checked by PyTriton's own validator (which refuses a list whose
# length is not the number of requests). Run in PyTriton's environment, on the copied module.
SEVERAL_REQUESTS = r"""
import json, sys
import numpy as np
from pytriton.decorators import TritonContext
from pytriton.model_config.triton_model_config import TensorSpec, TritonModelConfig
from pytriton.proxy.types import Request
from pytriton.proxy.validators import TritonResultsValidator
from chat_core import ChatModel
from triton_chat import INPUTS, OUTPUTS, TritonChat

chat = TritonChat(ChatModel(sys.argv[1]))
spec = lambda t: TensorSpec(name=t.name, shape=t.shape, dtype=t.dtype, optional=t.optional)
config = TritonModelConfig(model_name="chat_stream", batching=False, decoupled=True,
                           inputs=[spec(t) for t in INPUTS], outputs=[spec(t) for t in OUTPUTS])
context = TritonContext()
context.model_configs[chat.chat_stream] = config
chat.__triton_context__ = context  # what Triton.bind does
validator = TritonResultsValidator(config, strict=True)

requests = []
for prompt, tokens in json.loads(sys.argv[2]):
    data = {"prompt": np.array([json.dumps(prompt).encode()], dtype=np.object_)}
    if tokens is not None:
        data["max_new_tokens"] = np.array([tokens], dtype=np.int32)
    requests.append(Request(data=data))
events = [[] for _ in requests]
for responses in chat.chat_stream(requests):
    validator.validate_responses(requests, responses)
    for i, response in enumerate(responses):
        events[i].append({k: v[0].decode() for k, v in response.items()})
try:
    validator.validate_responses(requests, responses[:1])
except ValueError as exc:
    refused = str(exc)
print(json.dumps({"events": events, "refused": refused}))
"""


def test_the_stream_model_answers_several_requests_in_one_call(folder, server):
    several = [(QA[2]["question"], None), ("   ", None), (QA[0]["question"], None), (QA[1]["question"], 5)]
    python = triton_start.pytriton_python()
    done = subprocess.run(
        [str(python), "-c", SEVERAL_REQUESTS, str(ASSETS / "tiny-chat"), json.dumps(several)],
        cwd=folder, capture_output=True, text=True, timeout=300,
        env={**os.environ, "LD_LIBRARY_PATH": triton_start.library_dir(python)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "does not match number of requests" in result["refused"]  # the validator does refuse
    events = result["events"]  # per request, the responses it got
    assert len({len(e) for e in events}) == 1 and len(events[0]) > 5  # one response per request each time
    texts = ["".join(e["answer"] for e in request) for request in events]
    # Each request gets the answer it gets alone (the plain model, over HTTP).
    alone = [infer(server, "chat", [prompt], None if tokens is None else [tokens])[0] for prompt, tokens in several]
    assert [(t.strip(), e[0]["error"]) for t, e in zip(texts, events)] == alone
    assert alone[0][0] == QA[2]["answer"] and alone[1] == ("", "prompt: the message must not be blank")
    assert all(e["error"] == "" for request in events for e in request[1:])


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
