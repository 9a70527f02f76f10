"""The chat model on Ray Serve with the three endpoints of ``triton_chat.py``, for comparison.

``serve run apps.chat_endpoints:app`` (from ``notebooks/``) serves, on one replica:

- ``POST /chat``: one ``generate()`` per request;
- ``POST /chat_batched``: concurrent requests grouped by ``@serve.batch`` and answered in one
  ``generate()`` call (``ChatModel.run_batch``), as Triton's dynamic batcher does for PyTriton;
- ``POST /chat_stream``: the answer as it is written (``StreamingResponse``, plain text).

Each takes ``{"prompt": "...", "max_new_tokens": N}`` (the schema of ``llm.py``) and the first
two answer ``llm.py``'s JSON. A prompt is checked before it joins a batch, so a bad one gets its
422 alone and never fails the requests batched with it.

``ChatEndpoints.bind(num_threads=N)`` sets torch's threads in the replica (Ray otherwise sets
them from ``num_cpus``), so that a comparison gives both servers the same. ``at_once()``
(through a handle) says how many ``/chat`` requests the replica held at once, and how many
``generate()`` calls ran at once, in how many threads. To use this module in a project of your
own, copy it with ``llm.py`` and the modules that one needs.
"""

# No `from __future__ import annotations`: FastAPI reads the route's annotations at run time.
import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator

import torch
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from ray import serve

if __package__:  # imported as part of the repository's `apps` package
    from .accelerator import ray_actor_options
    from .chat_core import ChatModel, Generation, Prompt
    from .llm import Answer, Question
    from .validation import clear_errors
else:  # copied into a project of your own, next to those modules
    from accelerator import ray_actor_options
    from chat_core import ChatModel, Generation, Prompt
    from llm import Answer, Question
    from validation import clear_errors

MAX_BATCH_SIZE = 16  # as triton_chat.py

api = clear_errors(FastAPI(title="Chat model, three endpoints"))


class AtOnce:
    """Counts what is in progress at once, from any thread: ``with at_once: ...``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = self.most = 0
        self.threads: set[int] = set()  # the threads it ran in

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.threads.add(threading.get_ident())

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


async def _chunks(stream) -> AsyncIterator[str]:
    try:
        async for chunk in stream:
            yield chunk
    finally:  # the client went away: stop generating
        stream.cancel()


# __chat_endpoints_begin__
@serve.deployment(
    num_replicas=1,
    ray_actor_options=ray_actor_options(num_cpus=0.5),
    max_ongoing_requests=2 * MAX_BATCH_SIZE,  # the default (5) would never let a batch fill
)
@serve.ingress(api)
class ChatEndpoints:
    def __init__(self, model_path: str | None = None, num_threads: int | None = None) -> None:
        if num_threads:
            torch.set_num_threads(num_threads)
        self.model = ChatModel(model_path)
        self.batch_sizes: Counter[int] = Counter()  # batch size -> batches run
        self.requests, self.generating = AtOnce(), AtOnce()  # /chat requests; generate() calls

    @api.post("/chat")
    async def chat(self, question: Question) -> Answer:
        with self.requests:
            # asyncio.to_thread: a thread of the replica's default pool runs generate()
            result = await asyncio.to_thread(self._generate, question.prompt, question.max_new_tokens)
        return Answer.of(self.model, result)

    def _generate(self, prompt: str | list, max_new_tokens: int | None) -> Generation:
        with self.generating:
            return self.model.generate(prompt, max_new_tokens=max_new_tokens)

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=0.01)
    async def generate_batch(self, prompts: list[Prompt]) -> list[Generation]:
        # Serve calls this with the prompts of up to 16 concurrent requests; each gets its own.
        self.batch_sizes[len(prompts)] += 1
        return await asyncio.to_thread(self.model.run_batch, prompts)

    @api.post("/chat_batched")
    async def chat_batched(self, question: Question) -> Answer:
        prompt = self.model.prepare(question.prompt, question.max_new_tokens)  # a bad one: 422 here
        return Answer.of(self.model, await self.generate_batch(prompt))

    @api.post("/chat_stream", response_class=StreamingResponse)
    async def chat_stream(self, question: Question) -> StreamingResponse:
        stream = self.model.astream(question.prompt, max_new_tokens=question.max_new_tokens)
        return StreamingResponse(_chunks(stream), media_type="text/plain")

    def batches(self) -> dict[int, int]:
        """How many batches of each size this replica has run (call it through a handle)."""
        return dict(self.batch_sizes)

    def at_once(self) -> dict[str, int]:
        """The most /chat requests in the replica at once; the most generate() calls, and threads."""
        return {"requests": self.requests.most, "generating": self.generating.most,
                "threads": len(self.generating.threads)}
# __chat_endpoints_end__


app = ChatEndpoints.bind()
