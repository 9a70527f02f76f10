"""Remembering answers in a replica: without a bound memory grows, with one it does not.

Notebook 07 sends many distinct prompts to both and watches each replica's memory. Each
remembered entry is padded to ``ENTRY_BYTES``, standing in for what real services keep per
request (token ids, logits, embeddings), so that the difference is visible in seconds.

``POST /`` with ``{"prompt": "..."}`` answers ``{"entries": n}``, how many answers the replica
now remembers.
"""

# No `from __future__ import annotations`: FastAPI reads the route's annotations at run time.
import os
from collections import OrderedDict

import psutil
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from ray import serve

if __package__:  # imported as part of the repository's `apps` package
    from .validation import clear_errors
else:  # copied into a project of your own, next to validation.py
    from validation import clear_errors

ENTRY_BYTES = 200_000


def expensive_answer(prompt: str) -> bytes:
    """Stands in for a model call; returns something the size of a real per-request result."""
    return prompt.encode()[:64].ljust(ENTRY_BYTES, b".")


class MemoRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: StrictStr = Field(max_length=2_000)


api = clear_errors(FastAPI(title="Memo"))


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class Memo:
    """Remembers answers: all of them (``max_entries=None``), or the most recently used ones."""

    def __init__(self, max_entries: int | None = None) -> None:
        self.cache: OrderedDict[str, bytes] = OrderedDict()
        self.max_entries = max_entries

    @api.post("/")
    async def answer(self, request: MemoRequest) -> dict:
        prompt = request.prompt
        if prompt in self.cache:
            self.cache.move_to_end(prompt)  # most recently used
        else:
            self.cache[prompt] = expensive_answer(prompt)
            if self.max_entries is not None and len(self.cache) > self.max_entries:
                self.cache.popitem(last=False)  # forget the least recently used
        return {"entries": len(self.cache)}

    def rss_mb(self) -> float:
        """This replica's resident memory, in MiB."""
        return psutil.Process(os.getpid()).memory_info().rss / 2**20


unbounded = Memo.bind()  # keeps every answer forever: grows with the number of distinct prompts
bounded = Memo.bind(max_entries=32)  # an LRU cache per replica
