"""The chat model of ``apps/llm.py``, ready for production: ``serve run apps.llm_prod:app``.

It is the same ``LLM`` class (subclassed, not copied) with what operations need:

* ``check_health``: Serve calls it every ``health_check_period_s``; it raises when the model
  cannot answer, and the controller then replaces the replica;
* metrics from ``ray.serve.metrics``: a ``Counter`` of requests by outcome and a
  ``Histogram`` of generation time, exported with Ray's and Serve's own metrics in
  Prometheus format;
* one log line per request through Serve's logger, so that it carries the request id and
  becomes a JSON record when ``logging_config`` says ``encoding: JSON``.

``configs/llm_dev.yaml`` and ``configs/llm_prod.yaml`` deploy it for development and for
production.
"""

import logging
import time

from ray import serve
from ray.serve.metrics import Counter, Histogram
from starlette.requests import Request
from starlette.responses import JSONResponse

import helpers
from apps.llm import LLM

# Serve's logger: what a replica logs here goes to its log file with the request id attached.
logger = logging.getLogger("ray.serve")

LATENCY_BUCKETS_S = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


@serve.deployment(
    num_replicas=1,
    ray_actor_options=helpers.ray_actor_options(num_cpus=0.5),
    health_check_period_s=10,  # Serve's default; the config files set their own
    health_check_timeout_s=30,
)
class ProductionLLM(LLM.func_or_class):
    def __init__(self, model_path: str | None = None) -> None:
        super().__init__(model_path)
        self.requests = Counter(
            "llm_requests",
            description="Chat requests answered, by outcome (ok, bad_request, error).",
            tag_keys=("outcome",),
        )
        self.generate_seconds = Histogram(
            "llm_generate_seconds",
            description="Time to answer a valid chat request, in seconds.",
            boundaries=LATENCY_BUCKETS_S,
        )

    def check_health(self) -> None:
        """Raise if this replica cannot answer; Serve replaces it after 3 failures in a row."""
        if self.model is None or self.tokenizer is None:
            raise RuntimeError("the model is not loaded")

    async def __call__(self, request: Request) -> JSONResponse:
        start = time.perf_counter()
        try:
            response = await super().__call__(request)
        except Exception:
            self.requests.inc(tags={"outcome": "error"})
            logger.exception("chat request failed")
            raise
        outcome = "ok" if response.status_code == 200 else "bad_request"
        self.requests.inc(tags={"outcome": outcome})
        elapsed = time.perf_counter() - start
        if outcome == "ok":
            self.generate_seconds.observe(elapsed)
        logger.info(f"chat {outcome} in {1000 * elapsed:.0f} ms")
        return response

    def unload_model(self) -> None:
        """Drop the model, as a crashed driver or a failed reload would: for the health demo.

        Reachable through a DeploymentHandle only; no HTTP route calls it.
        """
        self.model = None


app = ProductionLLM.bind()
