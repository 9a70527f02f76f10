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

:func:`run_ramp` changes the number of clients in stages (for an autoscaling demo) and
samples a value, such as the number of replicas, while it runs::

    ramp = await run_ramp(url, [(20, 1), (40, 16), (30, 1)], sampler=count_replicas)
    print(ramp)                       # a table: one row per stage
"""

from __future__ import annotations

import asyncio
import inspect
import math
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
    stage: int = 0  # run_ramp: the stage during which the request was sent


class Sample(NamedTuple):
    """One call of run_ramp's ``sampler``; unpacks as ``(t, clients, value)``."""

    t: float  # seconds since the ramp started, when the sampler was called
    clients: int  # clients running at that moment
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

    async def send(self, stage: int = 0) -> Record:
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
        return Record(start - self.t0, end - start, status, stage)


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


@dataclass(frozen=True)
class RampResult:
    """What :func:`run_ramp` saw. Times are seconds since the ramp started."""

    stages: tuple[tuple[float, int], ...]  # as asked: (seconds, clients)
    stage_starts: tuple[float, ...]  # when each stage actually started
    ended_at: float  # when the last stage ended (clients stopped sending)
    duration_s: float  # until the last answer arrived
    records: tuple[Record, ...] = field(repr=False)  # every request, Record.stage set
    samples: tuple[Sample, ...] = field(repr=False)

    def per_stage(self) -> list[LoadResult]:
        """One :class:`LoadResult` per stage, of the requests sent during it.

        A stage's ``duration_s`` is its measured length, from its start to the next one's.
        """
        ends = self.stage_starts[1:] + (self.ended_at,)
        by_stage: list[list[Record]] = [[] for _ in self.stages]
        for r in self.records:
            by_stage[r.stage].append(r)
        return [
            _summarize(records, clients, end - start)
            for records, (_, clients), start, end in zip(
                by_stage, self.stages, self.stage_starts, ends
            )
        ]

    def rows(self) -> list[dict[str, Any]]:
        """One :meth:`LoadResult.row` per stage, with the stage's number and length."""
        return [
            {"stage": i, "seconds": seconds, **result.row()}
            for i, ((seconds, _), result) in enumerate(zip(self.stages, self.per_stage()))
        ]

    def __str__(self) -> str:
        return format_table(self.rows())


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


async def run_ramp(
    url: str,
    stages: Sequence[tuple[float, int]],
    *,
    sample_every_s: float = 0.5,
    sampler: Callable[[], Awaitable[Any] | Any] | None = None,
    **kwargs: Any,
) -> RampResult:
    """Run closed-loop clients whose number changes in stages, and sample a value meanwhile.

    Args:
        url: the http(s) URL every request goes to.
        stages: ``(seconds, clients)`` pairs, run one after the other. At a stage boundary new
            clients start, or surplus clients stop (the newest first): a stopping client sends
            no new request, but the answer to the one in flight is still awaited and recorded.
        sample_every_s: how often to call ``sampler``.
        sampler: a function (plain or async) called every ``sample_every_s`` seconds, e.g. one
            that returns the number of replicas. Each call is recorded as
            ``Sample(t, clients, value)``; without a sampler, the samples record the number of
            clients only (``value`` None). A plain function runs in a thread, so a slow
            one does not delay the clients (ticks it misses are skipped); a call under way
            when the last stage ends is awaited and kept. An exception from the sampler ends
            the ramp (its clients are cancelled) and is raised.
        **kwargs: request options as for :func:`run_load`: ``method``, ``json_body``,
            ``body_factory``, ``timeout_s``, ``headers``.

    The connection pool has no limit here: the clients themselves bound the concurrency
    (stopping clients may briefly overlap with the next stage's new ones).

    In Jupyter ``await`` it; from synchronous code use ``run(run_ramp(...))``.
    """
    _check_url(url)
    stages = tuple((float(seconds), int(clients)) for seconds, clients in stages)
    if not stages:
        raise ValueError("stages must not be empty")
    if any(seconds <= 0 or clients < 0 for seconds, clients in stages):
        raise ValueError("each stage needs seconds > 0 and clients >= 0")
    if sample_every_s <= 0:
        raise ValueError("sample_every_s must be positive")
    unknown = set(kwargs) - {"method", "json_body", "body_factory", "timeout_s", "headers"}
    if unknown:
        raise TypeError(f"run_ramp() got unexpected keyword arguments: {sorted(unknown)}")
    if kwargs.get("json_body") is not None and kwargs.get("body_factory") is not None:
        raise ValueError("give json_body or body_factory, not both")

    records: list[Record] = []
    samples: list[Sample] = []
    stage_starts: list[float] = []
    stage = 0
    running: list[tuple[asyncio.Task[None], asyncio.Event]] = []  # clients still sending
    all_clients: list[asyncio.Task[None]] = []

    async with _session(kwargs.get("timeout_s", 30), limit=0) as session:
        t0 = time.perf_counter()
        sender = _Sender(
            session,
            url,
            kwargs.get("method", "POST"),
            kwargs.get("json_body"),
            kwargs.get("body_factory"),
            kwargs.get("headers"),
            t0,
        )

        async def client(stop: asyncio.Event) -> None:
            while not stop.is_set():
                records.append(await sender.send(stage))

        def set_clients(n: int) -> None:
            while len(running) < n:
                stop = asyncio.Event()
                task = asyncio.ensure_future(client(stop))
                running.append((task, stop))
                all_clients.append(task)
            while len(running) > n:
                running.pop()[1].set()

        stop_sampling = asyncio.Event()

        async def sample_until_stopped() -> None:
            tick = t0
            while not stop_sampling.is_set():
                t = time.perf_counter() - t0
                clients = len(running)
                value = None if sampler is None else await _call_sampler(sampler)
                samples.append(Sample(t, clients, value))
                tick += sample_every_s
                now = time.perf_counter()
                while tick <= now:  # a slow sampler: skip the ticks it missed
                    tick += sample_every_s
                try:
                    await asyncio.wait_for(stop_sampling.wait(), tick - now)
                except asyncio.TimeoutError:
                    pass

        sampling: asyncio.Task[None] | None = None
        try:
            stage_end = t0
            for stage, (seconds, clients) in enumerate(stages):
                stage_starts.append(time.perf_counter() - t0)
                set_clients(clients)
                if sampling is None:
                    sampling = asyncio.ensure_future(sample_until_stopped())
                stage_end += seconds
                await asyncio.wait([sampling], timeout=max(stage_end - time.perf_counter(), 0))
                if sampling.done():
                    sampling.result()  # raise the sampler's exception
            ended_at = time.perf_counter() - t0
            set_clients(0)
            stop_sampling.set()  # a sample under way is finished and kept
            assert sampling is not None  # started with the first stage
            await asyncio.gather(*all_clients, sampling)
            duration_s = time.perf_counter() - t0
        finally:
            if sampling is not None and not sampling.done():
                sampling.cancel()
            for task in all_clients:
                task.cancel()  # only does something when we leave with an exception
            leftovers = [*all_clients, *([sampling] if sampling else [])]
            await asyncio.gather(*leftovers, return_exceptions=True)

    return RampResult(
        stages=stages,
        stage_starts=tuple(stage_starts),
        ended_at=ended_at,
        duration_s=duration_s,
        records=tuple(records),
        samples=tuple(samples),
    )


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
