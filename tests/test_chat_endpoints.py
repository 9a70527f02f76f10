"""apps.chat_endpoints: the Serve side of notebook 09 (plain, @serve.batch, streaming)."""

import math
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

import helpers
from apps import chat_endpoints

QA = helpers.qa_corpus()
QUESTIONS = [item["question"] for item in QA[:16]]


@pytest.fixture(scope="module")
def url(deployed):
    return deployed("endpoints", lambda: chat_endpoints.ChatEndpoints.bind(num_threads=1), alone=True)


def post(url, route, prompt, **extra):
    return requests.post(f"{url}/{route}", json={"prompt": prompt, **extra}, timeout=60)


def test_plain_answers_verbatim(url):
    answer = post(url, "chat", QA[0]["question"]).json()
    assert answer["answer"] == QA[0]["answer"] and answer["finish_reason"] == "stop"


def test_batched_answers_equal_the_plain_ones_and_come_sooner(url):
    def all_at_once(route):
        start = time.perf_counter()
        with ThreadPoolExecutor(len(QUESTIONS)) as pool:
            answers = list(pool.map(lambda q: post(url, route, q).json(), QUESTIONS))
        return answers, time.perf_counter() - start

    all_at_once("chat_batched")  # warm up
    plain, plain_s = all_at_once("chat")
    batched, batched_s = all_at_once("chat_batched")
    assert batched == plain
    assert [a["answer"] for a in batched] == [item["answer"] for item in QA[:16]]
    assert batched_s < plain_s / 1.5, (batched_s, plain_s)
    from ray import serve

    sizes = serve.get_app_handle("endpoints").batches.remote().result(timeout_s=30)
    assert max(sizes) > 1 and sum(size * n for size, n in sizes.items()) >= 2 * len(QUESTIONS)


def test_a_bad_prompt_fails_alone_in_its_batch(url):
    prompts = QUESTIONS[:4] + ["   "] + QUESTIONS[4:8]
    with ThreadPoolExecutor(len(prompts)) as pool:
        responses = list(pool.map(lambda p: post(url, "chat_batched", p), prompts))
    assert [r.status_code for r in responses] == [200] * 4 + [422] + [200] * 4
    assert responses[4].json()["detail"] == "prompt: the message must not be blank"
    assert [r.json()["answer"] for r in responses[5:]] == [item["answer"] for item in QA[4:8]]


def test_streaming_yields_growing_text(url):
    with requests.post(f"{url}/chat_stream", json={"prompt": QA[2]["question"]}, stream=True, timeout=60) as r:
        assert r.status_code == 200
        chunks = [c for c in r.iter_content(chunk_size=None, decode_unicode=True) if c]
    assert len(chunks) > 3 and "".join(chunks).strip() == QA[2]["answer"]


@pytest.mark.parametrize("route", ["chat", "chat_batched", "chat_stream"])
@pytest.mark.parametrize(
    "body, status",
    [({"prompt": ""}, 422), ({"prompt": "hi", "max_new_tokens": 100_000}, 422), ({"question": "hi"}, 422),
     ({"prompt": ["a list"]}, 422)],
)
def test_bad_input_gets_a_4xx(url, route, body, status):
    response = requests.post(f"{url}/{route}", json=body, timeout=60)
    assert response.status_code == status, response.text
    assert post(url, route, QA[0]["question"]).status_code == 200


def test_sixteen_requests_generate_at_most_as_many_at_once_as_the_replicas_pool_has_threads(url):
    # asyncio.to_thread uses the replica's default thread pool, which Serve sizes from
    # num_cpus (ray/serve/_private/replica.py): min(32, max(1, ceil(num_cpus)) + 4).
    num_cpus = chat_endpoints.ChatEndpoints.ray_actor_options["num_cpus"]
    pool = min(32, max(1, math.ceil(num_cpus)) + 4)
    with ThreadPoolExecutor(len(QUESTIONS)) as pool_of_clients:
        answers = list(pool_of_clients.map(lambda q: post(url, "chat", q).json()["answer"], QUESTIONS))
    assert answers == [item["answer"] for item in QA[:16]]
    from ray import serve

    seen = serve.get_app_handle("endpoints").at_once.remote().result(timeout_s=30)
    assert seen["generating"] == seen["threads"] == pool, seen
    assert seen["requests"] > pool, seen  # the rest wait in the replica for a thread
