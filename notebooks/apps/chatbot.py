"""A streaming chat bot with a Gradio UI, as one Ray Serve deployment: ``serve run apps.chatbot:app``.

Run from ``notebooks/``. The replica serves two things on one route:

* ``/`` - a Gradio chat page (``gr.ChatInterface``) that shows the answer while the model
  writes it; Gradio's own API is there too (``gradio_client.Client(url).submit(message,
  api_name="/chat")``);
* ``POST /generate`` - for programs: JSON ``{"message": "..."}`` in, the answer out as plain
  text, streamed in chunks as the model writes it::

      import requests

      with requests.post("http://127.0.0.1:8000/generate",
                         json={"message": "What is Ray Serve?"}, stream=True, timeout=60) as r:
          r.raise_for_status()
          for chunk in r.iter_content(chunk_size=None, decode_unicode=True):
              print(chunk, end="", flush=True)

  A missing, empty or too long message gets a 422 with a message that says what is wrong;
  ``{"message": "...", "greedy": false}`` samples instead of decoding greedily.

The chat itself (:class:`ChatEngine`) and the web app (:func:`build_api`) need no Ray: tests
and notebooks can serve ``build_api(ChatEngine())`` with plain uvicorn (:func:`serve_locally`).
The deployment :class:`GradioBot` builds the same app inside its replica.

This is the ``GradioBot`` of the source notebook, corrected for Ray 2.60 and Gradio 6. It does
not subclass ``ray.serve.gradio_integrations.GradioIngress``: that class turns the Blocks into
an ASGI app with ``gradio.routes.App.create_app`` alone, which on Gradio 6 serves a page
without a theme (``GET /`` fails) and never starts Gradio's queue (every chat request waits
forever). ``gr.mount_gradio_app`` does both; :class:`GradioServer` is a drop-in for the
``GradioServer`` deployment of that module built on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

# Gradio (and gradio_client) send usage statistics and check for new versions over the
# internet unless told not to; a serving replica has no business doing either.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import torch  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator  # noqa: E402
from ray import serve  # noqa: E402
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer  # noqa: E402

import helpers  # noqa: E402
from apps.llm import MAX_PROMPT_CHARS, BadPrompt  # noqa: E402

# Sampling settings of the source notebook (its GenerationConfig), used when greedy=False.
SAMPLING = dict(do_sample=True, temperature=0.7, top_k=40, top_p=0.9, num_beams=1, repetition_penalty=1.1)
# Greedy decoding: the same answer every time. The default, so that tests (and readers) can
# compare an answer with the corpus. Turn sampling on with GradioBot.bind(greedy=False) (the
# UI), ChatEngine(greedy=False), stream(..., greedy=False) or {"greedy": false} in /generate.
GREEDY = dict(do_sample=False, num_beams=1)
MAX_NEW_TOKENS = 400  # the source's value; capped to what is left of the model's context
MIN_ANSWER_TOKENS = 32  # refuse a prompt that leaves less room than this for the answer
EXAMPLES = ["What is Ray Serve?", "What does the Serve controller do?", "What is a replica in Ray Serve?"]


class _StopWhenSet(StoppingCriteria):
    """Ends generate() early once ``event`` is set (the client went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class TextStream:
    """The text of one answer, chunk by chunk, while a background thread generates it.

    A blocking iterator (``for chunk in stream``); :meth:`cancel` stops the generation early.
    An exception in the generation thread is raised here, at the end of the text so far.
    """

    def __init__(self, streamer: TextIteratorStreamer, stop: threading.Event) -> None:
        self._streamer = streamer
        self._stop = stop
        self.error: BaseException | None = None

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        for chunk in self._streamer:  # TextIteratorStreamer also yields "": skip those
            if chunk:
                return chunk
        if self.error is not None:
            raise RuntimeError(f"generation failed: {self.error!r}") from self.error
        raise StopIteration

    def cancel(self) -> None:
        self._stop.set()


class ChatEngine:
    """Tokenizer and model, loaded once onto the accelerator; answers stream as text chunks.

    Args:
        model_path: a local checkpoint directory (default: ``$SERVE_CHAT_MODEL`` or
            ``assets/tiny-chat``).
        greedy: default decoding; ``False`` samples with the source notebook's settings.
        include_history: send the earlier turns of the conversation to the model too.
            Off by default: tiny-chat was trained on single user turns only and answers
            correctly only when it sees the bare last question. Turn it on for a real
            instruction-tuned checkpoint.
    """

    def __init__(self, model_path: str | None = None, *, greedy: bool = True, include_history: bool = False) -> None:
        # Ascend NPU (torch_npu) if present, else CUDA, else the CPU.
        self.device = helpers.detect_accelerator().torch_device
        if self.device.startswith("npu"):
            import torch_npu  # noqa: F401  (helpers imported it already; registers torch.npu)

            # As in the source: no online operator compilation, slow for generate()'s shapes.
            torch_npu.npu.set_compile_mode(jit_compile=False)
        self.tokenizer, self.model = helpers.load_chat_model(model_path, device=self.device)
        self.model_name = self.model.config.name_or_path.rstrip("/").split("/")[-1]
        self.max_context = int(self.model.config.max_position_embeddings)
        self.greedy = greedy
        self.include_history = include_history

    def _messages(self, message: str, history: list[dict[str, Any]] | None, include_history: bool) -> list[dict[str, str]]:
        turns = []
        for turn in (history or []) if include_history else []:
            text = _text_of(turn.get("content"))
            if turn.get("role") in ("user", "assistant") and text:
                turns.append({"role": turn["role"], "content": text})
        return turns + [{"role": "user", "content": message}]

    def _encode(self, messages: list[dict[str, str]]) -> dict[str, torch.Tensor]:
        # The model's own chat template (the source hard-coded Llama-2's "[INST] <<SYS>>").
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt")

    def prepare(
        self,
        message: Any,
        history: list[dict[str, Any]] | None = None,
        *,
        max_new_tokens: int | None = None,
        include_history: bool | None = None,
    ) -> tuple[dict[str, torch.Tensor], int]:
        """Check the message and tokenize the prompt: ``(inputs, max_new_tokens)``, or BadPrompt(422)."""
        if not isinstance(message, str) or not message.strip():
            raise BadPrompt(422, "the message must be a non-empty string")
        if len(message) > MAX_PROMPT_CHARS:
            raise BadPrompt(422, f"the message is {len(message)} characters; the limit is {MAX_PROMPT_CHARS}")
        wanted = MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens
        if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
            raise BadPrompt(422, "max_new_tokens must be a positive integer")
        with_history = self.include_history if include_history is None else include_history
        messages = self._messages(message, history, with_history)
        inputs = self._encode(messages)
        while inputs["input_ids"].shape[1] + MIN_ANSWER_TOKENS > self.max_context and len(messages) > 1:
            messages = messages[2:] if len(messages) > 2 else messages[1:]  # drop the oldest turn
            inputs = self._encode(messages)
        n_prompt = inputs["input_ids"].shape[1]
        if n_prompt + MIN_ANSWER_TOKENS > self.max_context:
            raise BadPrompt(
                422,
                f"the message is {n_prompt} tokens; the model's context of {self.max_context} tokens "
                f"leaves no room for an answer (shorten the message)",
            )
        return inputs.to(self.device), min(wanted, self.max_context - n_prompt)

    def stream(
        self,
        message: Any,
        history: list[dict[str, Any]] | None = None,
        *,
        greedy: bool | None = None,
        max_new_tokens: int | None = None,
        include_history: bool | None = None,
    ) -> TextStream:
        """Start answering ``message``; return its text as an iterator of chunks.

        Checks the input first, so that a bad message raises BadPrompt here and not halfway
        through a stream.
        """
        inputs, budget = self.prepare(message, history, max_new_tokens=max_new_tokens, include_history=include_history)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        text = TextStream(streamer, stop)
        settings = GREEDY if (self.greedy if greedy is None else greedy) else SAMPLING

        def generate() -> None:
            try:
                if self.device.startswith("npu"):
                    torch.npu.set_device(self.device)  # type: ignore[attr-defined]  (per thread)
                with torch.inference_mode():
                    self.model.generate(
                        **inputs,
                        **settings,
                        max_new_tokens=budget,
                        pad_token_id=self.tokenizer.pad_token_id,
                        eos_token_id=self.tokenizer.eos_token_id,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_StopWhenSet(stop)]),
                    )
            except BaseException as exc:  # noqa: BLE001  (handed to the reader of the stream)
                text.error = exc
                streamer.end()  # otherwise the reader waits for text forever

        threading.Thread(target=generate, name="generate", daemon=True).start()
        return text

    def answer(self, message: str, **kwargs: Any) -> str:
        """The whole answer at once (blocking)."""
        return "".join(self.stream(message, **kwargs))


def _text_of(content: Any) -> str:
    """The text of a chat message's content: a string, or Gradio's list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


async def chunks(stream: TextStream) -> AsyncIterator[str]:
    """Iterate a TextStream without blocking the event loop; stop generating if abandoned."""
    try:
        while (chunk := await asyncio.to_thread(next, stream, None)) is not None:
            yield chunk
    finally:
        stream.cancel()


def build_ui(engine: ChatEngine) -> gr.ChatInterface:
    """The chat page: streams the growing answer, and shows bad input as the bot's reply."""

    async def respond(message: str, history: list[dict[str, Any]]) -> AsyncIterator[str]:
        try:
            stream = engine.stream(message, history)
        except BadPrompt as exc:
            yield f"Error: {exc}"
            return
        answer = ""
        # aclosing: when Gradio closes this handler (the user pressed Stop, or left), the
        # generation stops at once, not when the abandoned iterator is garbage-collected.
        async with contextlib.aclosing(chunks(stream)) as parts:
            async for chunk in parts:
                answer += chunk
                yield answer

    return gr.ChatInterface(
        respond,
        title="Llama Chat Bot",
        description=f"Model: {engine.model_name} on {engine.device}. Answers stream as they are generated.",
        examples=EXAMPLES,
        cache_examples=False,
        api_name="chat",  # Gradio 6 would otherwise name the endpoint after the function
        analytics_enabled=False,
    )


class GenerateRequest(BaseModel):
    """Body of ``POST /generate``."""

    model_config = ConfigDict(extra="forbid")

    message: StrictStr = Field(max_length=MAX_PROMPT_CHARS)
    greedy: StrictBool | None = None  # None: the deployment's default (greedy unless bound otherwise)
    max_new_tokens: StrictInt | None = Field(default=None, ge=1)

    @field_validator("message")
    @classmethod
    def not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the message must be a non-empty string")
        return value


def mount_ui(api: FastAPI, ui: gr.Blocks, path: str = "/") -> FastAPI:
    """Mount a Gradio app on ``api`` the way a replica needs it (no SSR Node server, no run history)."""
    return gr.mount_gradio_app(api, ui, path=path, ssr_mode=False, run_history=False)


def build_api(engine: ChatEngine) -> FastAPI:
    """The replica's web app: ``POST /generate`` and the Gradio UI at ``/``."""
    api = FastAPI(title="Llama Chat Bot")

    @api.post("/generate", response_class=StreamingResponse)
    async def generate(body: GenerateRequest):
        try:
            stream = engine.stream(body.message, greedy=body.greedy, max_new_tokens=body.max_new_tokens)
        except BadPrompt as exc:  # e.g. more tokens than the model's context
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        return StreamingResponse(chunks(stream), media_type="text/plain")

    # After the routes above: the mount at "/" answers every path they do not.
    return mount_ui(api, build_ui(engine))


# Every open chat page keeps a stream or two open to the replica (Gradio's heartbeat and its
# queue's updates), and Serve counts each as an ongoing request: its default limit of 5 would
# let only a few pages be open at once. Gradio's queue runs one chat at a time anyway.
MAX_ONGOING_REQUESTS = 100


@serve.deployment(
    ray_actor_options=helpers.ray_actor_options(num_cpus=1),
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
)
@serve.ingress()  # no app yet: Serve calls __serve_build_asgi_app__ after __init__
class GradioBot:
    def __init__(self, model_path: str | None = None, greedy: bool = True, include_history: bool = False) -> None:
        self.engine = ChatEngine(model_path, greedy=greedy, include_history=include_history)

    def __serve_build_asgi_app__(self) -> FastAPI:
        # The UI's handler needs this replica's engine, so the app is built here, in the
        # replica, rather than at import time.
        return build_api(self.engine)

    def placement(self) -> dict[str, Any]:
        """Where Ray put this replica: the accelerators it was given and torch's device."""
        import ray

        context = ray.get_runtime_context()
        return {
            "accelerator_ids": {k: v for k, v in context.get_accelerator_ids().items() if v},
            "ASCEND_RT_VISIBLE_DEVICES": os.environ.get("ASCEND_RT_VISIBLE_DEVICES"),
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "torch_device": self.engine.device,
        }


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=MAX_ONGOING_REQUESTS)
@serve.ingress()
class GradioServer:
    """Serve any Gradio app: ``GradioServer.bind(builder)``, ``builder()`` returning a gr.Blocks.

    The interface of ``ray.serve.gradio_integrations.GradioServer``, working on Gradio 6.
    """

    def __init__(self, builder: Callable[[], gr.Blocks]) -> None:
        self.builder = builder

    def __serve_build_asgi_app__(self) -> FastAPI:
        return mount_ui(FastAPI(), self.builder())


@contextlib.contextmanager
def serve_locally(asgi_app: Any, port: int, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a background thread (no Ray); yields its URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(asgi_app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=2)
        # Still running: open streams hold it up (a browser tab's or a gradio_client's
        # heartbeat, which Gradio ends only at the app's shutdown): stop without them.
        server.force_exit = True
        thread.join(timeout=10)


app = GradioBot.bind()
