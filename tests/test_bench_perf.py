"""bench (notebooks/bench.py) and apps.perf, the tools of notebook 06."""

import asyncio
import socket

import pytest
import requests
from fastapi.testclient import TestClient

import bench
import helpers
from apps import perf


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_text_bodies_differ():
    assert len({bench.text_body(i)["text"] for i in range(100)}) == 100


def test_model_batching_gain_measures_both_ways():
    single_ms, batch_ms = bench.model_batching_gain(threads=1, batch_size=16, rounds=2)
    # what notebook 06 builds on: in a batch, each text costs the model clearly less
    assert 0 < batch_ms < 0.8 * single_ms, (single_ms, batch_ms)


def test_plain_fastapi_app():
    assert TestClient(perf.plain_fastapi_app()).get("/").text == "hello"


@pytest.fixture(scope="module")
def apps_running(deployed):
    deployed("hello", lambda: perf.hello_app)
    deployed("sleepy", lambda: perf.Sleepy.options(max_ongoing_requests=1, max_queued_requests=1).bind(0.5))


def test_hello_over_http_and_handle(apps_running, base_url):
    from ray import serve

    assert requests.get(f"{base_url}/hello", timeout=10).text == "hello"
    assert serve.get_app_handle("hello").call.remote().result(timeout_s=10) == "hello"
    with helpers.serve_locally(perf.plain_fastapi_app(), free_port()) as plain_url:
        assert requests.get(plain_url, timeout=10).text == "hello"
        cost = asyncio.run(bench.per_request_cost(plain_url, f"{base_url}/hello", serve.get_app_handle("hello"), n=30))
    assert set(cost) == {"function call", "FastAPI + uvicorn (HTTP)", "Serve, HTTP", "Serve, DeploymentHandle"}
    # each layer costs more than the one it wraps: Serve's proxy adds a hop to a replica
    assert cost["function call"] < cost["FastAPI + uvicorn (HTTP)"] < cost["Serve, HTTP"], cost
    assert cost["function call"] < cost["Serve, DeploymentHandle"] < 1000, cost


def test_sleepy_rejects_beyond_its_queue(apps_running, base_url):
    from helpers.load import run_load

    result = asyncio.run(run_load(f"{base_url}/sleepy", clients=6, requests_per_client=2, method="GET"))
    # one request at a time, one waiting: of six clients at once, the rest are refused at once
    assert set(result.statuses) == {200, 503}, result.statuses
    assert result.statuses[503] >= 4


def test_streaming_measured_three_ways_gives_the_same_answer_in_fewer_chunks_when_joined(deployed):
    from ray import serve

    from apps import chatbot
    from apps.chat_core import ChatModel
    from apps.llm import Generator

    url = deployed(
        "joined", lambda: chatbot.ChatUI.bind(Generator.options(num_replicas=1).bind(chunk_interval_s=0.05))
    )
    model, question = ChatModel(), bench.longest_answer_question()
    words = bench.bare_streaming(model, question, runs=3)
    bare = bench.bare_streaming(model, question, runs=3, chunk_interval_s=0.05)
    assert bare.tokens > 50 and 0 < bare.first_ms < bare.total_ms
    http = asyncio.run(bench.http_streaming(f"{url}/generate", {"message": question}, bare.tokens, runs=3))
    generator = serve.get_deployment_handle("Generator", app_name="joined")
    handle = asyncio.run(bench.handle_streaming(generator, question, bare.tokens, runs=3))
    # greedy decoding: the same text every way, so the same number of tokens
    assert http.text == handle.text == bare.text == words.text
    assert 0 < http.first_ms < http.total_ms and 0 < handle.first_ms < handle.total_ms
    # a chunk per word, against at most one each 50 ms (the first at once, the rest at the end)
    assert words.chunks > 20 and 2 <= handle.chunks < words.chunks / 2 and http.chunks < words.chunks / 2
    rows = bench.streaming_table({0.0: {"bare": words}, 0.05: {"bare": bare, "handle": handle}}).splitlines()
    # each interval's first row is its yardstick: 100% of itself, no extra time to the first chunk
    assert rows[1].split()[-3:] == rows[2].split()[-3:] == ["100%", "100%", "0.0"], rows
    assert rows[1].split()[0] == "word" and rows[3].split()[:2] == ["50", "ms"], rows
