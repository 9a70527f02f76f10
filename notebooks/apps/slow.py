"""A deliberately slow endpoint, to watch Serve's request timeout at work.

``GET /?seconds=3`` answers after sleeping that long (0 to 30 seconds).
"""

# No `from __future__ import annotations`: FastAPI reads the route's annotations at run time.
import asyncio

from fastapi import FastAPI, Query
from ray import serve

MAX_SECONDS = 30.0

api = FastAPI(title="Slow on purpose")


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class Slow:
    @api.get("/")
    async def sleep(self, seconds: float = Query(1.0, ge=0, le=MAX_SECONDS, allow_inf_nan=False)) -> dict:
        await asyncio.sleep(seconds)
        return {"slept_s": seconds}


app = Slow.bind()
