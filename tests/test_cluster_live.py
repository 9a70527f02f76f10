"""helpers.cluster, helpers.introspect and apps.whoami against a real, private Ray."""

import pytest
import requests
from conftest import GRPC_OPTIONS, TEST_CPUS, TEST_ENV

import helpers

# Starts Ray, a model server or a browser: not part of `make check` (see tests/conftest.py).
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster(serve_cluster):
    return serve_cluster


@pytest.fixture(scope="module")
def whoami(cluster):
    from ray import serve

    from apps import whoami

    handle = serve.run(whoami.app, name="who", route_prefix="/who")
    yield handle
    serve.delete("who")


def test_private_ray_on_loopback(cluster):
    import ray

    assert cluster.private
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert cluster.http_url == "http://127.0.0.1:8000"
    assert cluster.dashboard_url == "http://127.0.0.1:8265"


def test_start_again_reuses_ray(cluster):
    assert helpers.start(env=TEST_ENV, grpc_options=GRPC_OPTIONS, num_cpus=TEST_CPUS) is cluster


def test_actors_and_status(whoami):
    rows = [line.split() for line in helpers.actor_table().splitlines()[1:]]
    assert rows[:2] == [
        ["controller", "ServeController", "ALIVE", "head", "1"],
        ["proxy", "ProxyActor", "ALIVE", "head", "1"],
    ]
    assert ["replica", "ServeReplica:who:WhoAmI", "ALIVE", "head", "2"] in rows
    summary = helpers.status_summary().splitlines()
    assert summary[0] == "proxies: 1 HEALTHY"
    i = summary.index("application 'who': RUNNING")
    assert summary[i + 1] == "  deployment 'WhoAmI': HEALTHY; replicas: 2 RUNNING"
    picture = helpers.draw_topology([a for a in helpers.serve_actors() if a.app in ("", "who")])
    assert repr(picture) == "<Serve topology: 1 controller, 1 proxy, 2 replicas>"


def test_whoami_http_reports_request_id(whoami):
    response = requests.get("http://127.0.0.1:8000/who", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    assert len(body["replica"]) >= 6 and body["pid"] > 0
    import ray

    assert body["node"] in {node["NodeManagerAddress"] for node in ray.nodes()}  # the node it runs on


def test_whoami_handle_path(whoami):
    """The same deployment through a DeploymentHandle (no HTTP): the route's method, called."""
    body = whoami.who.remote().result(timeout_s=30)
    assert set(body) == {"replica", "pid", "node", "request_id"}


def test_both_replicas_serve(whoami):
    seen = {requests.get("http://127.0.0.1:8000/who", timeout=10).json()["replica"] for _ in range(30)}
    assert len(seen) == 2


def test_wait_for_http(cluster, whoami):
    assert helpers.wait_for_http("http://127.0.0.1:8000/who", timeout_s=10) < 10
    with pytest.raises(TimeoutError, match="GET http://127.0.0.1:8000/missing to answer 200"):
        helpers.wait_for_http("http://127.0.0.1:8000/missing", timeout_s=0.5)


def test_serve_details_shows_effective_config(whoami):
    details = helpers.serve_details()
    deployment = details["applications"]["who"]["deployments"]["WhoAmI"]
    assert deployment["deployment_config"]["num_replicas"] == 2
    assert deployment["deployment_config"]["ray_actor_options"]["num_cpus"] == 0.1
    assert sorted(r["state"] for r in deployment["replicas"]) == ["RUNNING", "RUNNING"]


def test_actor_table_ignores_a_stale_address_file(whoami, tmp_path, monkeypatch):
    """A cluster a failed notebook left behind (its address still in ray_current_cluster) must
    not change what this kernel sees: the actors of the cluster it is connected to, with nodes."""
    import os

    from ray._private.utils import get_ray_address_file

    address_file = get_ray_address_file(None)
    saved = open(address_file).read() if os.path.exists(address_file) else None
    os.makedirs(os.path.dirname(address_file), exist_ok=True)
    with open(address_file, "w") as f:
        f.write("10.255.255.1:6379")  # nobody is there
    try:
        rows = [line.split() for line in helpers.actor_table().splitlines()[1:]]
    finally:
        if saved is None:
            os.remove(address_file)
        else:
            with open(address_file, "w") as f:
                f.write(saved)
    assert ["replica", "ServeReplica:who:WhoAmI", "ALIVE", "head", "2"] in rows
