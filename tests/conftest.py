"""Shared fixtures: one private Ray + Serve for the whole test session, and its applications.

Starting Ray takes 10-20 s, so every test that needs Serve shares one instance, and each
application is deployed once (``deployed``) and shared by the test modules that use it. Ray
is started from ``notebooks/`` (as the notebooks are run), so that replicas can import the
``apps`` package exactly as they do there.
"""

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
sys.path.insert(0, str(NOTEBOOKS))

# A quick proxy health check, so that tests which break a proxy see it replaced quickly.
TEST_ENV = {"RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": "1"}
# Serve's gRPC proxy, with the chat service of apps/protos/chat.proto.
GRPC_PORT = 9000
GRPC_OPTIONS = {
    "port": GRPC_PORT,
    "grpc_servicer_functions": ["apps.protos.chat_pb2_grpc.add_ChatServiceServicer_to_server"],
}
# Logical CPUs for the test cluster: every application of the suite stays deployed at once
# (Ray only counts CPUs, it does not pin them).
TEST_CPUS = 16


@pytest.fixture(scope="session")
def serve_cluster():
    import helpers

    cwd = os.getcwd()
    os.chdir(NOTEBOOKS)  # Ray adds the driver's working directory to the replicas' sys.path
    try:
        info = helpers.start(env=TEST_ENV, grpc_options=GRPC_OPTIONS, num_cpus=TEST_CPUS)
    finally:
        os.chdir(cwd)
    yield info
    helpers.stop()
    assert helpers.cluster.ray_processes() == []


@pytest.fixture(scope="session")
def base_url(serve_cluster):
    return serve_cluster.http_url


@pytest.fixture(scope="session")
def deployed(serve_cluster) -> Callable[..., str]:
    """``deployed(name, build)``: the URL of application ``name``, deployed on first use.

    ``build()`` returns the application (``chatbot.app``, ...); it is served at ``/<name>``
    and stays deployed for the rest of the session. With ``alone=True`` every other
    application is deleted first (a later test that needs one deploys it again): for tests
    that time something on two cores, where idle replicas of earlier tests would take turns
    on the CPU.
    """
    from ray import serve

    urls: dict[str, str] = {}

    def deploy(name: str, build: Callable[[], Any], alone: bool = False) -> str:
        if alone:
            for other in set(serve.status().applications) - {name}:
                serve.delete(other)
                urls.pop(other, None)
        if name not in urls:
            serve.run(build(), name=name, route_prefix=f"/{name}")
            urls[name] = f"{serve_cluster.http_url}/{name}"
        return urls[name]

    return deploy


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the shared Serve cluster ``ray`` (as the modules that start a
    Ray or a server of their own mark themselves): ``make check`` runs the others, without Ray.
    Then run the tests that start a Ray of their own (``serve run``) before the shared one starts."""
    for item in items:
        if "serve_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
    first = [item for item in items if item.path.name == "test_copied_apps.py"]
    items[:] = first + [item for item in items if item.path.name != "test_copied_apps.py"]


class LocalOnly:
    """A Playwright route handler (``page.route("**/*", handler)``) that lets a page reach
    ``base_url`` only: anything else is aborted and recorded in ``outside``."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.outside: list[str] = []

    def __call__(self, route: Any) -> None:
        if route.request.url.startswith(self.base_url):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()


@pytest.fixture
def local_only() -> type[LocalOnly]:
    return LocalOnly
