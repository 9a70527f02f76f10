"""A small closed-loop HTTP load generator on aiohttp: throughput, latency percentiles, statuses.

``clients`` coroutines each send a request, wait for the whole answer, and send the next one,
so at most ``clients`` requests are in flight at any time (a *closed* loop, like users who
wait for an answer before asking again)::

    result = await run_load("http://127.0.0.1:8000/echo", clients=8, duration_s=5,
                            json_body={"text": "hi"}, warmup_s=1)
    print(result)                     # one line: requests, rps, p50, p99, statuses
    print(format_table([result.row()]))

In Jupyter (which already runs an event loop) ``await`` the coroutines directly, as above.
From plain Python (a script, ``make bench``) wrap them in :func:`run`::

    result = run(run_load(url, clients=8, requests_per_client=100))

For shaped load (users that come and go in stages, as in an autoscaling demo) this module
does not grow its own: :func:`run_locust` runs Locust headless in a process of its own on
``notebooks/locustfile.py``, samples a value (the number of replicas) meanwhile, and reads
Locust's statistics from the CSV files it writes::

    ramp = await run_locust("locustfile.py", url, [(20, 1), (40, 16), (30, 1)], sampler=count_replicas)
    ramp.history                      # one row a second: users, requests/s, failures/s, p50, p99
"""

from __future__ import annotations

import asyncio
import csv
import inspect
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


class Record(NamedTuple):
    """One request."""

    t: float  # seconds since the run started, when the request was sent
    latency_s: float  # until the whole answer was read (or the error happened)
    status: int  # HTTP status, or 0 when no answer came (refused, reset, timed out)


class Sample(NamedTuple):
    """One call of run_locust's ``sampler``; unpacks as ``(t, clients, value)``."""

    t: float  # seconds since Locust was started, when the sampler was called
    clients: int  # the users the stages ask for at that moment
    value: Any  # what the sampler returned (None without a sampler)


def _ok(status: int) -> bool:
    return 200 <= status < 300


@dataclass(frozen=True)
class LoadResult:
    """Statistics of one measured window. Latencies are of successful (2xx) requests only."""

    clients: int
    duration_s: float  # measured wall time of the window (warm-up excluded)
    latencies_s: tuple[float, ...]
    statuses: Counter[int]  # HTTP status -> count; 0 counts requests that got no answer
    records: tuple[Record, ...] = field(default=(), repr=False)  # every measured request
    warmup_requests: int = 0  # sent during the warm-up, left out of everything above

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        """Requests answered with a 2xx status."""
        return sum(n for status, n in self.statuses.items() if _ok(status))

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) of the successful latencies, in seconds; NaN if none."""
        if not self.latencies_s:
            return math.nan
        return float(np.percentile(self.latencies_s, q))

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p90(self) -> float:
        return self.percentile(90)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def error_rate(self) -> float:
        """The fraction of requests that did not get a 2xx answer; NaN if none was sent."""
        return (self.requests - self.ok) / self.requests if self.requests else math.nan

    def row(self) -> dict[str, Any]:
        """One row for :func:`format_table` (or a pandas DataFrame)."""
        return {
            "clients": self.clients,
            "requests": self.requests,
            "ok": self.ok,
            "rps": round(self.throughput, 1),
            "p50_ms": round(self.p50 * 1000, 1),
            "p99_ms": round(self.p99 * 1000, 1),
            "statuses": _format_statuses(self.statuses),
        }

    def __str__(self) -> str:
        return (
            f"{self.clients} clients: {self.requests} requests ({self.ok} ok) in "
            f"{self.duration_s:.2f} s, {self.throughput:.1f} req/s, "
            f"p50 {self.p50 * 1000:.1f} ms, p99 {self.p99 * 1000:.1f} ms, "
            f"statuses {_format_statuses(self.statuses) or '-'}"
        )


def _format_statuses(statuses: Mapping[int, int]) -> str:
    return " ".join(f"{status}:{n}" for status, n in sorted(statuses.items()))


def _summarize(
    records: Sequence[Record], clients: int, duration_s: float, warmup_requests: int = 0
) -> LoadResult:
    return LoadResult(
        clients=clients,
        duration_s=duration_s,
        latencies_s=tuple(r.latency_s for r in records if _ok(r.status)),
        statuses=Counter(r.status for r in records),
        records=tuple(records),
        warmup_requests=warmup_requests,
    )


class _Sender:
    """Sends one request at a time for a client; shared by all clients of a run."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        method: str,
        json_body: Any,
        body_factory: Callable[[int], Any] | None,
        headers: Mapping[str, str] | None,
        t0: float,
    ) -> None:
        self.session, self.url, self.method = session, url, method
        self.json_body, self.body_factory, self.headers = json_body, body_factory, headers
        self.t0 = t0
        self.sent = 0  # numbers the requests for body_factory

    async def send(self) -> Record:
        kwargs: dict[str, Any] = {}
        if self.body_factory is not None:
            body = self.body_factory(self.sent)
            kwargs["data" if isinstance(body, (bytes, str)) else "json"] = body
        elif self.json_body is not None:
            kwargs["json"] = self.json_body
        self.sent += 1
        start = time.perf_counter()
        try:
            async with self.session.request(
                self.method, self.url, headers=self.headers, **kwargs
            ) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            status = 0
        end = time.perf_counter()
        return Record(start - self.t0, end - start, status)


def _check_url(url: str) -> None:
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"not an http(s) URL: {url!r}")


def _session(timeout_s: float, limit: int) -> aiohttp.ClientSession:
    # limit=0 means no limit; limit_per_host defaults to no limit as well.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


async def run_load(
    url: str,
    *,
    clients: int,
    duration_s: float | None = None,
    requests_per_client: int | None = None,
    method: str = "POST",
    json_body: Any = None,
    body_factory: Callable[[int], Any] | None = None,
    timeout_s: float = 30,
    warmup_s: float = 0.0,
    headers: Mapping[str, str] | None = None,
) -> LoadResult:
    """Run ``clients`` closed-loop clients against ``url`` and measure what they see.

    Args:
        url: the http(s) URL every request goes to.
        clients: concurrent clients; each has at most one request in flight. The session's
            connection pool has exactly ``clients`` connections, so no request waits for one.
        duration_s: how long to measure, in seconds, *after* the warm-up. Clients send no new
            request after that; requests in flight are awaited and counted.
        requests_per_client: how many measured requests each client sends. With both limits,
            a client stops at whichever comes first; at least one is required.
        method: the HTTP method.
        json_body: a JSON body sent with every request.
        body_factory: called with the request's number (0, 1, 2, ... across all clients,
            warm-up included) for a body per request: ``bytes``/``str`` are sent as they are,
            anything else as JSON. Not together with ``json_body``.
        timeout_s: the limit for one request, answer included; past it the request counts as
            status 0.
        warmup_s: first send requests for this many seconds without measuring them (e.g. to
            open connections and warm caches). A request belongs to the warm-up when it was
            sent within it.
        headers: extra HTTP headers for every request.

    Returns a :class:`LoadResult` of the measured requests. Its ``duration_s`` runs from the
    end of the warm-up until the last measured answer arrived.

    In Jupyter ``await`` it; from synchronous code use ``run(run_load(...))``.
    """
    _check_url(url)
    if clients < 1:
        raise ValueError("clients must be at least 1")
    if duration_s is None and requests_per_client is None:
        raise ValueError("give duration_s or requests_per_client (or both)")
    if duration_s is not None and duration_s <= 0:
        raise ValueError("duration_s must be positive")
    if requests_per_client is not None and requests_per_client < 0:
        raise ValueError("requests_per_client must not be negative")
    if json_body is not None and body_factory is not None:
        raise ValueError("give json_body or body_factory, not both")

    warmup: list[Record] = []
    measured: list[Record] = []
    async with _session(timeout_s, limit=clients) as session:
        t0 = time.perf_counter()
        sender = _Sender(session, url, method, json_body, body_factory, headers, t0)
        measure_from = t0 + warmup_s
        deadline = math.inf if duration_s is None else measure_from + duration_s

        async def client() -> None:
            while time.perf_counter() < measure_from:
                warmup.append(await sender.send())
            sent = 0
            while time.perf_counter() < deadline and (
                requests_per_client is None or sent < requests_per_client
            ):
                measured.append(await sender.send())
                sent += 1

        await asyncio.gather(*(client() for _ in range(clients)))
        ended = time.perf_counter()
    return _summarize(measured, clients, max(ended - measure_from, 0.0), len(warmup))


async def _call_sampler(sampler: Callable[[], Awaitable[Any] | Any]) -> Any:
    """Await an async sampler; run a plain one in a thread so that it cannot stall the clients."""
    if inspect.iscoroutinefunction(sampler) or inspect.iscoroutinefunction(
        getattr(sampler, "__call__", None)
    ):
        return await sampler()  # type: ignore[misc]
    value = await asyncio.to_thread(sampler)
    if inspect.isawaitable(value):
        value = await value
    return value


@dataclass(frozen=True)
class LocustRun:
    """What :func:`run_locust` saw. Times are seconds since Locust was started."""

    history: tuple[dict[str, float], ...]  # one row a second: t, users, rps, failures_per_s, p50_ms, p99_ms
    totals: dict[str, float]  # requests, failures, rps, p50_ms, p99_ms over the whole run
    samples: tuple[Sample, ...]  # the sampler's values; clients: the users planned at that time
    output: str = field(repr=False)  # what Locust printed (its summary)


def _planned_users(stages: Sequence[tuple[float, int]], t: float) -> int:
    end = 0.0
    for seconds, users in stages:
        end += seconds
        if t < end:
            return users
    return 0


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "N/A" before the first answer
        return math.nan


def _read_locust_csv(prefix: str, t0: float) -> tuple[tuple[dict[str, float], ...], dict[str, float]]:
    with open(f"{prefix}_stats_history.csv", newline="") as f:
        history = tuple(
            {
                "t": float(row["Timestamp"]) - t0,
                "users": int(row["User Count"]),
                "rps": _number(row["Requests/s"]),
                "failures_per_s": _number(row["Failures/s"]),
                "p50_ms": _number(row["50%"]),
                "p99_ms": _number(row["99%"]),
            }
            for row in csv.DictReader(f)
            if row["Name"] == "Aggregated"
        )
    with open(f"{prefix}_stats.csv", newline="") as f:
        total = next(row for row in csv.DictReader(f) if row["Name"] == "Aggregated")
    totals = {
        "requests": int(total["Request Count"]),
        "failures": int(total["Failure Count"]),
        "rps": _number(total["Requests/s"]),
        "p50_ms": _number(total["50%"]),
        "p99_ms": _number(total["99%"]),
    }
    return history, totals


async def run_locust(
    locustfile: str | os.PathLike[str],
    url: str,
    stages: Sequence[tuple[float, int]],
    *,
    method: str = "GET",
    json_body: Any = None,
    sampler: Callable[[], Awaitable[Any] | Any] | None = None,
    sample_every_s: float = 0.5,
) -> LocustRun:
    """Run Locust headless on ``locustfile`` (``notebooks/locustfile.py``) in a process of its
    own, with ``stages`` of ``(seconds, users)``, and sample a value meanwhile.

    ``sampler`` (plain or async, e.g. one that counts replicas) is called every
    ``sample_every_s`` seconds while Locust runs. Locust's statistics are read from the CSV
    files it writes: one row a second (users, requests/s, failures/s, percentiles) and the
    totals. Locust counts a 429 or 503 as a failure; its users then wait for ``Retry-After``.
    """
    _check_url(url)
    stages = [(float(seconds), int(users)) for seconds, users in stages]
    if not stages or any(seconds <= 0 or users < 0 for seconds, users in stages):
        raise ValueError("stages: one or more (seconds > 0, users >= 0)")
    if sample_every_s <= 0:
        raise ValueError("sample_every_s must be positive")
    target = URL(url)
    env = {
        **os.environ,
        "LOAD_STAGES": json.dumps(stages),
        "LOAD_PATH": target.path_qs or "/",
        "LOAD_METHOD": method,
        "LOAD_BODY": "" if json_body is None else json.dumps(json_body),
    }
    with tempfile.TemporaryDirectory(prefix="locust-") as folder:
        prefix = os.path.join(folder, "run")
        command = [
            sys.executable, "-m", "locust", "-f", str(locustfile), "--headless",
            "--host", str(target.origin()), "--csv", prefix, "--csv-full-history",
            "--only-summary", "--exit-code-on-error", "0",
        ]  # fmt: skip
        t0 = time.time()
        locust = await asyncio.create_subprocess_exec(
            *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        finished = asyncio.ensure_future(locust.communicate())
        samples: list[Sample] = []
        deadline = time.monotonic() + sum(seconds for seconds, _ in stages) + 60
        try:
            while not finished.done():
                if time.monotonic() > deadline:
                    raise TimeoutError("Locust did not stop a minute after its last stage")
                t = time.time() - t0
                value = None if sampler is None else await _call_sampler(sampler)
                samples.append(Sample(t, _planned_users(stages, t), value))
                await asyncio.wait([finished], timeout=sample_every_s)
        finally:
            if locust.returncode is None:
                locust.kill()
            output = (await finished)[0].decode(errors="replace")
        if locust.returncode != 0:
            raise RuntimeError(f"locust exited with {locust.returncode}:\n{output[-3000:]}")
        history, totals = _read_locust_csv(prefix, t0)
    return LocustRun(history, totals, tuple(samples), output)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine such as ``run_load(...)`` from synchronous code, with ``asyncio.run``.

    Inside Jupyter, whose event loop is already running, ``await run_load(...)`` instead.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()  # not awaited: close it to avoid a "never awaited" warning
    raise RuntimeError(
        "an event loop is already running (as in Jupyter): `await` the coroutine instead of run()"
    )


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Lay out rows (e.g. :meth:`LoadResult.row` dicts) as a plain-text table.

    Columns appear in the order their keys first appear; numbers are right-aligned (floats
    with one decimal, NaN as ``-``), everything else is left-aligned; a missing value is blank.
    """
    if not rows:
        return ""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)

    def is_number(value: Any) -> bool:
        return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, (float, np.floating)):
            return "-" if math.isnan(value) else f"{value:.1f}"
        return str(value)

    cells = [[cell(row.get(col)) for col in columns] for row in rows]
    right = [
        all(is_number(row[col]) for row in rows if row.get(col) is not None) for col in columns
    ]
    widths = [max(len(col), *(len(line[i]) for line in cells)) for i, col in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(columns), rule, *(line(c) for c in cells)])
