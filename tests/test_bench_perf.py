"""bench (notebooks/bench.py) and apps.perf, the tools of notebook 06."""

import asyncio

import pytest
import requests
from fastapi.testclient import TestClient

import bench
from apps import perf


def test_text_bodies_differ():
    assert len({bench.text_body(i)["text"] for i in range(100)}) == 100


def test_model_batching_gain_measures_both_ways():
    single_ms, batch_ms = bench.model_batching_gain(threads=1, batch_size=4, rounds=1)
    assert single_ms > 0 and batch_ms > 0


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
    cost = asyncio.run(
        bench.per_request_cost(f"{base_url}/hello", f"{base_url}/hello", serve.get_app_handle("hello"), n=20)
    )
    assert set(cost) == {"function call", "FastAPI + uvicorn (HTTP)", "Serve, HTTP", "Serve, DeploymentHandle"}


def test_sleepy_rejects_beyond_its_queue(apps_running, base_url):
    from helpers.load import run_load

    result = asyncio.run(run_load(f"{base_url}/sleepy", clients=6, requests_per_client=2, method="GET"))
    # one request at a time, one waiting: of six clients at once, the rest are refused at once
    assert set(result.statuses) == {200, 503}, result.statuses
    assert result.statuses[503] >= 4
