"""Small deployments for measuring Serve itself (notebook 06).

* ``Hello``: the cheapest possible handler, to measure what Serve costs per request;
* ``Sleepy``: holds each request for ``seconds`` without using the CPU, like a replica waiting
  on a model server or a database; used for autoscaling and backpressure.
"""

import asyncio

from fastapi import FastAPI
from ray import serve
from starlette.requests import Request
from starlette.responses import PlainTextResponse


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


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=100)
class Hello:
    async def __call__(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse(hello())

    async def call(self) -> str:
        return hello()


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=2)
class Sleepy:
    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds

    async def __call__(self, request: Request) -> PlainTextResponse:
        await asyncio.sleep(self.seconds)
        return PlainTextResponse("done")


hello_app = Hello.bind()
sleepy_app = Sleepy.bind()
