"""apps.slow: the endpoint notebook 03 uses to show request_timeout_s."""

import pytest
import requests

from apps import slow


@pytest.fixture(scope="module")
def slow_app(serve_cluster):
    from ray import serve

    serve.run(slow.app, name="slow", route_prefix="/slow")
    yield
    serve.delete("slow")


def test_sleeps_as_asked(slow_app, base_url):
    r = requests.get(f"{base_url}/slow?seconds=0.2", timeout=10)
    assert r.status_code == 200 and r.json() == {"slept_s": 0.2}


@pytest.mark.parametrize("seconds, message", [("abc", "must be a number"), ("-1", "between 0 and 30"), ("31", "between 0 and 30")])
def test_bad_seconds_is_422(slow_app, base_url, seconds, message):
    r = requests.get(f"{base_url}/slow", params={"seconds": seconds}, timeout=10)
    assert r.status_code == 422 and message in r.json()["error"]
