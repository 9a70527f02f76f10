"""apps.chatbot under Ray Serve, used the way readers use it: many users at once.

The shipped application: one ChatUI replica (the Gradio page and POST /generate) streaming
from two Generator replicas through a DeploymentHandle.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

import helpers
from apps import chatbot

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")
QA = helpers.qa_corpus()
USERS = 8
QUESTIONS_EACH = 4


@pytest.fixture(scope="module")
def url(deployed):
    return deployed("chatbot", lambda: chatbot.app)


def test_one_ui_replica_and_two_model_replicas(url):
    lines = helpers.status_summary().splitlines()
    start = lines.index("application 'chatbot': RUNNING")
    assert lines[start + 1 : start + 3] == [
        "  deployment 'ChatUI': HEALTHY; replicas: 1 RUNNING",
        "  deployment 'Generator': HEALTHY; replicas: 2 RUNNING",
    ]


def test_page_is_served(url):
    page = requests.get(f"{url}/", timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_eight_gradio_users_chat_at_once(url):
    """Each user asks four questions in one conversation (the history goes with each)."""
    from gradio_client import Client

    def user(n: int) -> list[tuple[str, str]]:
        items = [QA[(n * QUESTIONS_EACH + i) % len(QA)] for i in range(QUESTIONS_EACH)]
        client = Client(f"{url}/", verbose=False, analytics_enabled=False, download_files=False)
        try:
            return [(client.submit(item["question"], api_name="/chat").result(timeout=120), item["answer"])
                    for item in items]
        finally:
            client.close()

    with ThreadPoolExecutor(USERS) as pool:
        chats = list(pool.map(user, range(USERS)))
    wrong = [(got, want) for chat in chats for got, want in chat if got != want]
    assert sum(len(chat) for chat in chats) == USERS * QUESTIONS_EACH
    assert wrong == []


def test_eight_streams_over_http_at_once(url):
    def ask(item):
        with requests.post(f"{url}/generate", json={"message": item["question"]}, stream=True, timeout=120) as r:
            assert r.status_code == 200
            return list(r.iter_content(chunk_size=None, decode_unicode=True)), item["answer"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, QA[40:48]))
    assert all(len(chunks) > 1 and "".join(chunks) == answer for chunks, answer in results)


@pytest.mark.parametrize("body", [{}, {"message": "  "}, {"message": "x" * 9000}, {"message": 3}, {"message": "w " * 300}])
def test_bad_input_is_422_and_the_replicas_keep_serving(url, body):
    r = requests.post(f"{url}/generate", json=body, timeout=30)
    assert r.status_code == 422
    ok = requests.post(f"{url}/generate", json={"message": QA[0]["question"]}, timeout=60)
    assert ok.status_code == 200 and ok.text == QA[0]["answer"]


def test_gradio_client_streams_the_growing_answer(url):
    from gradio_client import Client

    item = QA[5]
    client = Client(f"{url}/", analytics_enabled=False, verbose=False)
    try:
        job = client.submit(item["question"], api_name="/chat")
        outputs = list(job)
        assert job.result() == item["answer"]
    finally:
        client.close()
    assert len(outputs) > 1 and all(item["answer"].startswith(o) for o in outputs)


def test_model_replicas_report_the_device(url):
    from ray import serve

    info = serve.get_deployment_handle("Generator", app_name="chatbot").info.remote().result(timeout_s=30)
    assert (info["model"], info["device"]) == ("tiny-chat", "cpu")
