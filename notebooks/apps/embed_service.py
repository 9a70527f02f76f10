"""The embedding model as an HTTP service, twice: one text per forward pass, and batched.

``POST /`` with JSON ``{"text": "..."}`` answers ``{"embedding": [384 floats]}``. Notebook 06
measures both under load (``serve run apps.embed_service:unbatched`` or ``:batched``).

``BatchedEmbedder`` uses ``@serve.batch``: concurrent requests that arrive within
``batch_wait_timeout_s`` of each other are collected (up to ``max_batch_size``) and embedded in
one forward pass, which on a CPU or an accelerator costs much less per text than one pass each.

Copy it next to ``embedder.py``, ``accelerator.py`` and ``validation.py``.
"""

# No `from __future__ import annotations`: FastAPI reads the route's annotations at run time.
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from ray import serve

if __package__:  # imported as part of the repository's `apps` package
    from .embedder import MiniLM
    from .validation import clear_errors
else:  # copied into a project of your own, next to those modules
    from embedder import MiniLM
    from validation import clear_errors

MAX_TEXT_CHARS = 2_000
# Perf runs give the model both cores of a small laptop (the Embedder alone uses 1 thread).
THREADS = 2


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: StrictStr = Field(min_length=1, max_length=MAX_TEXT_CHARS, examples=["How do I scale a deployment?"])


class EmbedResponse(BaseModel):
    embedding: list[float] = Field(description="384 numbers, unit length.")


unbatched_api = clear_errors(FastAPI(title="Embeddings, one text per forward pass"))
batched_api = clear_errors(FastAPI(title="Embeddings, batched with @serve.batch"))


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
@serve.ingress(unbatched_api)
class UnbatchedEmbedder(MiniLM):
    def __init__(self) -> None:
        super().__init__(num_threads=THREADS)

    @unbatched_api.post("/")
    def embed_one(self, request: EmbedRequest) -> EmbedResponse:
        return EmbedResponse(embedding=self.embed([request.text])[0])  # one forward pass per request


# __batched_begin__
@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
@serve.ingress(batched_api)
class BatchedEmbedder(MiniLM):
    def __init__(self) -> None:
        super().__init__(num_threads=THREADS)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def embed_batch(self, texts: list[str]) -> list[list[float]]:
        # Called with a list of texts from many requests; returns one result per text, in order.
        return self.embed(texts)

    @batched_api.post("/")
    async def embed_one(self, request: EmbedRequest) -> EmbedResponse:
        # Each request passes ONE text; Serve groups concurrent calls into a batch.
        return EmbedResponse(embedding=await self.embed_batch(request.text))
# __batched_end__


unbatched = UnbatchedEmbedder.bind()
batched = BatchedEmbedder.bind()
