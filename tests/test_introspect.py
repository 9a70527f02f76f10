"""helpers.introspect on made-up actors and statuses (no Ray needed)."""

from types import SimpleNamespace

from helpers.introspect import ServeActor, Topology, actor_table, draw_topology, kind_of, status_summary


def test_kind_of():
    assert kind_of("SERVE_CONTROLLER_ACTOR") == "controller"
    assert kind_of("SERVE_PROXY_ACTOR-0f7e69db") == "proxy"
    assert kind_of("SERVE_REPLICA::app#Dep#abc123") == "replica"
    assert kind_of("my_actor") == ""


ACTORS = [
    ServeActor("replica", "ServeReplica:a:D", "ALIVE", "head", "a", "D"),
    ServeActor("proxy", "ProxyActor", "ALIVE", "worker-1"),
    ServeActor("replica", "ServeReplica:a:D", "ALIVE", "worker-1", "a", "D"),
    ServeActor("controller", "ServeController", "ALIVE", "head"),
    ServeActor("replica", "ServeReplica:a:D", "ALIVE", "head", "a", "D"),
    ServeActor("proxy", "ProxyActor", "ALIVE", "head"),
    ServeActor("replica", "ServeReplica:a:D", "DEAD", "head", "a", "D"),
]


def test_actor_table_groups_and_counts():
    lines = actor_table(ACTORS).splitlines()
    assert lines[0].split() == ["kind", "class", "state", "node", "count"]
    rows = [line.split() for line in lines[1:]]
    assert rows == [
        ["controller", "ServeController", "ALIVE", "head", "1"],
        ["proxy", "ProxyActor", "ALIVE", "head", "1"],
        ["proxy", "ProxyActor", "ALIVE", "worker-1", "1"],
        ["replica", "ServeReplica:a:D", "ALIVE", "head", "2"],
        ["replica", "ServeReplica:a:D", "ALIVE", "worker-1", "1"],
        ["replica", "ServeReplica:a:D", "DEAD", "head", "1"],
    ]


def test_status_summary_is_sorted_and_id_free():
    status = SimpleNamespace(
        proxies={"node-b": SimpleNamespace(value="HEALTHY"), "node-a": SimpleNamespace(value="HEALTHY")},
        applications={
            "zeta": SimpleNamespace(
                status=SimpleNamespace(value="DEPLOYING"),
                deployments={
                    "Model": SimpleNamespace(
                        status=SimpleNamespace(value="UPDATING"),
                        replica_states={"STARTING": 1, "RUNNING": 1},
                    )
                },
            ),
            "alpha": SimpleNamespace(status=SimpleNamespace(value="RUNNING"), deployments={}),
        },
    )
    assert status_summary(status).splitlines() == [
        "proxies: 2 HEALTHY",
        "application 'alpha': RUNNING",
        "application 'zeta': DEPLOYING",
        "  deployment 'Model': UPDATING; replicas: 1 RUNNING, 1 STARTING",
    ]


def test_status_summary_without_apps():
    status = SimpleNamespace(proxies={}, applications={})
    assert status_summary(status) == "proxies: \napplications: none"


def test_draw_topology_multi_node():
    picture = draw_topology([a for a in ACTORS if a.state == "ALIVE"])
    assert isinstance(picture, Topology)
    assert repr(picture) == "<Serve topology: 1 controller, 2 proxies, 3 replicas>"
    png = picture._repr_png_()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_status_summary_reads_serve_status_yaml():
    import yaml

    printed = """
proxies:
  5923e661420f: HEALTHY
applications:
  llm:
    status: DEPLOYING
    message: ''
    last_deployed_time_s: 1795445924.89
    deployments:
      LLM:
        status: UPDATING
        status_trigger: CONFIG_UPDATE_STARTED
        replica_states:
          STARTING: 1
        message: ''
target_capacity: null
"""
    assert status_summary(yaml.safe_load(printed)).splitlines() == [
        "proxies: 1 HEALTHY",
        "application 'llm': DEPLOYING",
        "  deployment 'LLM': UPDATING; replicas: 1 STARTING",
    ]
