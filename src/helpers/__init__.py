"""Small helpers shared by the notebooks of the Ray Serve series.

The notebooks import from here so that each cell can show Ray Serve itself, not the plumbing
around it:

* :mod:`helpers.cluster` - start and stop a quiet, private Ray + Serve for a notebook, and
  wait for things with a timeout that fails with a clear message;
* :mod:`helpers.introspect` - stable, ID-free summaries of the Serve actors and of
  ``serve.status()``, and a picture of the live topology;
* :mod:`helpers.probe` - a background HTTP prober that records which requests succeeded;
* :mod:`helpers.models` - the Q&A corpus the tiny chat model answers word for word, and
  whether the apps serve that model (``$SERVE_CHAT_MODEL``);
* :mod:`helpers.local_server` - run a FastAPI/Gradio app with plain uvicorn, without Ray;
* :mod:`helpers.processes` - run a CLI such as ``serve run`` in the background and stop it cleanly;
* :mod:`helpers.display` - show an app's source in a cell from the module it lives in;
* :mod:`helpers.config` - check a Serve config file before deploying it: schema errors and
  the unknown keys that Serve would silently ignore (``python -m helpers.config FILE``).
"""

from helpers.cluster import ClusterInfo, show_ray_deprecations, start, stop, wait_for_http, wait_until
from helpers.display import show_file, show_snippet, show_source
from helpers.introspect import (
    ServeActor,
    actor_table,
    draw_topology,
    serve_actors,
    serve_details,
    status_summary,
)
from helpers.local_server import serve_locally
from helpers.models import MODEL_ENV, chat_model_name, checks_verbatim, qa_corpus
from helpers.probe import HttpProbe, ProbeReport
from helpers.processes import CliResult, count_processes, log_lines, run_cli, start_background, stop_process_tree

__all__ = [
    "CliResult",
    "ClusterInfo",
    "HttpProbe",
    "MODEL_ENV",
    "ProbeReport",
    "ServeActor",
    "actor_table",
    "chat_model_name",
    "checks_verbatim",
    "count_processes",
    "draw_topology",
    "log_lines",
    "qa_corpus",
    "run_cli",
    "serve_actors",
    "serve_details",
    "serve_locally",
    "show_ray_deprecations",
    "show_file",
    "show_snippet",
    "show_source",
    "start",
    "start_background",
    "status_summary",
    "stop",
    "stop_process_tree",
    "wait_for_http",
    "wait_until",
]

# Importing helpers (the first cell of most notebooks, before Ray is imported) makes Ray's
# deprecation warnings visible: see show_ray_deprecations.
show_ray_deprecations()
