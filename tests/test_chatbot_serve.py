"""apps.chatbot under Ray Serve: the Gradio page, the streaming route and gradio_client."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import pytest
import requests

import helpers
from apps import chatbot

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")
QA = helpers.qa_corpus()


@pytest.fixture(scope="module")
def url(serve_cluster):
    from ray import serve

    serve.run(chatbot.app, name="chatbot", route_prefix="/chatbot")
    yield f"{serve_cluster.http_url}/chatbot"
    serve.delete("chatbot")


def test_page_is_served(url):
    page = requests.get(f"{url}/", timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_generate_streams_the_answer(url):
    item = QA[4]
    with requests.post(f"{url}/generate", json={"message": item["question"]}, stream=True, timeout=60) as r:
        assert r.status_code == 200
        chunks = list(r.iter_content(chunk_size=None, decode_unicode=True))
    assert len(chunks) > 1
    assert "".join(chunks) == item["answer"]


@pytest.mark.parametrize("body", [{}, {"message": "  "}, {"message": "x" * 9000}, {"message": 3}])
def test_bad_input_is_422_and_the_replica_keeps_serving(url, body):
    r = requests.post(f"{url}/generate", json=body, timeout=30)
    assert r.status_code == 422
    ok = requests.post(f"{url}/generate", json={"message": QA[0]["question"]}, timeout=60)
    assert ok.status_code == 200 and ok.text == QA[0]["answer"]


def test_gradio_client_streams(url):
    from gradio_client import Client

    item = QA[5]
    client = Client(f"{url}/", analytics_enabled=False, verbose=False)
    job = client.submit(item["question"], api_name="/chat")
    outputs = list(job)
    assert job.result() == item["answer"]
    assert len(outputs) > 1 and all(item["answer"].startswith(o) for o in outputs)


def test_placement_reports_the_device(url):
    from ray import serve

    handle = serve.get_app_handle("chatbot")
    placed = handle.placement.remote().result(timeout_s=30)
    assert placed["torch_device"] == helpers.detect_accelerator().torch_device
