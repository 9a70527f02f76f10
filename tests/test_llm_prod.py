"""apps.llm_prod (health check, metrics, logs) and apps.memo under Serve."""


import pytest
import ray
import requests

import helpers
from apps import llm_prod, memo

QA = helpers.qa_corpus()


@pytest.fixture(scope="module")
def prod(serve_cluster):
    from ray import serve

    app = llm_prod.ProductionLLM.options(health_check_period_s=1, health_check_timeout_s=2).bind()
    handle = serve.run(app, name="prod", route_prefix="/prod")
    yield handle
    serve.delete("prod")


def metrics_text() -> str:
    port = ray.nodes()[0]["MetricsExportPort"]
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def counter(text: str, outcome: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ray_llm_requests_total{") and f'outcome="{outcome}"' in line
        and 'application="prod"' in line
    )


def test_answers_and_counts_outcomes(prod, base_url):
    before_ok = counter(metrics_text(), "ok")
    before_bad = counter(metrics_text(), "bad_request")
    for item in QA[:3]:
        r = requests.post(f"{base_url}/prod", json=item["question"], timeout=60)
        assert r.status_code == 200 and r.json()["answer"] == item["answer"]
    assert requests.post(f"{base_url}/prod", data=b"nope", timeout=60).status_code == 400
    helpers.wait_until(
        lambda: counter(metrics_text(), "ok") == before_ok + 3
        and counter(metrics_text(), "bad_request") == before_bad + 1,
        60, "the counters to be exported", interval_s=0.5,
    )


def test_unusable_model_fails_health_check_and_is_replaced(prod, base_url):
    first = helpers.serve_details()["applications"]["prod"]["deployments"]["ProductionLLM"]["replicas"][0]
    prod.unload_model.remote().result(timeout_s=30)
    assert requests.post(f"{base_url}/prod", json=QA[0]["question"], timeout=60).status_code == 500

    def replaced() -> bool:
        dep = helpers.serve_details()["applications"]["prod"]["deployments"]["ProductionLLM"]
        running = [r["replica_id"] for r in dep["replicas"] if r["state"] == "RUNNING"]
        return dep["status"] == "HEALTHY" and bool(running) and first["replica_id"] not in running

    assert helpers.wait_until(replaced, 60, "a new replica") < 60
    r = requests.post(f"{base_url}/prod", json=QA[0]["question"], timeout=60)
    assert r.status_code == 200 and r.json()["answer"] == QA[0]["answer"]


@pytest.fixture(scope="module")
def memos(serve_cluster):
    from ray import serve

    serve.run(memo.unbounded, name="unbounded", route_prefix="/unbounded")
    serve.run(memo.BoundedMemo.options().bind(max_entries=4), name="bounded", route_prefix="/bounded")
    yield
    serve.delete("unbounded")
    serve.delete("bounded")


def test_bounded_memo_keeps_at_most_max_entries(memos, base_url):
    with requests.Session() as s:
        entries = [s.post(f"{base_url}/bounded", data=f"p{i}", timeout=30).json()["entries"] for i in range(10)]
        grown = [s.post(f"{base_url}/unbounded", data=f"p{i}", timeout=30).json()["entries"] for i in range(10)]
    assert entries == [1, 2, 3, 4, 4, 4, 4, 4, 4, 4]
    assert grown == list(range(1, 11))


def test_memo_rss_is_reported(memos):
    from ray import serve

    assert serve.get_app_handle("bounded").rss_mb.remote().result(timeout_s=30) > 10
