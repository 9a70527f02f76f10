"""A streaming chatbot: a Gradio page in front of a chat model that scales. ``serve run apps.chatbot:app``

Run from ``notebooks/``. Two deployments::

    browser --HTTP--> proxy --> ChatUI (1 replica) --handle, stream=True--> Generator (2 replicas,
                                Gradio page at /                                  on the NPU /
                                POST /generate                                    GPU / CPU)

* ``ChatUI`` serves the Gradio chat page (``gr.ChatInterface`` mounted on FastAPI) and
  ``POST /generate`` for programs. It holds no model. It runs as **one replica**: a Gradio chat
  is several HTTP requests (join the queue, then read the stream of updates) that must reach
  the same process, and Serve's router sends each request to any replica, with no session
  affinity. So the UI is not scaled; the model is.
* ``Generator`` (``llm.py``) holds the model and takes the accelerator. The UI streams each
  answer from it with ``handle.options(stream=True)``; Serve spreads the chats over its
  replicas. Scale it with ``num_replicas`` (or autoscaling) in the config file.

``POST /generate`` takes JSON ``{"message": "..."}`` (optionally ``max_new_tokens``,
``temperature``) and streams the answer as plain text::

    import requests

    with requests.post("http://127.0.0.1:8000/generate",
                       json={"message": "What is Ray Serve?"}, stream=True, timeout=60) as r:
        r.raise_for_status()
        for chunk in r.iter_content(chunk_size=None, decode_unicode=True):
            print(chunk, end="", flush=True)

A message that does not fit the model's context gets a 422 before any text is streamed.
The chat page sends the conversation so far with each message (``include_history``, on by
default); the oldest turns are left out when it would not fit the model's context.

This is the ``GradioBot`` of the source notebook, corrected for Ray 2.60 and Gradio 6 (see
notebook 05): it does not subclass ``ray.serve.gradio_integrations.GradioIngress``, which on
Gradio 6 serves a page that fails and never starts Gradio's queue.
"""

# No `from __future__ import annotations`: FastAPI reads the route's annotations at run time.
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

# Gradio (and gradio_client) send usage statistics and check for new versions over the
# internet unless told not to; a serving replica has no business doing either.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from fastapi.responses import StreamingResponse  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402
from ray import serve  # noqa: E402
from ray.serve.handle import DeploymentHandle  # noqa: E402

if __package__:  # imported as part of the repository's `apps` package
    from .chat_core import BadPrompt, PromptText, Temperature, TokenCount
    from .llm import Generator
    from .validation import clear_errors
else:  # copied into a project of your own, next to llm.py and what it imports
    from chat_core import BadPrompt, PromptText, Temperature, TokenCount
    from llm import Generator
    from validation import clear_errors

EXAMPLES = ["What is Ray Serve?", "What does the Serve controller do?", "What is a replica in Ray Serve?"]
# Every open chat page keeps a stream or two open to the UI replica (Gradio's heartbeat and
# its queue's updates), and Serve counts each as an ongoing request: its default limit of 5
# would let only two or three pages be open at once.
MAX_OPEN_STREAMS = 100

# What streams an answer: (prompt, **options) -> async iterator of text chunks with cancel().
# In the replica it is the model deployment's handle; in tests, ChatModel.astream.
StreamFn = Callable[..., Any]


class GenerateRequest(BaseModel):
    """Body of ``POST /generate``."""

    model_config = ConfigDict(extra="forbid")

    message: PromptText = Field(examples=["What is Ray Serve?"])
    max_new_tokens: TokenCount | None = None
    temperature: Temperature = Field(0.0, description="0: greedy, the same answer every time.")


def _text_of(content: Any) -> str:
    """The text of a chat message's content: a string, or Gradio's list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def conversation(message: str, history: list[dict[str, Any]], include_history: bool) -> list[dict[str, str]]:
    """The messages to send: the earlier turns Gradio keeps (if wanted), then the new one."""
    turns = []
    for turn in history if include_history else []:
        text = _text_of(turn.get("content"))
        if turn.get("role") in ("user", "assistant") and text:
            turns.append({"role": turn["role"], "content": text})
    return turns + [{"role": "user", "content": message}]


async def _first_then_rest(first: str, rest: Any) -> AsyncIterator[str]:
    try:
        if first:
            yield first
        async for chunk in rest:
            yield chunk
    finally:  # the client went away: stop the generation too
        rest.cancel()


# __chatbot_ui_begin__
def build_app(stream: StreamFn, info: dict[str, Any], include_history: bool = True, temperature: float = 0.0) -> FastAPI:
    """The UI replica's web app: ``POST /generate``, and the Gradio chat page at ``/``."""
    api = clear_errors(FastAPI(title="Ray Serve chatbot"))

    @api.post("/generate", response_class=StreamingResponse)
    async def generate(body: GenerateRequest):
        chunks = stream(body.message, max_new_tokens=body.max_new_tokens, temperature=body.temperature)
        # Wait for the first chunk before answering 200: a prompt the model cannot take
        # raises BadPrompt here, and clear_errors turns it into a 422.
        first = await anext(chunks, "")
        return StreamingResponse(_first_then_rest(first, chunks), media_type="text/plain")

    async def respond(message: str, history: list[dict[str, Any]]) -> AsyncIterator[str]:
        messages = conversation(message, history, include_history)
        answer, chunks = "", None
        try:
            chunks = stream(messages, temperature=temperature, trim_history=True)
            async for chunk in chunks:
                answer += chunk
                yield answer  # Gradio shows the growing answer
        except BadPrompt as exc:  # raised before the first chunk
            yield f"Error: {exc.message}"
        finally:  # the user pressed Stop or closed the page: stop generating
            if chunks is not None:
                chunks.cancel()

    ui = gr.ChatInterface(
        respond,
        # The model's words as it wrote them: rendered as Markdown, `__init__` would show as a bold "init".
        chatbot=gr.Chatbot(render_markdown=False, scale=1),
        title="Ray Serve chatbot",
        description=f"Model: {info['model']} on {info['device']}. Answers stream as they are generated.",
        examples=EXAMPLES,
        cache_examples=False,
        api_name="chat",  # the endpoint gradio_client calls: client.submit(..., api_name="/chat")
        concurrency_limit=None,  # chats run at once; the model deployment sets the pace
        analytics_enabled=False,
    )
    # After the route above: the mount at "/" answers every path it does not. No server-side
    # rendering (it would start a Node.js server in the replica), no run-history page (it
    # offers to upload past chats to a Hugging Face bucket).
    return gr.mount_gradio_app(api, ui, path="/", ssr_mode=False, run_history=False)


@serve.deployment(
    num_replicas=1,  # never more: a Gradio session must stay in one process (see above)
    ray_actor_options={"num_cpus": 0.2},  # no model here: it relays text
    max_ongoing_requests=MAX_OPEN_STREAMS,
)
@serve.ingress()  # no app yet: Serve calls __serve_build_asgi_app__ after __init__
class ChatUI:
    async def __init__(self, model: DeploymentHandle, include_history: bool = True, temperature: float = 0.0) -> None:
        # Serve passes a DeploymentHandle for the bound Generator deployment.
        self.model = model.options(stream=True)  # its calls return async iterators of chunks
        self.info = await model.info.remote()  # the model's name and device, for the page
        self.include_history = include_history
        self.temperature = temperature

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_app(self.model.stream.remote, self.info, self.include_history, self.temperature)


# The model on two replicas (each a whole NPU/GPU where there is one, else half a CPU).
model = Generator.options(num_replicas=2).bind()
app = ChatUI.bind(model)
# __chatbot_ui_end__
