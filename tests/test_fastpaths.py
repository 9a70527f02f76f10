"""fastpaths (notebooks/fastpaths.py): Serve's feature-flag fast paths, each in a namespace of its own."""

import socket

import pytest

import fastpaths


def test_listening_on_all_interfaces_sees_only_wildcard_listeners():
    with socket.socket() as local:
        local.bind(("127.0.0.1", 0))
        local.listen()
        port = local.getsockname()[1]
        assert port not in fastpaths.listening_on_all_interfaces()


def test_modes_set_only_their_flags():
    assert fastpaths.MODES["default proxy"] == {}
    assert set(fastpaths.MODES["both"]) == {"RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY"}


@pytest.mark.skipif(not fastpaths.namespaces_available(), reason="no unprivileged network namespaces here")
def test_haproxy_mode_serves_in_its_own_namespace():
    report = fastpaths.measure("HAProxy", duration_s=0.5)
    assert all(c["errors"] == 0 and c["rps"] > 0 for c in report["clients"].values()), report
    # the embedding service too, behind HAProxy, and the model's own batching gain beside it
    assert report["embedding_errors"] == 0 and min(report["embedding_rps"].values()) > 0, report
    assert fastpaths.ceiling(report) > 1.5, report
    assert fastpaths.batching_table({"HAProxy": report}).splitlines()[1].startswith("HAProxy")
    # HAProxy's stats and metrics bind every interface: inside the namespace, and only there
    assert {8404, 9101} <= set(report["all_interfaces"])
    assert not {8404, 9101} & set(fastpaths.listening_on_all_interfaces())
    table = fastpaths.table({"HAProxy": report})
    assert table.splitlines()[1].startswith("HAProxy")
