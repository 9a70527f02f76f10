"""Small deployments for measuring Serve itself (notebook 06).

* ``Hello``: the cheapest possible handler, to measure what Serve costs per request;
* ``Sleepy``: holds each request for ``seconds`` without using the CPU, like a replica waiting
  on a model server or a database; used for autoscaling and backpressure.
"""

# No `from __future__ import annotations`: FastAPI reads the route's annotations at run time.
import asyncio

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from ray import serve


def hello() -> str:
    """The work of the handler: none."""
    return "hello"


def plain_fastapi_app() -> FastAPI:
    """The same handler as a plain FastAPI app (run with uvicorn, no Serve), for comparison."""
    api = FastAPI()

    @api.get("/")
    async def root() -> PlainTextResponse:
        return PlainTextResponse(hello())

    return api


hello_api = FastAPI(title="Hello")
sleepy_api = FastAPI(title="Sleepy")


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=100)
@serve.ingress(hello_api)
class Hello:
    @hello_api.get("/", response_class=PlainTextResponse)
    async def root(self) -> str:
        return hello()

    async def call(self) -> str:
        """The same, for a DeploymentHandle."""
        return hello()


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=2)
@serve.ingress(sleepy_api)
class Sleepy:
    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds

    @sleepy_api.get("/", response_class=PlainTextResponse)
    async def wait(self) -> str:
        await asyncio.sleep(self.seconds)
        return "done"


hello_app = Hello.bind()
sleepy_app = Sleepy.bind()
