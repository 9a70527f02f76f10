"""Every HTTP route of every app, fuzzed from its own OpenAPI schema: a 2xx or a clear 4xx.

For each deployed application the test reads ``/openapi.json`` as Serve serves it, then sends
requests generated from it with schemathesis (property-based, on Hypothesis): bodies the
schema allows (positive) and bodies it does not (negative: wrong types, missing fields,
values out of range, bytes that are not JSON). Nothing may answer 5xx, and the application
must still answer a good request afterwards. Generation is derandomized, so a run is repeatable.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

import importlib

from found_apps import modules_with_app

# application -> (module:attribute, examples per mode and route, a request that must succeed
# after). Every other module of notebooks/apps that defines `app` is added below: 15 examples,
# then GET /openapi.json (its FastAPI ingress still answers).
APPS = {
    "llm": ("llm:app", 25, ("POST", "/", {"prompt": "What is Ray Serve?"})),
    "prod": ("llm_prod:app", 15, ("POST", "/", {"prompt": "What is Ray Serve?"})),
    "endpoints": ("chat_endpoints:app", 15, ("POST", "/chat", {"prompt": "What is Ray Serve?"})),
    "chatbot": ("chatbot:app", 25, ("POST", "/generate", {"message": "What is Ray Serve?"})),
    "openai": ("openai_api:app", 25, ("GET", "/v1/models", None)),
    "rag": ("rag:app", 15, ("POST", "/ask", {"question": "What is Ray Serve?"})),
    "batched": ("embed_service:batched", 25, ("POST", "/", {"text": "hello"})),
    "unbatched": ("embed_service:unbatched", 15, ("POST", "/", {"text": "hello"})),
    "memo": ("memo:unbounded", 25, ("POST", "/", {"prompt": "hello"})),
    "hello": ("perf:hello_app", 10, ("GET", "/", None)),
    "sleepy": ("perf:sleepy_app", 5, ("GET", "/", None)),
    "slow": ("slow:app", 25, ("GET", "/?seconds=0", None)),
    "whoami": ("whoami:app", 10, ("GET", "/", None)),
}
for _module in modules_with_app():
    if f"{_module}:app" not in {target for target, *_ in APPS.values()}:
        APPS[_module] = (f"{_module}:app", 15, ("GET", "/openapi.json", None))


def build(target: str):
    """The application that "module:attribute" names in notebooks/apps."""
    module, attribute = target.split(":")
    return getattr(importlib.import_module(f"apps.{module}"), attribute)


def quick(case, mode: GenerationMode):
    """Valid requests to /slow sleep as long as asked (up to 30 s, 1 s when not asked): fuzz it
    with short sleeps. A missing ``seconds`` becomes 0.01 (in negative mode too: the extra
    parameters FastAPI ignores do not make a request invalid); a generated valid number is
    scaled down to at most 0.1 s (a float stays a float)."""
    query = case.query if isinstance(case.query, dict) else None
    if query is None or "seconds" not in query:
        case.query = {**(query or {}), "seconds": 0.01}
    elif mode is GenerationMode.POSITIVE and isinstance(query["seconds"], (int, float)):
        case.query = {**query, "seconds": query["seconds"] / 300}
    return case


# Applications whose valid requests are slow on purpose: fuzz them with quick ones only.
SHORTEN = {"slow": quick}


def fuzz(operation, mode: GenerationMode, base_url: str, examples: int, shorten=None) -> list[str]:
    """Send ``examples`` generated requests; return a description of each 5xx answer."""
    failures: list[str] = []
    strategy = operation.as_strategy(generation_mode=mode)
    if shorten is not None:
        strategy = strategy.map(lambda case: shorten(case, mode))

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def send(case):
        response = case.call(base_url=base_url, timeout=120)
        if response.status_code >= 500:
            failures.append(f"{response.status_code} for {case.as_curl_command()}: {response.text[:300]}")

    try:
        send()
    except Unsatisfiable:  # nothing to get wrong: a route without parameters or body
        assert mode is GenerationMode.NEGATIVE, operation.label
    return failures


@pytest.mark.parametrize("name", APPS)
def test_every_route_answers_2xx_or_4xx(deployed, name):
    target, examples, (method, path, body) = APPS[name]
    url = deployed(name, lambda: build(target))
    spec = requests.get(f"{url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(spec)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, f"{name} documents no route"
    failures = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures += fuzz(operation, mode, url, examples, SHORTEN.get(name))
    assert failures == []
    # and the application keeps serving
    assert requests.request(method, f"{url}{path}", json=body, timeout=60).status_code == 200
