"""helpers.cluster pieces that need no Ray."""

import time

import pytest

from helpers.cluster import ClusterInfo, wait_until


def test_wait_until_returns_elapsed():
    t0 = time.monotonic()
    elapsed = wait_until(lambda: time.monotonic() - t0 > 0.2, 5, "a moment", interval_s=0.01)
    assert 0.2 <= elapsed < 1


def test_wait_until_treats_exceptions_as_not_yet():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not up yet")
        return "up"

    waited = wait_until(flaky, 5, "the flaky thing", interval_s=0.01)
    assert 0.02 <= waited < 5  # two failed calls, each followed by one interval
    assert len(calls) == 3


def test_wait_until_timeout_names_what_and_last_result():
    with pytest.raises(TimeoutError, match=r"waited 0.1 s for the answer; last result: \[\]"):
        wait_until(lambda: [], 0.1, "the answer")
    with pytest.raises(TimeoutError, match=r"ValueError\('nope'\)"):
        wait_until(lambda: (_ for _ in ()).throw(ValueError("nope")), 0.1, "x")


def test_cluster_info_describe_is_stable():
    info = ClusterInfo(
        private=True,
        num_cpus=2,
        resources={"NPU": 2},
        http_url="http://127.0.0.1:8000",
        dashboard_url="http://127.0.0.1:8265",
        log_dir="/tmp/ray/session_x/logs",
    )
    assert str(info) == (
        "Ray:       private instance on 127.0.0.1\n"
        "resources: NPU=2\n"
        "Serve:     http://127.0.0.1:8000\n"
        "dashboard: http://127.0.0.1:8265"
    )
    assert "session_x" not in repr(info)


def test_a_taken_port_is_refused_with_what_to_do():
    import socket

    from helpers.cluster import check_ports_free, port_in_use

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert port_in_use(port)
        with pytest.raises(RuntimeError, match=rf"port\(s\) {port} on 127.0.0.1 are taken.*ray stop"):
            check_ports_free([None, port])
    assert not port_in_use(port)
    check_ports_free([port, None])  # free again: no error
