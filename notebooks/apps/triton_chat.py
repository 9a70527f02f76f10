"""The chat model on NVIDIA PyTriton: ``python triton_chat.py`` (from ``notebooks/apps/``).

PyTriton runs NVIDIA's Triton Inference Server and binds Python functions to it as models.
This module binds the same chat core that the Serve apps use, three ways:

- ``chat``: one request at a time (``@sample``), as the source demo served its model;
- ``chat_batched``: Triton's dynamic batcher groups concurrent requests (``@batch``,
  ``DynamicBatcher``) and the model answers the whole group in one ``generate()`` call;
- ``chat_stream``: a decoupled model (``ModelConfig(decoupled=True)``) whose generator sends
  the answer chunk by chunk, one response per request in every list it yields.

Each takes ``prompt``, a JSON text: a user message (a JSON string) or a conversation (a JSON
list of ``{"role", "content"}`` messages), and optionally ``max_new_tokens``; each answers
``answer``. Any HTTP client can call them with the KServe v2 protocol, no Triton client
needed::

    curl -X POST http://127.0.0.1:8100/v2/models/chat/infer -d '{"inputs": [
      {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["\\"What is Ray Serve?\\""]}]}'
    curl -N -X POST http://127.0.0.1:8100/v2/models/chat_stream/generate_stream \\
         -d '{"prompt": "\\"What is Ray Serve?\\""}'

A request that breaks the protocol (an unknown input, a wrong type or shape) gets Triton's own
HTTP 400. A prompt the model cannot answer (not JSON, blank, too long) gets an empty
``answer`` and the reason in ``error``: PyTriton reports an exception raised by an inference
function to Triton as the error of every request in that call, with the Python traceback as
its message (``pytriton/proxy/inference.py`` and ``proxy/model.py``).

The server listens on 127.0.0.1 only, on ports 8100 (HTTP), 8101 (gRPC) and 8102 (metrics):
Triton's defaults (8000-8002) are the ports Ray Serve uses. SIGINT or SIGTERM stops Triton and
its model processes cleanly. PyTriton needs ``numpy<2`` (and its own ``protobuf``), so it runs
in an environment of its own (``make .venv-pytriton``). To use this module in a project of
your own, copy it with ``chat_core.py``, ``accelerator.py`` and ``validation.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from pytriton.decorators import batch, fill_optionals, sample
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

if __package__:  # imported as part of the repository's `apps` package
    from .chat_core import BadPrompt, ChatModel
else:  # run as a script, or copied into a project of your own next to chat_core.py
    from chat_core import BadPrompt, ChatModel

HTTP_PORT = 8100  # gRPC and metrics on the next two ports
MAX_BATCH_SIZE = 16

# Every binding takes the same tensors. Shapes leave out the batch axis where batching is on.
INPUTS = [
    Tensor(name="prompt", dtype=bytes, shape=(1,)),
    Tensor(name="max_new_tokens", dtype=np.int32, shape=(1,), optional=True),
]
OUTPUTS = [  # the answer, or the reason there is none ("" when there is an answer)
    Tensor(name="answer", dtype=bytes, shape=(1,)),
    Tensor(name="error", dtype=bytes, shape=(1,)),
]
DEFAULTS = {"max_new_tokens": np.array([0], dtype=np.int32)}  # 0: the model's default


def decode_prompt(raw: Any) -> Any:
    """The ``prompt`` tensor's bytes as a message or a conversation; BadPrompt if not JSON."""
    try:
        return json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadPrompt(422, f"prompt: not a JSON string or list of messages ({exc})") from None


def wanted_tokens(raw: Any) -> int | None:
    """``max_new_tokens`` as the chat core takes it (None: the model's default)."""
    return int(raw) or None


def text_array(texts: list[str]) -> np.ndarray:
    """Strings as a Triton BYTES tensor, one row per string."""
    return np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)


class TritonChat:
    """The three inference functions, over one loaded model."""

    def __init__(self, model: ChatModel) -> None:
        self.model = model

    # __triton_plain_begin__
    @fill_optionals(**DEFAULTS)
    @sample
    def chat(self, prompt: np.ndarray, max_new_tokens: np.ndarray) -> dict[str, np.ndarray]:
        """One request, one answer (``@sample`` hands over the request's tensors)."""
        try:
            result = self.model.generate(decode_prompt(prompt[0]), max_new_tokens=wanted_tokens(max_new_tokens[0]))
        except BadPrompt as exc:  # the reason, not an exception (PyTriton makes those a 500)
            return {"answer": text_array([""])[0], "error": text_array([exc.message])[0]}
        return {"answer": text_array([result.text])[0], "error": text_array([""])[0]}
    # __triton_plain_end__

    # __triton_batched_begin__
    @fill_optionals(**DEFAULTS)
    @batch
    def chat_batched(self, prompt: np.ndarray, max_new_tokens: np.ndarray) -> dict[str, np.ndarray]:
        """The requests Triton's dynamic batcher grouped, answered in one ``generate()`` call.

        ``@batch`` stacks the requests' tensors, a row per request: ``prompt[i, 0]``.
        """
        answers, errors, good = [""] * len(prompt), [""] * len(prompt), {}
        for i, (raw, tokens) in enumerate(zip(prompt[:, 0], max_new_tokens[:, 0])):
            try:
                good[i] = self.model.prepare(decode_prompt(raw), wanted_tokens(tokens))
            except BadPrompt as exc:  # this row's reason; its batchmates are still answered
                errors[i] = exc.message
        for i, result in zip(good, self.model.run_batch(list(good.values()))):
            answers[i] = result.text
        return {"answer": text_array(answers), "error": text_array(errors)}
    # __triton_batched_end__

    # __triton_stream_begin__
    @fill_optionals(**DEFAULTS)
    def chat_stream(self, requests: list) -> Iterator[list[dict[str, np.ndarray]]]:
        """A decoupled model: any number of responses to each request, here a chunk at a time.

        PyTriton sends the i-th response of every list this generator yields to the i-th
        request, and refuses a list of another length: each list holds one response per
        request. The requests' answers are generated side by side; one that is complete (or
        refused) gets empty chunks until the others are.
        """
        streams: list[Iterator[str] | None] = []  # None: no more text for that request
        errors: list[str] = []
        for request in requests:
            try:
                streams.append(self.model.stream(
                    decode_prompt(request["prompt"][0]), max_new_tokens=wanted_tokens(request["max_new_tokens"][0])
                ))
                errors.append("")
            except BadPrompt as exc:  # its reason goes in the first response
                streams.append(None)
                errors.append(exc.message)
        first = True
        while first or any(streams):
            chunks = []
            for i, stream in enumerate(streams):
                chunk = next(stream, None) if stream else None
                if chunk is None:
                    streams[i] = None  # ended: never ask it again (it would wait for ever)
                chunks.append(chunk or "")
            if not (first and any(errors)) and not any(streams):
                return  # every answer is complete
            yield [
                {"answer": text_array([chunk])[0], "error": text_array([error if first else ""])[0]}
                for chunk, error in zip(chunks, errors)
            ]
            first = False
    # __triton_stream_end__


# __triton_serve_begin__
def serve(model_path: str | None = None, http_port: int = HTTP_PORT, max_queue_delay_ms: float = 10) -> None:
    """Start Triton on 127.0.0.1 with the three models; block until SIGINT or SIGTERM."""
    chat = TritonChat(ChatModel(model_path))  # one model, shared by the three bindings
    config = TritonConfig(
        http_address="127.0.0.1", http_port=http_port,
        grpc_address="127.0.0.1", grpc_port=http_port + 1,
        metrics_address="127.0.0.1", metrics_port=http_port + 2,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="chat",
            infer_func=chat.chat,
            inputs=INPUTS,
            outputs=OUTPUTS,
            config=ModelConfig(batching=False),
            strict=True,
        )
        triton.bind(
            model_name="chat_batched",
            infer_func=chat.chat_batched,
            inputs=INPUTS,
            outputs=OUTPUTS,
            config=ModelConfig(
                max_batch_size=MAX_BATCH_SIZE,
                batcher=DynamicBatcher(max_queue_delay_microseconds=int(max_queue_delay_ms * 1000)),
            ),
            strict=True,
        )
        triton.bind(
            model_name="chat_stream",
            infer_func=chat.chat_stream,
            inputs=INPUTS,
            outputs=OUTPUTS,
            config=ModelConfig(batching=False, decoupled=True),
            strict=True,
        )
        # serve() blocks, and stops Triton and the model processes on KeyboardInterrupt.
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: the same clean stop
        triton.serve()
# __triton_serve_end__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a local checkpoint folder (default: $SERVE_CHAT_MODEL, else tiny-chat)")
    parser.add_argument("--http-port", type=int, default=HTTP_PORT, help="HTTP port; gRPC and metrics take the next two")
    parser.add_argument("--max-queue-delay-ms", type=float, default=10, help="how long the batcher waits to fill a batch")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch's CPU threads (default 1, see below)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # PyTriton calls each model from a thread of its own, and torch gives every thread that
    # runs it a pool of CPU threads: pools as large as the machine then fight for its cores.
    torch.set_num_threads(args.torch_threads)
    serve(args.model, args.http_port, args.max_queue_delay_ms)


if __name__ == "__main__":
    main()
