"""Two ways to remember answers in a replica: one that grows without bound, one that does not.

Notebook 07 sends many distinct prompts to both and watches each replica's memory. Each
remembered entry is padded to ``ENTRY_BYTES``, standing in for what real services keep per
request (token ids, logits, embeddings), so that the difference is visible in seconds.
"""

import os
from collections import OrderedDict

import psutil
from ray import serve
from starlette.requests import Request

ENTRY_BYTES = 200_000


def expensive_answer(prompt: str) -> bytes:
    """Stands in for a model call; returns something the size of a real per-request result."""
    return prompt.encode()[:64].ljust(ENTRY_BYTES, b".")


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class UnboundedMemo:
    """Keeps every answer forever: memory grows with the number of distinct prompts."""

    def __init__(self) -> None:
        self.cache: dict[str, bytes] = {}

    async def __call__(self, request: Request) -> dict:
        prompt = (await request.body()).decode(errors="replace")
        if prompt not in self.cache:
            self.cache[prompt] = expensive_answer(prompt)
        return {"entries": len(self.cache)}

    def rss_mb(self) -> float:
        return psutil.Process(os.getpid()).memory_info().rss / 2**20


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class BoundedMemo(UnboundedMemo.func_or_class):
    """Keeps the ``max_entries`` most recently used answers (an LRU cache per replica)."""

    def __init__(self, max_entries: int = 32) -> None:
        super().__init__()
        self.cache: OrderedDict[str, bytes] = OrderedDict()
        self.max_entries = max_entries

    async def __call__(self, request: Request) -> dict:
        prompt = (await request.body()).decode(errors="replace")
        if prompt in self.cache:
            self.cache.move_to_end(prompt)
        else:
            self.cache[prompt] = expensive_answer(prompt)
            if len(self.cache) > self.max_entries:
                self.cache.popitem(last=False)  # forget the least recently used
        return {"entries": len(self.cache)}


unbounded = UnboundedMemo.bind()
bounded = BoundedMemo.bind()
