"""apps.llm_prod (health check, metrics, logs) and apps.memo under Serve."""


import pytest
import ray
import requests

import helpers
from apps import llm_prod, memo

QA = helpers.qa_corpus()


@pytest.fixture(scope="module")
def prod(deployed):
    from ray import serve

    # its own application: the health test replaces its replica, the counters must be its own
    deployed("prod-ops", lambda: llm_prod.ProductionLLM.options(health_check_period_s=1, health_check_timeout_s=2).bind())
    return serve.get_app_handle("prod-ops")


def metrics_text() -> str:
    port = ray.nodes()[0]["MetricsExportPort"]
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def counter(text: str, outcome: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ray_llm_requests_total{") and f'outcome="{outcome}"' in line
        and 'application="prod-ops"' in line
    )


def test_answers_and_counts_outcomes(prod, base_url):
    before_ok = counter(metrics_text(), "ok")
    before_bad = counter(metrics_text(), "bad_request")
    for item in QA[:3]:
        r = requests.post(f"{base_url}/prod-ops", json={"prompt": item["question"]}, timeout=60)
        assert r.status_code == 200 and r.json()["answer"] == item["answer"]
    # one refused by the schema (before the route runs), one by the model's context
    assert requests.post(f"{base_url}/prod-ops", json=item["question"], timeout=60).status_code == 422
    assert requests.post(f"{base_url}/prod-ops", json={"prompt": "w " * 300}, timeout=60).status_code == 422
    helpers.wait_until(
        lambda: counter(metrics_text(), "ok") == before_ok + 3
        and counter(metrics_text(), "bad_request") == before_bad + 2,
        60, "the counters to be exported", interval_s=0.5,
    )


def test_unusable_model_fails_health_check_and_is_replaced(prod, base_url):
    first = helpers.serve_details()["applications"]["prod-ops"]["deployments"]["ProductionLLM"]["replicas"][0]
    prod.unload_model.remote().result(timeout_s=30)
    broken = requests.post(f"{base_url}/prod-ops", json={"prompt": QA[0]["question"]}, timeout=60)
    assert broken.status_code == 503 and "not loaded" in broken.json()["detail"]

    def replaced() -> bool:
        dep = helpers.serve_details()["applications"]["prod-ops"]["deployments"]["ProductionLLM"]
        running = [r["replica_id"] for r in dep["replicas"] if r["state"] == "RUNNING"]
        return dep["status"] == "HEALTHY" and bool(running) and first["replica_id"] not in running

    assert helpers.wait_until(replaced, 60, "a new replica") < 60
    r = requests.post(f"{base_url}/prod-ops", json={"prompt": QA[0]["question"]}, timeout=60)
    assert r.status_code == 200 and r.json()["answer"] == QA[0]["answer"]


@pytest.fixture(scope="module")
def memos(deployed):
    deployed("memo-unbounded", lambda: memo.unbounded)
    deployed("memo-bounded", lambda: memo.Memo.bind(max_entries=4))


def test_bounded_memo_keeps_at_most_max_entries(memos, base_url):
    with requests.Session() as s:
        entries = [s.post(f"{base_url}/memo-bounded", json={"prompt": f"p{i}"}, timeout=30).json()["entries"] for i in range(10)]
        grown = [s.post(f"{base_url}/memo-unbounded", json={"prompt": f"p{i}"}, timeout=30).json()["entries"] for i in range(10)]
    assert entries == [1, 2, 3, 4, 4, 4, 4, 4, 4, 4]
    assert grown == list(range(1, 11))


def test_unbounded_memo_grows_and_bounded_does_not(memos, base_url):
    from ray import serve

    def rss(app):
        return serve.get_app_handle(app).rss_mb.remote().result(timeout_s=30)

    before = {app: rss(app) for app in ("memo-bounded", "memo-unbounded")}
    with requests.Session() as s:
        for i in range(100, 200):  # 100 new prompts: 20 MB of answers to remember
            for app in ("memo-bounded", "memo-unbounded"):
                s.post(f"{base_url}/{app}", json={"prompt": f"p{i}"}, timeout=30).raise_for_status()
    grown = {app: rss(app) - before[app] for app in before}
    assert grown["memo-unbounded"] > 15 and grown["memo-bounded"] < grown["memo-unbounded"] / 3, grown
