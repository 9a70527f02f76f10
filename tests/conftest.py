"""Shared fixtures: one private Ray + Serve for the whole test session.

Starting Ray takes 10-20 s, so every test that needs Serve shares one instance. Ray is
started from ``notebooks/`` (as the notebooks are run), so that replicas can import the
``apps`` package exactly as they do there.
"""

import os
import sys
from pathlib import Path

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


@pytest.fixture(scope="session")
def serve_cluster():
    import helpers

    cwd = os.getcwd()
    os.chdir(NOTEBOOKS)  # Ray adds the driver's working directory to the replicas' sys.path
    try:
        info = helpers.start(env=TEST_ENV, grpc_options=GRPC_OPTIONS)
    finally:
        os.chdir(cwd)
    yield info
    helpers.stop()
    assert helpers.cluster.ray_processes() == []


@pytest.fixture(scope="session")
def base_url(serve_cluster):
    return serve_cluster.http_url
