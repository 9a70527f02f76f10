"""apps.slow: the endpoint notebook 03 uses to show request_timeout_s."""

import pytest
import requests

from apps import slow


@pytest.fixture(scope="module")
def slow_app(deployed):
    return deployed("slow", lambda: slow.app)


def test_sleeps_as_asked(slow_app, base_url):
    r = requests.get(f"{base_url}/slow?seconds=0.2", timeout=10)
    assert r.status_code == 200 and r.json() == {"slept_s": 0.2}


@pytest.mark.parametrize(
    "seconds, message",
    [("abc", "valid number"), ("-1", "greater than or equal to 0"), ("31", "less than or equal to 30"), ("nan", "finite number")],
)
def test_bad_seconds_is_422(slow_app, base_url, seconds, message):
    r = requests.get(f"{base_url}/slow", params={"seconds": seconds}, timeout=10)
    assert r.status_code == 422 and message in r.json()["detail"][0]["msg"]
