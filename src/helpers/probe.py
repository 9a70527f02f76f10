"""A background HTTP prober: send a request every few milliseconds and record each outcome.

Used to measure what clients see while something fails: how many requests failed, and how
long the service was down::

    with HttpProbe("http://127.0.0.1:8000/who") as probe:
        ...  # break something, wait for it to heal
    print(probe.report())
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests


@dataclass(frozen=True)
class Outcome:
    t: float  # seconds since the probe started (when the request was sent)
    ok: bool  # a 2xx answer
    status: int  # HTTP status, or 0 when no answer came (refused, reset, timed out)


@dataclass(frozen=True)
class ProbeReport:
    sent: int
    failed: int
    longest_outage_s: float  # longest run of failures, first failure to next success

    def __str__(self) -> str:
        return (
            f"requests sent: {self.sent}, failed: {self.failed}, "
            f"longest outage: {self.longest_outage_s:.2f} s"
        )


class HttpProbe:
    """Send ``GET url`` (``POST`` with ``json`` as body) every ``interval_s`` seconds, from a thread.

    ``session`` makes the ``requests.Session`` it sends with (e.g. one that retries); a
    request counts as failed only if the session finally fails.
    """

    def __init__(
        self,
        url: str,
        interval_s: float = 0.05,
        timeout_s: float = 2.0,
        session: Callable[[], requests.Session] = requests.Session,
        json: Any = None,
    ) -> None:
        self.url = url
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.new_session = session
        self.json = json
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="http-probe", daemon=True)
        self._t0 = 0.0

    def _run(self) -> None:
        session = self.new_session()
        while not self._stop.is_set():
            sent = time.monotonic() - self._t0
            try:
                if self.json is None:
                    status = session.get(self.url, timeout=self.timeout_s).status_code
                else:
                    status = session.post(self.url, json=self.json, timeout=self.timeout_s).status_code
            except requests.RequestException:
                status = 0
                session = self.new_session()  # drop a broken keep-alive connection
            self.outcomes.append(Outcome(sent, 200 <= status < 300, status))
            self._stop.wait(self.interval_s)

    def start(self) -> HttpProbe:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> ProbeReport:
        self._stop.set()
        self._thread.join()
        return self.report()

    def __enter__(self) -> HttpProbe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def report(self) -> ProbeReport:
        outcomes = list(self.outcomes)
        longest, outage_start = 0.0, None
        for o in outcomes:
            if not o.ok and outage_start is None:
                outage_start = o.t
            elif o.ok and outage_start is not None:
                longest = max(longest, o.t - outage_start)
                outage_start = None
        if outage_start is not None and outcomes:
            longest = max(longest, outcomes[-1].t - outage_start)
        return ProbeReport(len(outcomes), sum(not o.ok for o in outcomes), longest)
