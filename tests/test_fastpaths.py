"""fastpaths (notebooks/fastpaths.py): Serve's feature-flag fast paths, each in a namespace of its own."""

import socket

import pytest

import fastpaths

# Starts Ray, a model server or a browser: not part of `make check` (see tests/conftest.py).
pytestmark = pytest.mark.ray


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
    # the no-op app only: notebook 06 measures every mode with the embedding service too
    report = fastpaths.measure("HAProxy", duration_s=0.5, embedding=False)
    assert all(c["errors"] == 0 and c["rps"] > 0 for c in report["clients"].values()), report
    assert "embedding_rps" not in report and "model_ms" not in report
    # HAProxy's stats and metrics bind every interface: inside the namespace, and only there
    assert {8404, 9101} <= set(report["all_interfaces"])
    assert not {8404, 9101} & set(fastpaths.listening_on_all_interfaces())
    table = fastpaths.table({"HAProxy": report})
    assert table.splitlines()[1].startswith("HAProxy")


def test_batching_share_is_the_share_of_the_models_own_gain():
    # the model: 4x faster per text in batches; the service: 2.5x -> half the gain (1.5 of 3)
    report = {"model_ms": {"single": 8.0, "batch": 2.0}, "embedding_rps": {"unbatched": 100.0, "batched": 250.0}}
    assert fastpaths.ceiling(report) == 4.0
    assert fastpaths.batching_share(report) == 0.5
    row = fastpaths.batching_table({"HAProxy": report}).splitlines()[1]
    assert row.startswith("HAProxy") and row.split()[-1] == "50%"
