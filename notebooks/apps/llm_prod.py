"""The chat model of ``llm.py``, ready for production: ``serve run apps.llm_prod:app``.

The same request and answer schemas and the same chat core as ``llm.py``, with what
operations need:

* ``check_health``: Serve calls it every ``health_check_period_s``; it raises when the model
  cannot answer, and the controller then replaces the replica;
* metrics from ``ray.serve.metrics``: a ``Counter`` of requests by outcome (every response,
  including the 422s FastAPI sends before the route runs) and a ``Histogram`` of the time to
  answer, exported with Ray's and Serve's own metrics in Prometheus format;
* one log line per request through Serve's logger, so that it carries the request id and
  becomes a JSON record when ``logging_config`` says ``encoding: JSON``.

``configs/llm_dev.yaml`` and ``configs/llm_prod.yaml`` deploy it for development and for
production. Copy it with ``llm.py`` and what that imports.
"""

# No `from __future__ import annotations`: FastAPI reads the route's annotations at run time.
import asyncio
import logging
import time

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from ray import serve
from ray.serve.metrics import Counter, Histogram

if __package__:  # imported as part of the repository's `apps` package
    from .accelerator import ray_actor_options
    from .chat_core import ChatModel
    from .llm import Answer, Question
    from .validation import clear_errors
else:  # copied into a project of your own, next to llm.py and what it imports
    from accelerator import ray_actor_options
    from chat_core import ChatModel
    from llm import Answer, Question
    from validation import clear_errors

# Serve's logger: what a replica logs here goes to its log file with the request id attached.
logger = logging.getLogger("ray.serve")

LATENCY_BUCKETS_S = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]

api = clear_errors(FastAPI(title="Chat model (production)"))


# __prod_middleware_begin__
@api.middleware("http")
async def measure(request: Request, call_next) -> Response:
    """Count every response by outcome and time it, whichever part of the app answered."""
    replica = serve.get_replica_context().servable_object  # this replica's ProductionLLM
    start = time.perf_counter()
    try:
        response = await call_next(request)
    except Exception:
        replica.record("error", time.perf_counter() - start)
        logger.exception("chat request failed")
        raise
    status = response.status_code
    if not 300 <= status < 400:  # a redirect (e.g. to add a trailing "/") is not an answer
        outcome = "ok" if status < 300 else "bad_request" if status < 500 else "error"
        replica.record(outcome, time.perf_counter() - start)
    return response
# __prod_middleware_end__


# __prod_deployment_begin__
@serve.deployment(
    num_replicas=1,
    ray_actor_options=ray_actor_options(num_cpus=0.5),
    health_check_period_s=10,  # Serve's default; the config files set their own
    health_check_timeout_s=30,
)
@serve.ingress(api)
class ProductionLLM:
    def __init__(self, model_path: str | None = None) -> None:
        self.model: ChatModel | None = ChatModel(model_path)
        # Metric objects are created once per replica; Serve adds the deployment and replica
        # as tags of every sample.
        self.requests = Counter(
            "llm_requests",
            description="Chat requests answered, by outcome (ok, bad_request, error).",
            tag_keys=("outcome",),
        )
        self.answer_seconds = Histogram(
            "llm_answer_seconds",
            description="Time to answer a chat request successfully, in seconds.",
            boundaries=LATENCY_BUCKETS_S,
        )

    def check_health(self) -> None:
        """Raise if this replica cannot answer; Serve replaces it after 3 failures in a row."""
        if self.model is None:
            raise RuntimeError("the model is not loaded")

    def record(self, outcome: str, seconds: float) -> None:
        self.requests.inc(tags={"outcome": outcome})
        if outcome == "ok":
            self.answer_seconds.observe(seconds)
        logger.info(f"chat {outcome} in {1000 * seconds:.0f} ms")

    @api.post("/")
    async def answer(self, question: Question) -> Answer:
        if self.model is None:  # broken, and about to be replaced (check_health)
            raise HTTPException(503, "the model is not loaded; retry in a few seconds")
        result = await asyncio.to_thread(
            self.model.generate, question.prompt, max_new_tokens=question.max_new_tokens
        )
        return Answer.of(self.model, result)
# __prod_deployment_end__

    def unload_model(self) -> None:
        """Drop the model, as a crashed driver or a failed reload would: for the health demo.

        Reachable through a DeploymentHandle only; no HTTP route calls it.
        """
        self.model = None


app = ProductionLLM.bind()
