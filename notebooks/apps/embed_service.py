"""The embedding model as an HTTP service, twice: one text per forward pass, and batched.

``POST /`` with JSON ``{"text": "..."}`` answers ``{"embedding": [384 floats]}``. Notebook 06
measures both under load (``serve run apps.embed_service:unbatched`` or ``:batched``).

``BatchedEmbedder`` uses ``@serve.batch``: concurrent requests that arrive within
``batch_wait_timeout_s`` of each other are collected (up to ``max_batch_size``) and embedded in
one forward pass, which on a CPU or an accelerator costs much less per text than one pass each.
"""

import json

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from apps.rag import Embedder

MAX_TEXT_CHARS = 2_000
# Perf runs give the model both cores of a small laptop (the Embedder alone uses 1 thread).
THREADS = 2


async def read_text(request: Request) -> str | JSONResponse:
    """The ``text`` of the JSON body, or a 4xx response saying what is wrong."""
    try:
        body = json.loads(await request.body())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return JSONResponse({"error": 'body must be JSON: {"text": "..."}'}, status_code=400)
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        return JSONResponse({"error": "'text' must be a non-empty string"}, status_code=422)
    if len(text) > MAX_TEXT_CHARS:
        return JSONResponse({"error": f"'text' is longer than {MAX_TEXT_CHARS} characters"}, status_code=422)
    return text


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class UnbatchedEmbedder(Embedder.func_or_class):
    def __init__(self) -> None:
        super().__init__(num_threads=THREADS)

    async def __call__(self, request: Request):
        text = await read_text(request)
        if isinstance(text, JSONResponse):
            return text
        return {"embedding": self.embed([text])[0]}  # one forward pass per request


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class BatchedEmbedder(Embedder.func_or_class):
    def __init__(self) -> None:
        super().__init__(num_threads=THREADS)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def embed_batch(self, texts: list[str]) -> list[list[float]]:
        # Called with a list of texts from many requests; returns one result per text, in order.
        return self.embed(texts)

    async def __call__(self, request: Request):
        text = await read_text(request)
        if isinstance(text, JSONResponse):
            return text
        # Each request passes ONE text; Serve groups concurrent calls into a batch.
        return {"embedding": await self.embed_batch(text)}


unbatched = UnbatchedEmbedder.bind()
batched = BatchedEmbedder.bind()
