"""One chat model as a Ray Serve deployment: ``serve run apps.llm:app`` (from ``notebooks/``).

Over HTTP, ``POST /`` takes JSON and answers JSON::

    curl -X POST http://127.0.0.1:8000/ -H 'content-type: application/json' \\
         -d '{"prompt": "What does the Serve controller do?", "max_new_tokens": 64}'

``/docs`` describes the route. A body that does not match the schema gets a 422 naming the
field; a prompt that does not fit the model's context gets a 422 saying so; the replica keeps
serving.

Through a ``DeploymentHandle`` (from another deployment, or a notebook) the same replicas offer
``chat(prompt)`` (the answer as a string), ``stream(prompt)`` (the answer in chunks, with
``handle.options(stream=True)``), ``complete`` and ``stream_with_usage`` (the same with token
counts, for ``openai_api.py``) and ``info()``. ``Generator`` is the same model without the
HTTP routes, for applications whose HTTP ingress is another deployment (Serve allows one
FastAPI ingress per application): ``chatbot.py`` and ``rag.py`` use it. A prompt is a user message or a conversation,
a list of ``{"role", "content"}`` messages. Over gRPC they answer
``serve_chat.ChatService/Chat`` (``protos/chat.proto``) when Serve's ``grpc_options`` list its
servicer function. ``user_config: {max_new_tokens: N}`` in a config file sets the default
answer length, applied in place by ``reconfigure``.

The model is ``assets/tiny-chat`` unless ``SERVE_CHAT_MODEL`` names another local checkpoint
folder, or the application is built with ``LLM.bind(model_path=...)``.
``LLM.bind(chunk_interval_s=0.02)`` streams at most one chunk each 20 ms, joining the words
that come faster (notebook 06 measures why a fast model gains from it). To use this module in
a project of your own, copy it with ``chat_core.py``, ``accelerator.py``, ``validation.py`` and
``protos/chat.proto``, and generate the gRPC code there for your layout::

    python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. protos/chat.proto
"""

# No `from __future__ import annotations` here: FastAPI reads the route's annotations at run
# time, and Serve rebuilds the route methods without `self`, so string annotations would not
# resolve (FastAPI would then take the body for a query parameter).
import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext

if __package__:  # imported as part of the repository's `apps` package
    from .accelerator import ray_actor_options
    from .chat_core import DEFAULT_MAX_NEW_TOKENS, BadPrompt, ChatModel, Generation, PromptText, TokenCount
    from .protos.chat_pb2 import ChatReply, ChatRequest
    from .validation import clear_errors
else:  # copied into a project of your own, next to those modules
    from accelerator import ray_actor_options
    from chat_core import DEFAULT_MAX_NEW_TOKENS, BadPrompt, ChatModel, Generation, PromptText, TokenCount
    from protos.chat_pb2 import ChatReply, ChatRequest
    from validation import clear_errors


# __llm_schema_begin__
class Question(BaseModel):
    """Body of ``POST /``."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not ignored

    prompt: PromptText = Field(examples=["What does the Serve controller do?"])
    max_new_tokens: TokenCount | None = Field(None, description="Default: the deployment's setting.")


class Answer(BaseModel):
    answer: str
    model: str
    device: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = Field(description='"stop": the model ended; "length": max_new_tokens ended it.')

    @classmethod
    def of(cls, model: ChatModel, result: Generation) -> "Answer":
        return cls(
            answer=result.text,
            model=model.name,
            device=model.device,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            finish_reason=result.finish_reason,
        )
# __llm_schema_end__


# __llm_methods_begin__
class ChatMethods:
    """What both chat deployments below do: load the model once per replica, answer handles."""

    def __init__(self, model_path: str | None = None, chunk_interval_s: float = 0.0) -> None:
        # Once per replica: load the model onto this replica's device.
        self.model = ChatModel(model_path)
        # 0: a chunk per word. A fast model gains from joining words (e.g. 0.02: at most 50
        # chunks a second), since each chunk costs the replica the same CPU however short.
        self.chunk_interval_s = chunk_interval_s

    async def chat(self, prompt: Any, max_new_tokens: int | None = None) -> str:
        """The whole answer to a message or a conversation."""
        # generate() blocks for the whole answer: run it in a thread, so that this replica's
        # event loop keeps accepting requests (and Serve's health checks) meanwhile.
        result = await asyncio.to_thread(self.model.generate, prompt, max_new_tokens=max_new_tokens)
        return result.text

    async def stream(
        self,
        prompt: Any,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        trim_history: bool = False,
    ) -> AsyncIterator[str]:
        """The answer in chunks as the model writes them: call with ``handle.options(stream=True)``."""
        chunks = self.model.astream(
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            trim_history=trim_history,
            chunk_interval_s=self.chunk_interval_s,
        )
        try:
            async for chunk in chunks:
                yield chunk
        finally:  # the caller went away (or cancelled): stop generating
            chunks.cancel()
# __llm_methods_end__

    async def complete(self, prompt: Any, max_new_tokens: int | None = None, temperature: float = 0.0) -> dict[str, Any]:
        """The whole answer with its token counts: ``text``, ``prompt_tokens``,
        ``completion_tokens`` and ``finish_reason`` (what OpenAI-style APIs report)."""
        result = await asyncio.to_thread(
            self.model.generate, prompt, max_new_tokens=max_new_tokens, temperature=temperature
        )
        return dataclasses.asdict(result)

    async def stream_with_usage(
        self, prompt: Any, max_new_tokens: int | None = None, temperature: float = 0.0
    ) -> AsyncIterator[str | dict[str, Any]]:
        """:meth:`stream`'s chunks, then one dict: ``prompt_tokens``, ``completion_tokens``
        and ``finish_reason`` (``handle.options(stream=True)``)."""
        chunks = self.model.astream(
            prompt, max_new_tokens=max_new_tokens, temperature=temperature, chunk_interval_s=self.chunk_interval_s
        )
        try:
            async for chunk in chunks:
                yield chunk
            yield {
                "prompt_tokens": chunks.prompt_tokens,
                "completion_tokens": chunks.completion_tokens,
                "finish_reason": chunks.finish_reason,
            }
        finally:
            chunks.cancel()

    def info(self) -> dict[str, Any]:
        """Which model this replica serves, on which device, and what Ray gave it."""
        import ray

        accelerators = ray.get_runtime_context().get_accelerator_ids()
        return {
            "model": self.model.name,
            "device": self.model.device,
            "context": self.model.max_context,
            "max_new_tokens": self.model.max_new_tokens,
            "accelerator_ids": {kind: ids for kind, ids in accelerators.items() if ids},
            "ASCEND_RT_VISIBLE_DEVICES": os.environ.get("ASCEND_RT_VISIBLE_DEVICES"),
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }

    # __llm_reconfigure_begin__
    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply the deployment's ``user_config``: called after ``__init__`` and on every change.

        When only ``user_config`` changed in the config file, Serve calls this on the running
        replicas: they keep their loaded model and are not restarted.
        """
        unknown = sorted(set(user_config) - {"max_new_tokens"})
        if unknown:
            raise ValueError(f"unknown user_config key(s): {', '.join(unknown)}")
        value = user_config.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < self.model.max_context:
            raise ValueError(f"user_config max_new_tokens must be an integer in 1..{self.model.max_context - 1}")
        self.model.max_new_tokens = value
    # __llm_reconfigure_end__


# clear_errors: a body that is not UTF-8, and a prompt the model cannot take (BadPrompt, raised
# by the chat core), get a 4xx that says so, like a body that does not match `Question`.
api = clear_errors(FastAPI(title="Chat model", description="A chat model served by Ray Serve."))


# __llm_deployment_begin__
@serve.deployment(
    num_replicas=1,
    # A whole NPU or GPU where there is one; on a CPU-only machine half a CPU, so that
    # several replicas fit on a laptop.
    ray_actor_options=ray_actor_options(num_cpus=0.5),
)
@serve.ingress(api)
class LLM(ChatMethods):
    """The chat model over HTTP (``POST /``), gRPC (``Chat``) and handles (``chat``, ``stream``)."""

    @api.post("/")
    async def answer(self, question: Question) -> Answer:
        result = await asyncio.to_thread(
            self.model.generate, question.prompt, max_new_tokens=question.max_new_tokens
        )
        return Answer.of(self.model, result)
# __llm_deployment_end__

    # __llm_grpc_begin__
    async def Chat(self, request: ChatRequest, grpc_context: RayServegRPCContext) -> ChatReply:
        """The gRPC method ``serve_chat.ChatService/Chat``: Serve calls it by the RPC's name."""
        try:
            answer = await self.chat(request.prompt, request.max_new_tokens or None)
        except BadPrompt as exc:
            grpc_context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            grpc_context.set_details(exc.message)
            return ChatReply()
        return ChatReply(answer=answer, model=self.model.name)
    # __llm_grpc_end__


# __generator_begin__
@serve.deployment(num_replicas=1, ray_actor_options=ray_actor_options(num_cpus=0.5))
class Generator(ChatMethods):
    """The same model without HTTP, for applications that call it through a handle.

    Serve allows one FastAPI ingress per application, so an application whose ingress is
    another deployment (the chatbot's UI, the RAG pipeline) uses this one for its model.
    """
# __generator_end__


app = LLM.bind()
