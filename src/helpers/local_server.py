"""Serve an ASGI app (FastAPI, Gradio) with plain uvicorn in a background thread, without Ray.

For side-by-side measurements and tests::

    with serve_locally(app, port=8123) as url:
        requests.get(url + "/")
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def serve_locally(asgi_app: Any, port: int, host: str = "127.0.0.1") -> Iterator[str]:
    """Run ``asgi_app`` on ``host:port`` until the block ends; yields its URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(asgi_app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=2)
        # Still running: open streams hold it up (a browser tab's or a gradio_client's
        # heartbeat, which Gradio ends only at the app's shutdown): stop without them.
        server.force_exit = True
        thread.join(timeout=10)
