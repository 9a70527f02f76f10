"""helpers.probe against a small local HTTP server that fails on demand."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers.probe import HttpProbe


@pytest.fixture
def server():
    state = {"fail": False, "bodies": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(503 if state["fail"] else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self):
            state["bodies"].append(self.rfile.read(int(self.headers["Content-Length"])))
            self.do_GET()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", state
    httpd.shutdown()


def test_probe_counts_failures_and_outage(server):
    url, state = server
    with HttpProbe(url, interval_s=0.01) as probe:
        time.sleep(0.3)
        state["fail"] = True
        time.sleep(0.3)
        state["fail"] = False
        time.sleep(0.3)
    report = probe.report()
    assert report.sent == len(probe.outcomes) > 20
    assert 0 < report.failed < report.sent
    assert 0.15 < report.longest_outage_s < 0.6
    assert {o.status for o in probe.outcomes} == {200, 503}
    assert probe.outcomes[-1].ok


def test_probe_records_refused_connections_as_status_0():
    with HttpProbe("http://127.0.0.1:9/", interval_s=0.01, timeout_s=0.5) as probe:
        time.sleep(0.1)
    report = probe.report()
    assert report.failed == report.sent > 0
    assert all(o.status == 0 for o in probe.outcomes)
    assert "failed" in str(report)


def test_probe_posts_json_with_the_session_it_is_given(server):
    import requests

    url, state = server
    made = []

    def session():
        made.append(requests.Session())
        return made[-1]

    with HttpProbe(url, interval_s=0.01, json={"prompt": "hi"}, session=session) as probe:
        time.sleep(0.1)
    assert probe.report().failed == 0 and probe.report().sent > 2
    assert set(state["bodies"]) == {b'{"prompt": "hi"}'}
    assert len(made) == 1  # one session, reused while nothing fails
