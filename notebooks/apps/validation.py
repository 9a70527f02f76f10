"""What every HTTP app of the series does with bad input: a clear 4xx, never a 500.

FastAPI validates a request body against the route's pydantic model and answers a mismatch
with a 422 naming the field. Two gaps remain, and :func:`clear_errors` closes them on an app:

* FastAPI's own 422 echoes the offending input back, and fails doing so (a 500) when that
  input is not text: a body that is not UTF-8, sent without a JSON content type, reaches the
  schema as bytes; JSON may carry a lone surrogate (``"\\ud800"``). The 422 here names the
  field and the problem, without echoing the input;
* an error the app raises on purpose (:class:`ClientError`, e.g. "the prompt does not fit the
  model's context"), here or in a deployment it called through a handle, becomes its 4xx
  with a ``detail`` sentence.

Only pydantic and FastAPI are needed: copy this module next to the apps that import it.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class ClientError(ValueError):
    """The client asked for something this app cannot do; carries the HTTP status to send."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)  # both in args, so that it pickles across processes
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message


class AsciiJSON(JSONResponse):
    """JSON with non-ASCII characters escaped: renders whatever text an error message holds."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def clear_errors(api: FastAPI) -> FastAPI:
    """Make every way a request can be wrong a 4xx with a JSON ``detail`` (see the module doc)."""

    @api.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler, without echoing the input back.
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return AsciiJSON({"detail": detail}, status_code=422)

    @api.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> JSONResponse:
        return AsciiJSON({"detail": exc.message}, status_code=exc.status)

    return api
