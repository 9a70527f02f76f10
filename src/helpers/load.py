"""Load for a service: a closed-loop HTTP client on aiohttp (each of ``clients`` coroutines sends
a request, waits for the whole answer, sends the next), and shaped load with Locust::

    result = await run_load("http://127.0.0.1:8000/echo", clients=8, duration_s=5, json_body={"text": "hi"})
    print(result)                     # one line: requests, rps, p50, p99, statuses
    print(pandas.DataFrame([result.row()]).to_string(index=False))

In Jupyter ``await`` the coroutines, as here; from plain Python use :func:`run`:
``run(run_load(url, clients=8, requests_per_client=100))``. :func:`run_locust` runs Locust in a
process of its own on ``notebooks/locustfile.py`` (users in stages), samples a value meanwhile::

    ramp = await run_locust("locustfile.py", url, [(20, 1), (40, 16), (30, 1)], sampler=count_replicas)
    ramp.history                      # one row a second: users, requests/s, failures/s, p50, p99
"""

from __future__ import annotations

import asyncio
import csv
import inspect
import itertools
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import aiohttp
import numpy as np
from yarl import URL

T = TypeVar("T")


class Record(NamedTuple):  # one request of run_load
    t: float  # seconds since the run started, when the request was sent
    latency_s: float  # until the whole answer was read (or the error happened)
    status: int  # HTTP status, or 0 when no answer came (refused, reset, timed out)


class Sample(NamedTuple):  # one call of run_locust's sampler; unpacks as (t, clients, value)
    t: float  # seconds since Locust was started, when the sampler was called
    clients: int  # the users the stages ask for at that moment
    value: Any  # what the sampler returned (None without a sampler)


@dataclass(frozen=True)
class LoadResult:  # statistics of one measured window of run_load
    clients: int
    duration_s: float  # measured wall time of the window (warm-up excluded)
    latencies_s: tuple[float, ...]  # of the successful (2xx) requests, one each
    statuses: Counter[int]  # HTTP status -> count; 0 counts requests that got no answer
    records: tuple[Record, ...] = field(default=(), repr=False)  # every measured request
    warmup_requests: int = 0  # sent during the warm-up, left out of everything above

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:  # requests answered with a 2xx status
        return len(self.latencies_s)

    @property
    def throughput(self) -> float:  # successful requests per second
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) of the successful latencies, in seconds; NaN if none."""
        return float(np.percentile(self.latencies_s, q)) if self.latencies_s else math.nan

    p50 = property(lambda self: self.percentile(50))  # the median latency, in seconds
    p99 = property(lambda self: self.percentile(99))

    @property
    def error_rate(self) -> float:  # the share of requests without a 2xx answer; NaN if none was sent
        return (self.requests - self.ok) / self.requests if self.requests else math.nan

    def row(self) -> dict[str, Any]:  # a table's row: pandas.DataFrame([r.row() for r in results])
        return {"clients": self.clients, "requests": self.requests, "ok": self.ok, "rps": round(self.throughput, 1),
                "p50_ms": round(self.p50 * 1000, 1), "p99_ms": round(self.p99 * 1000, 1),
                "statuses": " ".join(f"{status}:{n}" for status, n in sorted(self.statuses.items()))}  # fmt: skip

    def __str__(self) -> str:
        return (f"{self.clients} clients: {self.requests} requests ({self.ok} ok) in {self.duration_s:.2f} s, "
                f"{self.throughput:.1f} req/s, p50 {self.p50 * 1000:.1f} ms, p99 {self.p99 * 1000:.1f} ms, "
                f"statuses {self.row()['statuses'] or '-'}")  # fmt: skip


def _check_url(url: str) -> None:
    if URL(url).scheme not in ("http", "https") or not URL(url).host:
        raise ValueError(f"not an http(s) URL: {url!r}")


async def run_load(
    url: str, *, clients: int, duration_s: float | None = None, requests_per_client: int | None = None,
    method: str = "POST", json_body: Any = None, body_factory: Callable[[int], Any] | None = None,
    timeout_s: float = 30, warmup_s: float = 0.0, headers: Mapping[str, str] | None = None,
) -> LoadResult:  # fmt: skip
    """Run ``clients`` closed-loop clients against ``url``. Requests sent in the first ``warmup_s`` s are
    not measured; then each client sends until ``duration_s`` has passed (requests in flight are awaited
    and counted) or it has sent ``requests_per_client``, whichever comes first. The body: ``json_body``
    (as JSON), or ``body_factory(i)`` for the i-th request (0, 1, ... over all clients, warm-up included;
    ``bytes``/``str`` as they are, anything else as JSON). No answer within ``timeout_s`` (or at all)
    counts as status 0. ``duration_s`` of the result: from the warm-up's end to the last answer."""
    _check_url(url)
    if duration_s is None and requests_per_client is None:
        raise ValueError("give duration_s or requests_per_client (or both)")
    if clients < 1 or (duration_s is not None and duration_s <= 0) or (requests_per_client or 0) < 0:
        raise ValueError("need clients >= 1, duration_s > 0, requests_per_client >= 0")
    if json_body is not None and body_factory is not None:
        raise ValueError("give json_body or body_factory, not both")
    per_client = math.inf if requests_per_client is None else requests_per_client
    numbers = itertools.count()  # for body_factory
    warmup, measured = [], []  # the Records of each part
    connector, timeout = aiohttp.TCPConnector(limit=clients), aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = time.perf_counter()
        measure_from = t0 + warmup_s
        deadline = math.inf if duration_s is None else measure_from + duration_s

        async def send() -> Record:
            body = json_body if body_factory is None else body_factory(next(numbers))
            as_is = body_factory is not None and isinstance(body, (bytes, str))  # else as JSON
            kwargs = {} if body is None else {"data" if as_is else "json": body}
            start = time.perf_counter()
            try:
                async with session.request(method, url, headers=headers, **kwargs) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                status = 0
            return Record(start - t0, time.perf_counter() - start, status)

        async def client() -> None:
            while time.perf_counter() < measure_from:
                warmup.append(await send())
            sent = 0
            while sent < per_client and time.perf_counter() < deadline:
                measured.append(await send())
                sent += 1

        await asyncio.gather(*(client() for _ in range(clients)))
        duration = max(time.perf_counter() - measure_from, 0.0)
    latencies = tuple(r.latency_s for r in measured if 200 <= r.status < 300)
    return LoadResult(clients, duration, latencies, Counter(r.status for r in measured), tuple(measured), len(warmup))


@dataclass(frozen=True)
class LocustRun:  # what run_locust saw; times are seconds since Locust was started
    history: tuple[dict[str, float], ...]  # one row a second: t, users, rps, failures_per_s, p50_ms, p99_ms
    totals: dict[str, float]  # requests, failures, rps, p50_ms, p99_ms over the whole run
    samples: tuple[Sample, ...]  # the sampler's values; clients: the users planned at that time
    output: str = field(repr=False)  # what Locust printed (its summary)


def _number(text: str) -> float:
    return math.nan if text == "N/A" else float(text)  # N/A: a percentile before the first answer


async def run_locust(
    locustfile: str | os.PathLike[str], url: str, stages: Sequence[tuple[float, int]], *, method: str = "GET",
    json_body: Any = None, sampler: Callable[[], Awaitable[Any] | Any] | None = None, sample_every_s: float = 0.5,
) -> LocustRun:  # fmt: skip
    """Run Locust headless on ``locustfile`` (``notebooks/locustfile.py``) in a process of its own
    with ``stages`` of ``(seconds, users)``; meanwhile call ``sampler`` (plain, then in a thread so
    that it cannot stall the event loop, or async; e.g. one that counts replicas) every
    ``sample_every_s`` seconds, and stop Locust if it raises. Statistics come from Locust's CSV
    files. Locust counts a 429 or 503 as a failure; its users then wait for ``Retry-After``."""
    _check_url(url)
    stages = [(float(seconds), int(users)) for seconds, users in stages]
    if not stages or any(seconds <= 0 or users < 0 for seconds, users in stages) or sample_every_s <= 0:
        raise ValueError("need stages: one or more (seconds > 0, users >= 0), and sample_every_s > 0")
    ends = list(itertools.accumulate(seconds for seconds, _ in stages))  # when each stage ends
    target = URL(url)
    env = {**os.environ, "LOAD_STAGES": json.dumps(stages), "LOAD_PATH": target.path_qs or "/",
           "LOAD_METHOD": method, "LOAD_BODY": "" if json_body is None else json.dumps(json_body)}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="locust-") as folder:
        prefix = os.path.join(folder, "run")
        command = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--host", str(target.origin()),
                   "--csv", prefix, "--csv-full-history", "--only-summary", "--exit-code-on-error", "0"]  # fmt: skip
        t0 = time.time()
        locust = await asyncio.create_subprocess_exec(*command, env=env, stdout=asyncio.subprocess.PIPE,
                                                      stderr=asyncio.subprocess.STDOUT)  # fmt: skip
        finished = asyncio.ensure_future(locust.communicate())
        samples: list[Sample] = []
        deadline = time.monotonic() + ends[-1] + 60
        try:
            while not finished.done():
                if time.monotonic() > deadline:
                    raise TimeoutError("Locust did not stop a minute after its last stage")
                t = time.time() - t0
                planned = next((users for (_, users), end in zip(stages, ends) if t < end), 0)
                value = None if sampler is None else await asyncio.to_thread(sampler)
                if inspect.isawaitable(value):  # an async sampler's coroutine: run it on this loop
                    value = await value
                samples.append(Sample(t, planned, value))
                await asyncio.wait([finished], timeout=sample_every_s)
        finally:
            if locust.returncode is None:
                locust.kill()
            output = (await finished)[0].decode(errors="replace")
        if locust.returncode != 0:
            raise RuntimeError(f"locust exited with {locust.returncode}:\n{output[-3000:]}")
        with open(f"{prefix}_stats_history.csv", newline="") as f:  # "Aggregated": all requests together
            history = tuple({"t": float(r["Timestamp"]) - t0, "users": int(r["User Count"]),
                             "rps": _number(r["Requests/s"]), "failures_per_s": _number(r["Failures/s"]),
                             "p50_ms": _number(r["50%"]), "p99_ms": _number(r["99%"])}
                            for r in csv.DictReader(f) if r["Name"] == "Aggregated")  # fmt: skip
        with open(f"{prefix}_stats.csv", newline="") as f:
            total = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    totals = {"requests": int(total["Request Count"]), "failures": int(total["Failure Count"]),
              "rps": _number(total["Requests/s"]), "p50_ms": _number(total["50%"]),
              "p99_ms": _number(total["99%"])}  # fmt: skip
    return LocustRun(history, totals, tuple(samples), output)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)`` for synchronous code; in Jupyter (a loop already runs) ``await`` it instead."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()  # not awaited: close it to avoid a "never awaited" warning
    raise RuntimeError("an event loop is already running (as in Jupyter): `await` the coroutine instead of run()")
