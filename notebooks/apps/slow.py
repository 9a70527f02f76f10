"""A deliberately slow endpoint, to watch Serve's request timeout at work.

``GET /slow?seconds=3`` answers after sleeping that long (0 to 30 seconds).
"""

import asyncio

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

MAX_SECONDS = 30.0


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class Slow:
    async def __call__(self, request: Request) -> JSONResponse:
        raw = request.query_params.get("seconds", "1")
        try:
            seconds = float(raw)
        except ValueError:
            return JSONResponse({"error": f"seconds must be a number, got {raw!r}"}, status_code=422)
        if not 0 <= seconds <= MAX_SECONDS:
            return JSONResponse({"error": f"seconds must be between 0 and {MAX_SECONDS:g}"}, status_code=422)
        await asyncio.sleep(seconds)
        return JSONResponse({"slept_s": seconds})


app = Slow.bind()
