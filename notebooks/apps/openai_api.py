"""The series' chat model behind an OpenAI-compatible API: ``serve run apps.openai_api:app``.

Run from ``notebooks/``. Two deployments::

    openai client, curl,  --HTTP--> proxy --> OpenAIServer --handle, stream=True--> Generator (2 replicas,
    a Streamlit page                          /v1/models                             on the NPU /
                                              /v1/chat/completions                   GPU / CPU)

Any program written for OpenAI's chat API talks to it by changing the base URL::

    from openai import OpenAI

    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    reply = client.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "What is Ray Serve?"}])
    print(reply.choices[0].message.content, reply.usage)

``GET /v1/models`` lists the one model (its folder's name). ``POST /v1/chat/completions``
takes ``model``, ``messages``, ``max_completion_tokens`` (or ``max_tokens``, which OpenAI has
deprecated in its favour), ``temperature`` (0 to 2; **default 0**, greedy, where OpenAI's is
1), ``stream`` and, with ``stream: true`` only, ``stream_options.include_usage``. With
``stream: true`` the answer comes as server-sent events, ``data: {chunk}`` lines ending with
``data: [DONE]``; with ``include_usage`` every chunk carries ``"usage": null`` but a last one,
without choices, that carries the counts (as OpenAI sends them). Errors have OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``: 400 for a request the schema refuses or the
model cannot take (a prompt longer than its context), 401 for a missing or wrong API key,
404 for another model's name or an unknown path; parameters this server does not implement
(``tools``, ``top_p``, ``n`` > 1, ...) get a 400 that names them instead of being ignored.

**API key.** Off by default: on 127.0.0.1 only programs on this machine reach the server.
When ``SERVE_API_KEY`` is set in the replica's environment or
``OpenAIServer.bind(model, api_key=...)`` is given one, every ``/v1`` request must send
``Authorization: Bearer <key>`` (what the ``openai`` client sends for its ``api_key``).
Keep the key out of the application's config: a ``runtime_env`` ``env_vars`` entry is shown in
clear by the dashboard's Serve view (and its REST API), and a bind argument is stored, pickled,
in the GCS. Set ``SERVE_API_KEY`` in the environment of the Ray processes instead
(``SERVE_API_KEY=... ray start ...``; the replicas inherit it), on Kubernetes from a Secret
(``env: [{name: SERVE_API_KEY, valueFrom: {secretKeyRef: ...}}]`` in the pod templates).
``/docs``, ``/redoc`` and ``/openapi.json`` (FastAPI's description of the API) stay open
with the key on; they hold no secret, and ``FastAPI(docs_url=None, redoc_url=None,
openapi_url=None)`` turns them off. The key travels in clear over HTTP: off this machine,
use TLS (Serve's ``http_options`` ``ssl_keyfile`` and ``ssl_certfile``, or a proxy in front).

``OpenAIServer`` holds no model and no per-user state: each request is complete in itself,
so unlike a Gradio page it may run on several replicas. The model scales on its own
(``num_replicas`` of ``Generator``). To use this module in a project of your own, copy it with
``llm.py`` and what that imports (see its docstring).
"""

# No `from __future__ import annotations`: FastAPI reads the route's annotations at run time.
import hmac
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

if __package__:  # imported as part of the repository's `apps` package
    from .chat_core import MAX_MESSAGES, Temperature, TokenCount
    from .llm import Generator
    from .validation import AsciiJSON, ClientError
else:  # copied into a project of your own, next to llm.py and what it imports
    from chat_core import MAX_MESSAGES, Temperature, TokenCount
    from llm import Generator
    from validation import AsciiJSON, ClientError

API_KEY_ENV = "SERVE_API_KEY"
# Every open stream counts as an ongoing request of the ingress replica (Serve's default is 5).
MAX_OPEN_STREAMS = 100


# __openai_schema_begin__
class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # "developer" is what OpenAI's newer models call "system": the chat template gets "system".
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None  # accepted, as OpenAI does, and not used


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool = False  # with stream: true only, as at OpenAI


class ChatCompletionRequest(BaseModel):
    """Body of ``POST /v1/chat/completions``: the part of OpenAI's API this server implements."""

    model_config = ConfigDict(extra="forbid")  # an unsupported parameter is an error, not ignored

    model: StrictStr = Field(examples=["tiny-chat"])
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: TokenCount | None = Field(None, description="Wins over max_tokens when both are set.")
    max_tokens: TokenCount | None = Field(None, description="Deprecated by OpenAI: use max_completion_tokens.")
    temperature: Temperature | None = Field(None, description="Default 0: greedy, the same answer every time.")
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    n: Literal[1] | None = Field(None, description="One answer per request only.")
    user: StrictStr | None = None  # accepted, as OpenAI does, and not used
# __openai_schema_end__


class APIError(Exception):
    """An error with OpenAI's body: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(status, message, type_, param, code)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return AsciiJSON(self.body(), status_code=self.status, headers=headers)


def openai_errors(api: FastAPI) -> FastAPI:
    """Every error of ``api`` in OpenAI's shape: the client libraries read ``error.message``."""

    @api.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @api.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The first problem, named by its place in the body; the input is never echoed back.
        error = exc.errors()[0]
        where = [str(part) for part in error["loc"] if part != "body"]
        param = ".".join(where) or None
        if error["type"] == "extra_forbidden":
            message = f"{param}: not supported by this server"
        else:
            message = f"{param}: {error['msg']}" if param else error["msg"]
        return APIError(400, message, param=param, code=error["type"]).response()

    @api.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> JSONResponse:
        # e.g. the chat core's BadPrompt, raised in the model's replica: a prompt too long
        code = "context_length_exceeded" if "context" in exc.message else None
        return APIError(400, exc.message, param="messages", code=code).response()

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "unknown_url", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), code=code).response()

    return api


def to_chat_core(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """OpenAI's messages as the chat core's: text parts joined, "developer" as "system"."""
    turns = []
    for m in messages:
        text = m.content if isinstance(m.content, str) else "".join(part.text for part in m.content)
        turns.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    return turns


def _event(payload: dict[str, Any] | str) -> str:
    """One server-sent event: a ``data:`` line and a blank line."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"


def usage(counts: dict[str, Any]) -> dict[str, int]:
    return {"prompt_tokens": counts["prompt_tokens"], "completion_tokens": counts["completion_tokens"],
            "total_tokens": counts["prompt_tokens"] + counts["completion_tokens"]}


# __openai_sse_begin__
async def sse(head: dict[str, Any], first: Any, chunks: Any, include_usage: bool) -> AsyncIterator[str]:
    """The answer as OpenAI's stream: a chunk with the role, one per piece of text, one with
    the finish reason, the usage if asked for, then ``[DONE]``."""
    head = {**head, "object": "chat.completion.chunk"}
    if include_usage:  # as OpenAI does: "usage": null on every chunk but the last
        head["usage"] = None

    def chunk(delta: dict[str, str], finish_reason: str | None = None) -> str:
        return _event({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})

    # The role goes out with the first piece of text, in one write: one hop less before it.
    opening = chunk({"role": "assistant", "content": ""})
    counts = None
    try:
        item = first
        while item is not None:
            if isinstance(item, dict):  # the last item: token counts and finish reason
                counts = item
            elif item:
                yield opening + chunk({"content": item})
                opening = ""
            item = await anext(chunks, None)
    except Exception as exc:  # noqa: BLE001  (after the 200: report it the way OpenAI streams do)
        error = APIError(500, f"generation failed: {type(exc).__name__}", type_="server_error")
        yield opening + _event(error.body()) + _event("[DONE]")
        return
    finally:  # done, or the client went away: stop the generation
        chunks.cancel()
    ending = chunk({}, counts["finish_reason"] if counts else "stop")
    if include_usage and counts:
        ending += _event({**head, "choices": [], "usage": usage(counts)})
    yield opening + ending + _event("[DONE]")
# __openai_sse_end__


# Everything the routes call is defined above this line: @serve.ingress serializes the app (and
# what its routes refer to) when the class below is defined, so a function defined after it
# would be missing in the replica (NameError, a 500).
api = openai_errors(FastAPI(title="OpenAI-compatible chat API", description="A chat model served by Ray Serve."))


# __openai_server_begin__
@serve.deployment(
    num_replicas=1,  # stateless: more replicas are fine, each request is complete in itself
    ray_actor_options={"num_cpus": 0.2},  # no model here: it relays text
    max_ongoing_requests=MAX_OPEN_STREAMS,
)
@serve.ingress(api)
class OpenAIServer:
    async def __init__(self, model: DeploymentHandle, api_key: str | None = None) -> None:
        self.model = model  # the Generator deployment: complete() and stream_with_usage()
        self.model_name = (await model.info.remote())["model"]
        self.api_key = api_key or os.environ.get(API_KEY_ENV) or None
        self.created = int(time.time())

    def authorize(self, request: Request) -> None:
        """With a key set, ``Authorization: Bearer <key>`` must match it (compared in constant time)."""
        if self.api_key is None:
            return
        scheme, _, sent = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), self.api_key.encode()):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "ray-serve"}

    @api.get("/v1/models")
    async def list_models(self, request: Request) -> dict:
        self.authorize(request)
        return {"object": "list", "data": [self.model_card()]}

    @api.get("/v1/models/{model}")
    async def get_model(self, model: str, request: Request) -> dict:
        self.authorize(request)
        if model != self.model_name:
            raise APIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")
        return self.model_card()

    @api.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest, request: Request):
        self.authorize(request)
        if body.model != self.model_name:
            raise APIError(404, f"The model `{body.model}` does not exist; this server has `{self.model_name}`.",
                           param="model", code="model_not_found")
        if body.stream_options is not None and not body.stream:
            raise APIError(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                           param="stream_options")
        messages = to_chat_core(body.messages)
        options = {"max_new_tokens": body.max_completion_tokens or body.max_tokens,
                   "temperature": body.temperature or 0.0}
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.model_name}
        if not body.stream:
            result = await self.model.complete.remote(messages, **options)
            return {
                **head,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result["text"]},
                             "finish_reason": result["finish_reason"]}],
                "usage": usage(result),
            }
        chunks = self.model.options(stream=True).stream_with_usage.remote(messages, **options)
        # Wait for the first chunk before answering 200: a prompt the model cannot take raises
        # BadPrompt here, and becomes a 400 instead of an error inside a started stream.
        first = await anext(chunks, None)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(sse(head, first, chunks, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
# __openai_server_end__


# The model on two replicas (each a whole NPU/GPU where there is one, else half a CPU).
app = OpenAIServer.bind(Generator.options(num_replicas=2).bind())
