"""Shaped load with Locust: users that wait for each answer, and back off when the service says so.

Locust runs in a process of its own (it patches the standard library with gevent, which must
never happen inside a notebook's kernel). ``helpers.load.run_locust`` starts it like this, from
``notebooks/``::

    LOAD_STAGES='[[10, 1], [30, 8], [10, 1]]' LOAD_PATH=/auto \\
    python -m locust -f locustfile.py --headless --host http://127.0.0.1:8000 \\
        --csv run --csv-full-history --only-summary

* ``LOAD_STAGES``: JSON ``[[seconds, users], ...]``, run one after the other; then Locust stops.
* ``LOAD_PATH``, ``LOAD_METHOD`` (``GET``) and ``LOAD_BODY`` (JSON, for a POST): the request.

Each user sends a request, waits for the whole answer, and sends the next (``constant(0)``:
a closed loop, like the clients of ``helpers.load.run_load``). A 429 or 503 counts as a
failure, and the user then waits as long as the answer's ``Retry-After`` header says (1 s
without one) before asking again, as a polite client does.

Locust writes ``run_stats.csv`` (totals per endpoint) and ``run_stats_history.csv`` (one row
per second: users, requests/s, failures/s, percentiles).
"""

import json
import os

import gevent
from locust import FastHttpUser, LoadTestShape, constant, task

STAGES = [(float(seconds), int(users)) for seconds, users in json.loads(os.environ.get("LOAD_STAGES", "[[10, 1]]"))]
PATH = os.environ.get("LOAD_PATH", "/")
METHOD = os.environ.get("LOAD_METHOD", "GET")
BODY = json.loads(os.environ["LOAD_BODY"]) if os.environ.get("LOAD_BODY") else None
BUSY = (429, 503)


# __locust_user_begin__
class ServeUser(FastHttpUser):
    wait_time = constant(0)  # the next request as soon as the answer is in

    @task
    def call(self) -> None:
        retry_after = 0.0
        with self.client.request(METHOD, PATH, json=BODY, catch_response=True) as response:
            if response.status_code in BUSY:
                retry_after = _seconds(response.headers.get("Retry-After"))
                response.failure(f"{response.status_code}: busy, retry after {retry_after:g} s")
        if retry_after:
            gevent.sleep(retry_after)


def _seconds(header: str | None) -> float:
    """A ``Retry-After`` header in seconds (1 when it is missing or a date)."""
    try:
        return max(float(header), 0.0) if header else 1.0
    except ValueError:
        return 1.0


class Stages(LoadTestShape):
    """``STAGES`` one after the other; all users of a stage start at once."""

    def tick(self) -> tuple[int, float] | None:
        elapsed, end = self.get_run_time(), 0.0
        for seconds, users in STAGES:
            end += seconds
            if elapsed < end:
                return users, max(users, 1) * 100.0  # users, spawned per second
        return None  # the last stage is over: stop
# __locust_user_end__
