"""helpers.load against a small aiohttp server on 127.0.0.1 that answers slowly, or with 503s.

Each test runs its own event loop (``asyncio.run``), with the server in the same loop as the
clients. Request counts and durations are small, so the whole file takes a few seconds.
"""

import asyncio
import math
import socket
import time
import warnings
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from helpers.load import LoadResult, Sample, format_table, run, run_load, run_locust


class Server:
    """What the test server was asked to do, and what it saw."""

    def __init__(self, delay_s: float, fail_every: int = 0) -> None:
        self.delay_s = delay_s  # how long each answer takes
        self.fail_every = fail_every  # answer every n-th request with 503 (0: never)
        self.slow_until = 0.0  # before this time.perf_counter(), answer in 100 ms instead
        self.retry_after: str | None = None  # the Retry-After header of a 503
        self.received = 0
        self.in_flight = 0
        self.bodies: list[bytes] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received += 1
        n = self.received
        self.in_flight += 1
        try:
            self.bodies.append(await request.read())
            slow = time.perf_counter() < self.slow_until
            await asyncio.sleep(0.1 if slow else self.delay_s)
        finally:
            self.in_flight -= 1
        if self.fail_every and n % self.fail_every == 0:
            headers = {"Retry-After": self.retry_after} if self.retry_after else None
            return web.Response(status=503, text="busy", headers=headers)
        return web.json_response({"n": n})


@asynccontextmanager
async def serving(delay_s: float = 0.02, fail_every: int = 0):
    server = Server(delay_s, fail_every)
    app = web.Application()
    app.router.add_route("*", "/", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.url = f"http://{host}:{port}/"
    try:
        yield server
    finally:
        await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_client_throughput_is_one_over_latency_and_eight_clients_scale():
    async def main():
        async with serving(delay_s=0.02) as server:
            one = await run_load(server.url, clients=1, duration_s=0.5)
            eight = await run_load(server.url, clients=8, duration_s=0.5)
            return one, eight

    one, eight = asyncio.run(main())
    assert one.statuses.keys() == {200} and eight.statuses.keys() == {200}
    assert one.error_rate == 0
    # the server sleeps 20 ms: no request is faster; a busy machine may make them slower
    assert 0.02 <= one.p50 < 0.2
    # one client, one request at a time: throughput is one over the latency, 50/s at most
    assert one.throughput <= 1 / 0.02
    assert abs(one.throughput - 1 / one.p50) < 0.3 / one.p50
    assert eight.throughput > 4 * one.throughput
    assert 0.45 < one.duration_s < 1.5
    assert one.clients == 1 and eight.clients == 8
    assert len(one.latencies_s) == one.ok == one.requests == len(one.records)


def test_requests_per_client_sends_exactly_that_many_with_bodies():
    async def main():
        async with serving(delay_s=0.001) as server:
            fixed = await run_load(server.url, clients=3, requests_per_client=5, json_body={"a": 1})
            assert server.received == 15
            assert set(server.bodies) == {b'{"a": 1}'}
            server.bodies.clear()
            made = await run_load(
                server.url, clients=2, requests_per_client=3, body_factory=lambda i: f"req-{i}"
            )
            assert sorted(server.bodies) == [f"req-{i}".encode() for i in range(6)]
            return fixed, made

    fixed, made = asyncio.run(main())
    assert fixed.requests == fixed.ok == 15 and made.requests == 6
    assert fixed.p50 <= fixed.p90 <= fixed.p99


def test_statuses_count_503s_and_unanswered_requests():
    async def main():
        async with serving(delay_s=0.002, fail_every=4) as server:
            mixed = await run_load(server.url, clients=2, requests_per_client=20)
        refused = await run_load(
            f"http://127.0.0.1:{closed_port()}/", clients=2, requests_per_client=3, timeout_s=2
        )
        return mixed, refused

    mixed, refused = asyncio.run(main())
    assert mixed.statuses == {200: 30, 503: 10}
    assert mixed.ok == len(mixed.latencies_s) == 30
    assert mixed.error_rate == pytest.approx(0.25)
    assert mixed.p50 <= mixed.p99
    assert mixed.row()["statuses"] == "200:30 503:10"

    assert refused.statuses == {0: 6}
    assert refused.ok == 0 and refused.throughput == 0 and refused.error_rate == 1
    assert math.isnan(refused.p50) and math.isnan(refused.p99)
    assert "0:6" in str(refused)


def test_a_timeout_counts_as_status_0():
    async def main():
        async with serving(delay_s=0.5) as server:
            return await run_load(server.url, clients=2, requests_per_client=1, timeout_s=0.05)

    result = asyncio.run(main())
    assert result.statuses == {0: 2}
    assert all(0.04 < r.latency_s < 0.4 for r in result.records)


def test_warmup_requests_are_left_out():
    async def main():
        async with serving(delay_s=0.01) as server:
            server.slow_until = time.perf_counter() + 0.3  # a cold start: 100 ms answers
            warmed = await run_load(server.url, clients=2, duration_s=0.3, warmup_s=0.35)
            total = server.received
            server.slow_until = time.perf_counter() + 0.3
            cold = await run_load(server.url, clients=2, duration_s=0.4)
            return warmed, total, cold

    warmed, total, cold = asyncio.run(main())
    assert warmed.warmup_requests > 0
    assert warmed.requests + warmed.warmup_requests == total
    assert max(warmed.latencies_s) < 0.08  # none of the slow warm-up answers
    assert all(r.t >= 0.35 for r in warmed.records)
    assert 0.28 < warmed.duration_s < 0.4  # the measured window, not the warm-up
    assert max(cold.latencies_s) >= 0.1  # without a warm-up the slow answers are counted


# -- shaped load with Locust, in a process of its own ---------------------------------------------

LOCUSTFILE = Path(__file__).parents[1] / "notebooks" / "locustfile.py"


def test_locust_runs_the_stages_while_the_sampler_samples():
    async def main():
        async with serving(delay_s=0.02) as server:

            async def in_flight():
                return server.in_flight

            run = await run_locust(LOCUSTFILE, server.url, [(1.5, 1), (2, 4), (1, 1)], sampler=in_flight)
            return run, server.received

    run, received = asyncio.run(main())
    assert run.totals["failures"] == 0 and run.totals["requests"] > 50
    # users stopped at the end may leave a request or two unrecorded, never more than there were users
    assert 0 <= received - run.totals["requests"] <= 4
    assert 15 <= run.totals["p50_ms"] < 100
    assert {1, 4} <= {row["users"] for row in run.history}
    assert all(isinstance(s, Sample) for s in run.samples)
    assert [s.clients for s in run.samples if s.t < 1.4] == [1, 1, 1]  # planned: 1 user
    assert max(s.value for s in run.samples if 2 < s.t < 3.5) >= 2  # the 4 users at work
    assert all(s.value <= 4 for s in run.samples)


def test_locust_users_post_the_body_and_wait_as_long_as_retry_after_says():
    async def main():
        async with serving(delay_s=0.01, fail_every=1) as server:  # every answer: 503
            server.retry_after = "0.5"
            run = await run_locust(LOCUSTFILE, server.url, [(2, 2)], method="POST", json_body={"text": "hi"})
            return run, server

    run, server = asyncio.run(main())
    # 2 users, 2 s, half a second between tries: about 8 requests, not hundreds
    assert 2 <= run.totals["requests"] <= 12 and run.totals["failures"] == run.totals["requests"]
    assert set(server.bodies) == {b'{"text": "hi"}'}
    assert "busy, retry after 0.5 s" in run.output


def test_locust_stops_when_the_sampler_fails():
    def sampler():
        raise LookupError("no replicas")

    async def main():
        async with serving(delay_s=0.01) as server:
            with pytest.raises(LookupError, match="no replicas"):
                await run_locust(LOCUSTFILE, server.url, [(30, 2)], sampler=sampler)
            sent = server.received
            await asyncio.sleep(0.3)
            assert server.received == sent  # Locust is gone

    started = time.perf_counter()
    asyncio.run(main())
    assert time.perf_counter() - started < 10


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="duration_s or requests_per_client"):
        run(run_load("http://127.0.0.1:9/", clients=1))
    with pytest.raises(ValueError, match="http"):
        run(run_load("127.0.0.1:9", clients=1, duration_s=1))
    with pytest.raises(ValueError, match="stages"):
        run(run_locust(LOCUSTFILE, "http://127.0.0.1:9/", []))
    with pytest.raises(ValueError, match="stages"):
        run(run_locust(LOCUSTFILE, "http://127.0.0.1:9/", [(0, 1)]))
    with pytest.raises(ValueError, match="http"):
        run(run_locust(LOCUSTFILE, "127.0.0.1:9", [(1, 1)]))


def test_run_runs_a_coroutine_and_refuses_inside_a_running_loop():
    async def answer():
        return 42

    assert run(answer()) == 42

    async def inside():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "coroutine was never awaited"
            with pytest.raises(RuntimeError, match="await"):
                run(answer())

    asyncio.run(inside())


def test_format_table_aligns_columns():
    rows = [
        LoadResult(1, 2.0, (0.01, 0.02), {200: 2}).row(),
        LoadResult(16, 2.0, (), {503: 120, 0: 3}).row(),
    ]
    table = format_table(rows)
    lines = table.splitlines()
    assert lines[0].split() == ["clients", "requests", "ok", "rps", "p50_ms", "p99_ms", "statuses"]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split() == ["1", "2", "2", "1.0", "15.0", "19.9", "200:2"]
    assert lines[3].split() == ["16", "123", "0", "0.0", "-", "-", "0:3", "503:120"]
    # numbers are right-aligned: each number column ends where its header ends
    for header in ["clients", "requests", "rps", "p99_ms"]:
        end = lines[0].index(header) + len(header)
        assert all(line[end - 1] != " " and line[end:end + 1] in ("", " ") for line in lines[2:])
    # text is left-aligned under its header
    start = lines[0].index("statuses")
    assert lines[2][start:].startswith("200:2") and lines[3][start:].startswith("0:3")
    assert format_table([]) == ""
    assert format_table([{"a": 1}, {"b": "x"}]).splitlines()[0].split() == ["a", "b"]
