"""helpers.load against a small aiohttp server on 127.0.0.1 that answers slowly, or with 503s.

Each test runs its own event loop (``asyncio.run``), with the server in the same loop as the
clients. Request counts and durations are small, so the whole file takes a few seconds. The
checks hold on a busy machine: they compare runs with each other, or bound what a slow machine
can only make larger (or smaller), never how long something takes.
"""

import asyncio
import math
import socket
import time
import warnings
from contextlib import asynccontextmanager
from pathlib import Path

import psutil
import pytest
from aiohttp import web

from helpers.load import Sample, run, run_load, run_locust


class Server:
    """What the test server was asked to do, and what it saw."""

    def __init__(self, delay_s: float, fail_every: int = 0) -> None:
        self.delay_s = delay_s  # how long each answer takes
        self.fail_every = fail_every  # answer every n-th request with 503 (0: never)
        self.cold_until = 0.0  # before this time.perf_counter(), answer 503 (a cold start)
        self.retry_after: str | None = None  # the Retry-After header of a 503
        self.received = 0
        self.in_flight = 0
        self.bodies: list[bytes] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received += 1
        n = self.received
        cold = time.perf_counter() < self.cold_until
        self.in_flight += 1
        try:
            self.bodies.append(await request.read())
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        if cold or (self.fail_every and n % self.fail_every == 0):
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


def test_eight_clients_get_several_times_the_throughput_of_one_from_a_sleeping_server():
    async def main():
        async with serving(delay_s=0.05) as server:
            one = await run_load(server.url, clients=1, duration_s=0.6)
            eight = await run_load(server.url, clients=8, duration_s=0.6)
            return one, eight

    one, eight = asyncio.run(main())
    assert one.statuses.keys() == eight.statuses.keys() == {200} and one.error_rate == 0
    assert one.clients == 1 and eight.clients == 8
    assert len(one.latencies_s) == one.ok == one.requests == len(one.records)
    # the server sleeps 50 ms: no answer comes sooner (a busy machine only makes them later)
    assert min(one.latencies_s + eight.latencies_s) >= 0.049
    # the server sleeps concurrently: 8 clients, up to 8 times the requests per second of one
    assert eight.throughput > 3 * one.throughput
    # one client sends the next request as soon as it has an answer: its latencies fill the window
    assert 0.8 < sum(one.latencies_s) / one.duration_s <= 1 + 1e-6
    for result in (one, eight):
        # sent within the 0.6 s; the window lasts until the last answer is in
        assert all(r.t < 0.6 for r in result.records)
        assert result.duration_s >= 0.6 - 1e-6
        assert max(r.t + r.latency_s for r in result.records) <= result.duration_s + 1e-6


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
            server.bodies.clear()
            await run_load(server.url, clients=1, requests_per_client=1, json_body="hi")  # JSON, quoted
            assert server.bodies == [b'"hi"']
            return fixed, made

    fixed, made = asyncio.run(main())
    assert fixed.requests == fixed.ok == 15 and made.requests == 6
    assert fixed.p50 <= fixed.percentile(90) <= fixed.p99


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
    assert mixed.row()["statuses"] == "200:30 503:10" and "statuses 200:30 503:10" in str(mixed)

    assert refused.statuses == {0: 6}
    assert refused.ok == 0 and refused.throughput == 0 and refused.error_rate == 1
    assert math.isnan(refused.p50) and math.isnan(refused.p99)
    assert "0:6" in str(refused)


def test_a_timeout_counts_as_status_0():
    async def main():
        async with serving(delay_s=0.5) as server:
            return await run_load(server.url, clients=2, requests_per_client=1, timeout_s=0.05)

    result = asyncio.run(main())
    # status 0: no answer, though the server answers (200) after 0.5 s; and not at once, as
    # for a refused connection: the client waited for the timeout
    assert result.statuses == {0: 2}
    assert all(r.latency_s >= 0.049 for r in result.records)


def test_warmup_requests_are_left_out():
    async def main():
        async with serving(delay_s=0.01) as server:
            server.cold_until = time.perf_counter() + 0.2
            warmed = await run_load(server.url, clients=2, duration_s=0.3, warmup_s=0.25)
            total = server.received
            server.cold_until = time.perf_counter() + 0.2
            cold = await run_load(server.url, clients=2, duration_s=0.3)
            return warmed, total, cold

    warmed, total, cold = asyncio.run(main())
    assert warmed.warmup_requests > 0
    assert warmed.requests + warmed.warmup_requests == total
    assert set(warmed.statuses) == {200}  # none of the cold start's 503s
    assert 503 in cold.statuses  # without a warm-up they are counted
    # every measured request was sent after the warm-up; the window runs from its end
    assert all(r.t >= 0.25 for r in warmed.records)
    last_answer = max(r.t + r.latency_s for r in warmed.records)  # since the start, warm-up included
    assert warmed.duration_s >= 0.3 - 1e-6 and warmed.duration_s < last_answer


# -- shaped load with Locust, in a process of its own ---------------------------------------------

LOCUSTFILE = Path(__file__).parents[1] / "notebooks" / "locustfile.py"


def planned_users(t: float) -> int:
    """The users of the stages [(1.5, 1), (2, 4), (1, 1)] at t seconds."""
    return 1 if t < 1.5 else 4 if t < 3.5 else 1 if t < 4.5 else 0


def test_locust_runs_the_stages_while_the_sampler_samples():
    async def main():
        async with serving(delay_s=0.02) as server:

            async def in_flight():
                return server.in_flight

            run = await run_locust(LOCUSTFILE, server.url, [(1.5, 1), (2, 4), (1, 1)], sampler=in_flight)
            return run, server.received

    run, received = asyncio.run(main())
    assert run.totals["failures"] == 0 and run.totals["requests"] > 50
    # a user stopped (4 -> 1 users, and at the end) may leave its request in flight unrecorded
    assert 0 <= received - run.totals["requests"] <= max(8, 0.02 * received)
    assert run.totals["p50_ms"] >= 19  # the server sleeps 20 ms
    assert {1, 4} <= {row["users"] for row in run.history}
    assert [s.clients for s in run.samples] == [planned_users(s.t) for s in run.samples]
    assert run.samples[0] == Sample(run.samples[0].t, 1, 0)  # Locust is still starting
    assert max(s.value for s in run.samples) >= 2  # the 4 users at work
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


def locust_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "locust" in process.cmdline():
                found.append(process)
        except psutil.NoSuchProcess:
            pass
    return found


def test_locust_stops_when_the_sampler_fails():
    async def main():
        async with serving(delay_s=0.01) as server:

            def sampler():  # a plain one, called in a thread
                if server.received:
                    raise LookupError("no replicas")
                return 0

            with pytest.raises(LookupError, match="no replicas"):
                await run_locust(LOCUSTFILE, server.url, [(60, 2)], sampler=sampler, sample_every_s=0.1)
            assert locust_processes() == []  # killed, and waited for

    started = time.perf_counter()
    asyncio.run(main())
    assert time.perf_counter() - started < 30  # not the 60 s of its stage


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="duration_s or requests_per_client"):
        run(run_load("http://127.0.0.1:9/", clients=1))
    with pytest.raises(ValueError, match="clients >= 1"):
        run(run_load("http://127.0.0.1:9/", clients=0, duration_s=1))
    with pytest.raises(ValueError, match="json_body or body_factory"):
        run(run_load("http://127.0.0.1:9/", clients=1, duration_s=1, json_body={}, body_factory=str))
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
