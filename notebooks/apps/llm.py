"""One chat model as a Ray Serve deployment: ``serve run apps.llm:app`` (from ``notebooks/``).

The request body is JSON: either the prompt itself as a JSON string, or an object
``{"prompt": "...", "max_new_tokens": 64}``. The answer is JSON too::

    curl -X POST http://127.0.0.1:8000/ -d '{"prompt": "What does the Serve controller do?"}'

Bad input gets a 400 (not JSON, wrong shape) or a 422 (empty or too long) with a message that
says what to fix; the replica keeps serving.

The same deployment answers gRPC calls to ``serve_chat.ChatService/Chat`` (see
``apps/protos/chat.proto``) when Serve's ``grpc_options`` list its servicer function, and
takes ``user_config: {max_new_tokens: N}`` from a config file, applied in place by
``reconfigure``.

The model is ``assets/tiny-chat`` unless ``SERVE_CHAT_MODEL`` names another local checkpoint
directory, or the application is built with ``LLM.bind(model_path=...)``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import torch
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext
from starlette.requests import Request
from starlette.responses import JSONResponse

import helpers
from apps.protos.chat_pb2 import ChatReply, ChatRequest

DEFAULT_MAX_NEW_TOKENS = 96
MAX_PROMPT_CHARS = 8_000  # refuse huge bodies before spending time tokenizing them


class BadPrompt(ValueError):
    """The client sent something the model cannot answer; carries the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)  # both in args, so that it pickles across processes
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message


@serve.deployment(
    num_replicas=1,
    # Whole device on an NPU or GPU machine; on a CPU-only machine half a CPU, so that
    # several replicas fit on a laptop.
    ray_actor_options=helpers.ray_actor_options(num_cpus=0.5),
)
class LLM:
    def __init__(self, model_path: str | None = None) -> None:
        self.device = helpers.detect_accelerator().torch_device
        self.tokenizer, self.model = helpers.load_chat_model(model_path, device=self.device)
        self.model_name = self.model.config.name_or_path.rstrip("/").split("/")[-1]
        self.max_context = int(self.model.config.max_position_embeddings)
        self.max_new_tokens = DEFAULT_MAX_NEW_TOKENS

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply the deployment's ``user_config``: called after ``__init__`` and on every change.

        Serve calls this on the running replicas when only ``user_config`` changed in the
        config file, so the replicas keep their loaded model and are not restarted.
        """
        unknown = sorted(set(user_config) - {"max_new_tokens"})
        if unknown:
            raise ValueError(f"unknown user_config key(s): {', '.join(unknown)}")
        value = user_config.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < self.max_context:
            raise ValueError(f"user_config max_new_tokens must be an integer in 1..{self.max_context - 1}")
        self.max_new_tokens = value

    def chat(self, prompt: str, max_new_tokens: int | None = None) -> str:
        """Answer one user message with greedy decoding (up to ``max_new_tokens`` tokens)."""
        if max_new_tokens is None:
            max_new_tokens = self.max_new_tokens
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadPrompt(422, "'prompt' must be a non-empty string")
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise BadPrompt(422, "'max_new_tokens' must be a positive integer")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise BadPrompt(422, f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        inputs = self.tokenizer(text, add_special_tokens=False, return_tensors="pt").to(self.device)
        n_prompt = inputs["input_ids"].shape[1]
        if n_prompt + max_new_tokens > self.max_context:
            raise BadPrompt(
                422,
                f"prompt is {n_prompt} tokens; with max_new_tokens={max_new_tokens} that exceeds "
                f"the model's context of {self.max_context} tokens",
            )
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        # generate() returns prompt + answer: decode only the new tokens, without markers.
        return self.tokenizer.decode(output[0, n_prompt:], skip_special_tokens=True).strip()

    async def __call__(self, request: Request) -> JSONResponse:
        try:
            prompt, max_new_tokens = parse_body(await request.body())
            # generate() takes a while and does not await: run it in a thread so that this
            # replica's event loop keeps accepting (and health-checking) meanwhile.
            answer = await asyncio.to_thread(self.chat, prompt, max_new_tokens)
        except BadPrompt as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return JSONResponse({"answer": answer, "model": self.model_name, "device": self.device})

    async def Chat(self, request: ChatRequest, grpc_context: RayServegRPCContext) -> ChatReply:
        """The gRPC method ``serve_chat.ChatService/Chat``: Serve calls it by the RPC's name."""
        try:
            answer = await asyncio.to_thread(self.chat, request.prompt, request.max_new_tokens or None)
        except BadPrompt as exc:
            grpc_context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            grpc_context.set_details(exc.message)
            return ChatReply()
        return ChatReply(answer=answer, model=self.model_name)


def parse_body(raw: bytes) -> tuple[Any, Any]:
    """The prompt and max_new_tokens (None: the replica's default) from a request body.

    Raises BadPrompt(400) saying what is wrong with the body's shape.
    """
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadPrompt(400, 'body must be JSON: a string, or {"prompt": "...", "max_new_tokens": 64}')
    if isinstance(body, str):
        return body, None
    if not isinstance(body, dict):
        kind = {list: "an array", bool: "a boolean", int: "a number", float: "a number"}.get(type(body), "null")
        raise BadPrompt(400, f"body must be a JSON string or object, not {kind}")
    if "prompt" not in body:
        raise BadPrompt(400, "missing field 'prompt'")
    unknown = sorted(set(body) - {"prompt", "max_new_tokens"})
    if unknown:
        raise BadPrompt(400, f"unknown field(s): {', '.join(unknown)}")
    return body["prompt"], body.get("max_new_tokens")


app = LLM.bind()
