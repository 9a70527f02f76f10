"""The chat core: one plain class that loads a chat model from a local folder and answers with it.

There is no Ray in this module. The deployments (``llm.py``, ``chatbot.py``, ``rag.py``) wrap
it, and tests and notebooks use it directly::

    model = ChatModel()                                  # $SERVE_CHAT_MODEL, else assets/tiny-chat
    model.generate("What is Ray Serve?").text            # the whole answer (blocking)
    for chunk in model.stream("What is Ray Serve?"):     # chunks as the model writes them
        print(chunk, end="")
    async for chunk in model.astream(messages):          # the same inside an event loop
        ...

A prompt is a user message (a string) or a conversation: a list of ``{"role", "content"}``
messages (roles ``system``, ``user``, ``assistant``; the last one from the user). The model's
own chat template renders it, so the same code serves any local Hugging Face chat checkpoint
(Llama, Qwen, Gemma, DeepSeek, ...). Everything is checked before generation starts: a bad
prompt raises :class:`BadPrompt` (with an HTTP status, 422) at once, never halfway through a
stream.

Streaming runs ``generate()`` in a background thread that writes decoded text into a queue
(``TextStreamer``'s word-by-word decoding); the caller blocks on that queue, or awaits it,
with no polling. An exception in the thread is raised to the reader of the stream, and
closing or abandoning a stream stops the generation. ``chunk_interval_s`` joins the words that
come faster than that into one chunk: a chunk that crosses processes (a Serve handle, HTTP)
costs the same CPU whether it holds one word or ten, so a fast model should send fewer.

Models are loaded from disk only (``local_files_only=True``), never with ``trust_remote_code``.
The module needs torch, transformers and pydantic, plus ``accelerator.py`` and ``validation.py``
next to it.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictStr, TypeAdapter, ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList, TextStreamer

if __package__:  # imported as part of the repository's `apps` package
    from .accelerator import detect_accelerator
    from .validation import ClientError
else:  # copied into a project of your own, next to accelerator.py and validation.py
    from accelerator import detect_accelerator
    from validation import ClientError

MODEL_ENV = "SERVE_CHAT_MODEL"
# The series' tiny model, where the repository keeps it; anywhere else set $SERVE_CHAT_MODEL.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "assets" / "tiny-chat"

MAX_PROMPT_CHARS = 8_000  # refuse huge bodies before spending time tokenizing them
MAX_MESSAGES = 64
DEFAULT_MAX_NEW_TOKENS = 128
MIN_ANSWER_TOKENS = 16  # a prompt that leaves less room than this in the context is refused
# The source notebook's sampling settings, used when temperature > 0 (temperature is the caller's).
SAMPLING = dict(top_k=40, top_p=0.9, repetition_penalty=1.1)


# -- what a valid prompt is: one definition, used by the core and by every HTTP schema ----------


class Message(BaseModel):
    """One turn of a conversation."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: StrictStr = Field(max_length=MAX_PROMPT_CHARS)


# What the HTTP schemas of the apps use for a prompt, a conversation and a token budget.
PromptText = Annotated[StrictStr, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
Conversation = Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
TokenCount = Annotated[int, Field(strict=True, ge=1)]
Temperature = Annotated[float, Field(strict=True, ge=0.0, le=2.0, allow_inf_nan=False)]

_TEXT = TypeAdapter(PromptText)
_CONVERSATION = TypeAdapter(Conversation)
_TOKENS = TypeAdapter(TokenCount)
_TEMPERATURE = TypeAdapter(Temperature)


class BadPrompt(ClientError):
    """The client sent something the model cannot answer; carries the HTTP status to send."""


class GenerationError(RuntimeError):
    """``generate()`` failed in the background thread (the model's fault, not the client's)."""


def validate(value: Any, adapter: TypeAdapter, what: str) -> Any:
    """``value`` checked against one of the types above; BadPrompt(422) saying what is wrong."""
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
        raise BadPrompt(422, f"{what}{where}: {error['msg']}") from None


def check_prompt(prompt: Any) -> list[dict[str, str]]:
    """A user message (a string) or a conversation (a list of messages), as a list of messages."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": validate(prompt, _TEXT, "prompt")}]
    elif isinstance(prompt, (list, tuple)):
        messages = [m.model_dump() for m in validate(list(prompt), _CONVERSATION, "prompt")]
    else:
        raise BadPrompt(422, "prompt: must be a string or a list of messages")
    if messages[-1]["role"] != "user":
        raise BadPrompt(422, "prompt: the last message must come from the user")
    if not messages[-1]["content"].strip():
        raise BadPrompt(422, "prompt: the message must not be blank")
    if sum(len(m["content"]) for m in messages) > MAX_PROMPT_CHARS:
        raise BadPrompt(422, f"prompt: more than {MAX_PROMPT_CHARS} characters in all")
    return messages


# -- loading ------------------------------------------------------------------------------------


def model_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The checkpoint folder to load: ``path``, else ``$SERVE_CHAT_MODEL``, else tiny-chat."""
    chosen = Path(path or os.environ.get(MODEL_ENV) or DEFAULT_MODEL_DIR).expanduser()
    if not (chosen / "config.json").is_file():
        raise FileNotFoundError(
            f"{chosen} is not a local model folder (no config.json). Models are loaded from "
            f"disk only: download a checkpoint first and set {MODEL_ENV} to its folder."
        )
    return chosen


def context_length(model: Any, tokenizer: Any) -> int:
    """How many tokens (prompt + answer) the model can attend to."""
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    # Tokenizers without a limit report a huge sentinel (int(1e30)); ignore it.
    usable = [int(n) for n in limits if isinstance(n, int) and 0 < n < 10_000_000]
    if not usable:
        raise ValueError("cannot tell the model's context length (no max_position_embeddings)")
    return min(usable)


@dataclass(frozen=True)
class Prompt:
    """A checked, tokenized prompt and the number of tokens its answer may have."""

    inputs: dict[str, torch.Tensor]
    prompt_tokens: int
    max_new_tokens: int


@dataclass(frozen=True)
class Generation:
    """A whole answer, with what OpenAI-style APIs report about it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


class _StopWhenSet(StoppingCriteria):
    """Ends generate() early once ``event`` is set (the reader went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


# __chat_core_streaming_begin__
class _ChunkStreamer(TextStreamer):
    """``TextStreamer`` that hands each decoded chunk to ``emit`` and counts the new tokens."""

    def __init__(self, tokenizer: Any, emit: Callable[[str], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.emit = emit
        self.tokens = 0
        self.last_token: int | None = None

    def put(self, value: torch.Tensor) -> None:
        is_prompt = self.skip_prompt and self.next_tokens_are_prompt
        super().put(value)
        if not is_prompt:
            self.tokens += value.numel()
            self.last_token = int(value.reshape(-1)[-1])

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:  # TextStreamer also reports "" while a word is incomplete
            self.emit(text)


_END = object()


def _joined(emit: Callable[[Any], None], interval_s: float) -> Callable[[Any], None]:
    """``emit`` that passes on text at most once per ``interval_s`` (the first word at once),
    joining the words that came in between; the end of the stream flushes what is left."""
    if interval_s <= 0:
        return emit
    pending: list[str] = []
    last_sent = -interval_s

    def join_and_emit(item: Any) -> None:  # called in the generation thread only
        nonlocal last_sent
        if isinstance(item, str):
            pending.append(item)
            now = time.monotonic()
            if now - last_sent < interval_s:
                return
            last_sent = now
        if pending:
            emit("".join(pending))
            pending.clear()
        if not isinstance(item, str):  # the end, or an exception
            emit(item)

    return join_and_emit


class _Stream:
    """What the sync and async streams share: the generation thread, usage, cancellation."""

    def __init__(
        self,
        chat: ChatModel,
        prompt: Prompt,
        temperature: float,
        emit: Callable[[Any], None],
        chunk_interval_s: float = 0.0,
    ) -> None:
        self.prompt_tokens = prompt.prompt_tokens
        self._budget = prompt.max_new_tokens
        self._eos = chat.eos_token_ids
        self._stop = threading.Event()
        emit = _joined(emit, chunk_interval_s)
        self._streamer = _ChunkStreamer(chat.tokenizer, emit)

        def run() -> None:
            try:
                chat.run_generate(prompt, temperature, streamer=self._streamer, stop=self._stop)
            except BaseException as exc:  # noqa: BLE001  (handed to the reader of the stream)
                emit(exc)
            else:
                emit(_END)

        # Not a daemon: at interpreter exit Python waits for it (it stops at the next token once
        # cancelled) instead of killing it inside torch.
        threading.Thread(target=run, name="generate").start()

    @property
    def completion_tokens(self) -> int:
        return self._streamer.tokens

    @property
    def finish_reason(self) -> Literal["stop", "length"]:
        return "stop" if self._streamer.last_token in self._eos or self.completion_tokens < self._budget else "length"

    def cancel(self) -> None:
        """Stop generating (the reader is gone); the stream then ends."""
        self._stop.set()

    def __del__(self) -> None:
        self._stop.set()

    @staticmethod
    def _unwrap(item: Any) -> str:
        if isinstance(item, BaseException):
            raise GenerationError(f"generation failed: {item!r}") from item
        return item


class TextStream(_Stream):
    """The answer's text, chunk by chunk, while a thread generates it: ``for chunk in stream``."""

    def __init__(self, chat: ChatModel, prompt: Prompt, temperature: float, chunk_interval_s: float = 0.0) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        super().__init__(chat, prompt, temperature, self._queue.put, chunk_interval_s)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        item = self._queue.get()  # blocks until the thread writes: no polling
        if item is _END:
            raise StopIteration
        return self._unwrap(item)
# __chat_core_streaming_end__


class AsyncTextStream(_Stream):
    """The same, for an event loop: ``async for chunk in stream``; ``aclose()`` stops it."""

    def __init__(self, chat: ChatModel, prompt: Prompt, temperature: float, chunk_interval_s: float = 0.0) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def emit(item: Any) -> None:  # called in the generation thread
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, item)
            except RuntimeError:  # the event loop is closed: nobody is reading any more
                self._stop.set()

        super().__init__(chat, prompt, temperature, emit, chunk_interval_s)

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        item = await self._queue.get()
        if item is _END:
            raise StopAsyncIteration
        return self._unwrap(item)

    async def aclose(self) -> None:
        self.cancel()


# -- the model ----------------------------------------------------------------------------------


class ChatModel:
    """A causal language model and its tokenizer, loaded once onto the accelerator.

    Args:
        path: a local checkpoint folder (default: ``$SERVE_CHAT_MODEL``, else tiny-chat).
        device: a torch device; default: the Ascend NPU, CUDA GPU or CPU that is present.
        max_new_tokens: the answer length when a call does not say (capped to the room left
            in the model's context).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        device: str | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar in logs and notebook cells
        folder = model_dir(path)
        self.device = device or detect_accelerator().torch_device
        if self.device.startswith("npu"):
            import torch_npu  # registers torch.npu

            # No online operator compilation: slow for generate()'s changing shapes.
            torch_npu.npu.set_compile_mode(jit_compile=False)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if not self.tokenizer.chat_template:
            raise ValueError(f"{folder} has no chat template: it is a base model, not a chat model")
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype="auto")
        self.model = model.to(self.device).eval()
        self.name = folder.name
        self.max_context = context_length(self.model, self.tokenizer)
        eos = self.model.generation_config.eos_token_id or self.tokenizer.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = min(self.eos_token_ids)
        self.max_new_tokens = max_new_tokens

    def __repr__(self) -> str:
        return f"ChatModel({self.name!r} on {self.device}, context {self.max_context} tokens)"

    # -- checking and tokenizing -----------------------------------------------------------

    def prepare(
        self,
        prompt: str | Sequence[Any],
        max_new_tokens: int | None = None,
        *,
        trim_history: bool = False,
    ) -> Prompt:
        """Check a prompt and tokenize it with the chat template; BadPrompt(422) if unusable.

        ``max_new_tokens``: when given, prompt + answer must fit the model's context; when
        ``None``, the default is capped to the room that is left. ``trim_history``: drop the
        oldest turns of a conversation (keeping system messages) until it fits.
        """
        messages = check_prompt(prompt)
        if max_new_tokens is not None:
            validate(max_new_tokens, _TOKENS, "max_new_tokens")
        wanted = max_new_tokens or self.max_new_tokens

        ids = self._encode(messages)
        # Leave room for a whole answer: drop the oldest turns while it would not fit.
        while trim_history and len(ids) + wanted > self.max_context:
            earlier = [i for i, m in enumerate(messages[:-1]) if m["role"] != "system"]
            if not earlier:
                break
            del messages[earlier[0]]  # the oldest turn
            ids = self._encode(messages)

        n = len(ids)
        if max_new_tokens is not None and n + max_new_tokens > self.max_context:
            raise BadPrompt(
                422,
                f"prompt is {n} tokens; with max_new_tokens={max_new_tokens} that exceeds the "
                f"model's context of {self.max_context} tokens",
            )
        budget = min(wanted, self.max_context - n)
        if budget < min(wanted, MIN_ANSWER_TOKENS):
            raise BadPrompt(
                422,
                f"prompt is {n} tokens; the model's context of {self.max_context} tokens leaves "
                f"no room for an answer",
            )
        input_ids = torch.tensor([ids], device=self.device)
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        return Prompt(inputs, n, budget)

    def _encode(self, messages: list[dict[str, str]]) -> list[int]:
        # The model's own chat template; it adds the BOS token where the model has one.
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # e.g. a template that accepts no system message
            raise BadPrompt(422, f"prompt: the model's chat template refused it ({exc})") from None
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # -- generating ------------------------------------------------------------------------

    def run_generate(
        self,
        prompt: Prompt,
        temperature: float = 0.0,
        *,
        streamer: Any = None,
        stop: threading.Event | None = None,
    ) -> torch.Tensor:
        """``model.generate`` for a prepared prompt: greedy at temperature 0, else sampled."""
        temperature = validate(temperature, _TEMPERATURE, "temperature")
        settings: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            settings = {"do_sample": True, "temperature": temperature, **SAMPLING}
        if self.device.startswith("npu"):
            torch.npu.set_device(self.device)  # type: ignore[attr-defined]  (per thread)
        with torch.inference_mode():
            return self.model.generate(
                **prompt.inputs,
                **settings,
                num_beams=1,
                max_new_tokens=prompt.max_new_tokens,
                pad_token_id=self.pad_token_id,
                eos_token_id=sorted(self.eos_token_ids),
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_StopWhenSet(stop)]) if stop else None,
            )

    def generate(
        self,
        prompt: str | Sequence[Any],
        *,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        trim_history: bool = False,
    ) -> Generation:
        """The whole answer at once (blocking: call it in a thread from async code)."""
        checked = self.prepare(prompt, max_new_tokens, trim_history=trim_history)
        output = self.run_generate(checked, temperature)
        new = output[0, checked.prompt_tokens :].tolist()
        stopped = bool(new) and new[-1] in self.eos_token_ids
        return Generation(
            text=self.tokenizer.decode(new, skip_special_tokens=True).strip(),
            prompt_tokens=checked.prompt_tokens,
            completion_tokens=len(new),
            finish_reason="stop" if stopped or len(new) < checked.max_new_tokens else "length",
        )

    # __chat_core_batch_begin__
    def run_batch(self, prompts: Sequence[Prompt]) -> list[Generation]:
        """Greedy answers to several prepared prompts in ONE ``generate()`` call.

        The prompts are padded on the left to the longest one (a decoder-only model continues
        the last position of each row, so the padding must come first) and masked out; each
        row stops at its own budget or end-of-sequence token. The answers equal the ones
        :meth:`generate` gives each prompt alone, while a batch costs much less than the same
        prompts one after the other.
        """
        if not prompts:
            return []
        width = max(p.prompt_tokens for p in prompts)
        rows, masks = [], []
        for p in prompts:
            pad = width - p.prompt_tokens
            rows.append([self.pad_token_id] * pad + p.inputs["input_ids"][0].tolist())
            masks.append([0] * pad + [1] * p.prompt_tokens)
        budget = max(p.max_new_tokens for p in prompts)
        batch = Prompt(
            {
                "input_ids": torch.tensor(rows, device=self.device),
                "attention_mask": torch.tensor(masks, device=self.device),
            },
            width,
            budget,
        )
        output = self.run_generate(batch, 0.0)
        answers = []
        for p, row in zip(prompts, output[:, width:].tolist()):
            new = row[: p.max_new_tokens]
            end = next((i for i, t in enumerate(new) if t in self.eos_token_ids), None)
            if end is not None:
                new = new[: end + 1]  # what follows a row's end is padding
            stopped = end is not None
            answers.append(
                Generation(
                    text=self.tokenizer.decode(new, skip_special_tokens=True).strip(),
                    prompt_tokens=p.prompt_tokens,
                    completion_tokens=len(new),
                    finish_reason="stop" if stopped or len(new) < p.max_new_tokens else "length",
                )
            )
        return answers

    def generate_batch(
        self, prompts: Sequence[str | Sequence[Any]], *, max_new_tokens: int | None = None
    ) -> list[Generation]:
        """:meth:`generate` for several prompts at once (greedy); BadPrompt if any is unusable."""
        return self.run_batch([self.prepare(p, max_new_tokens) for p in prompts])
    # __chat_core_batch_end__

    def stream(
        self,
        prompt: str | Sequence[Any],
        *,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        trim_history: bool = False,
        chunk_interval_s: float = 0.0,
    ) -> TextStream:
        """Start answering; return the text as a blocking iterator of chunks.

        The prompt is checked first, so a bad one raises BadPrompt here, not in the stream.
        ``chunk_interval_s`` > 0: words that come faster than that are joined into one chunk.
        """
        checked = self.prepare(prompt, max_new_tokens, trim_history=trim_history)
        validate(temperature, _TEMPERATURE, "temperature")
        return TextStream(self, checked, temperature, chunk_interval_s)

    def astream(
        self,
        prompt: str | Sequence[Any],
        *,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        trim_history: bool = False,
        chunk_interval_s: float = 0.0,
    ) -> AsyncTextStream:
        """:meth:`stream` for async code (call it inside a running event loop)."""
        checked = self.prepare(prompt, max_new_tokens, trim_history=trim_history)
        validate(temperature, _TEMPERATURE, "temperature")
        return AsyncTextStream(self, checked, temperature, chunk_interval_s)
