"""What crosses the sandbox's wire: a request, a reply, and a refused call as Midtrans words it.

`SandboxError` is the one exception of the sandbox: a call refused with a Midtrans
status_code ("400", "404", "412", ...). Every module raises it; the routes turn it into a reply
whose HTTP status follows shared/midtrans.md, "The local sandbox: where Midtrans is silent".
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

MSG_FOUND = "Success, transaction is found"
MSG_INVALID = "One or more parameters in the payload is invalid."
MSG_NOT_FOUND = "Transaction doesn't exist."
MSG_NO_ROUTE = "The requested resource is not found"
MSG_CANNOT_MODIFY = "Merchant cannot modify the status of the transaction"
MSG_DUPLICATE_ORDER = (
    "The request could not be completed due to a conflict with the current state of the "
    "target resource, please try again"
)
MSG_NOTIFICATION = "midtrans payment notification"

#: HTTP status of an error body's status_code (midtrans.md: 414 comes with HTTP 400; a code
#: not listed comes with HTTP 200, the code in the body alone).
HTTP_OF_CODE = {
    "400": 400,
    "401": 401,
    "402": 402,
    "404": 404,
    "405": 405,
    "406": 406,
    "412": 412,
    "414": 400,
    "429": 429,
    "500": 500,
    "503": 503,
}


class SandboxError(Exception):
    """A refused call, as Midtrans would answer it: `status_code` ("404", "412", ...), the
    `message`, and for 400 the `validation_messages`."""

    def __init__(
        self, status_code: str, message: str, validation_messages: list[str] | None = None
    ) -> None:
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.validation_messages = validation_messages

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status_code": self.status_code, "status_message": self.message}
        if self.validation_messages is not None:
            body["validation_messages"] = self.validation_messages
        body["id"] = str(uuid.uuid4())
        return body


def invalid(*messages: str) -> SandboxError:
    """A 400 validation error listing `messages`."""
    return SandboxError("400", MSG_INVALID, list(messages))


@dataclass
class Request:
    """One HTTP request, read in full. `base`: the URL the client reached the sandbox at."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    base: str


@dataclass
class Reply:
    """One HTTP answer. `code`: the body's status_code; `close`: end the connection after it;
    `drop`: close the connection without answering (the DROP_RATE fault)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    code: str = ""
    close: bool = False
    drop: bool = False
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(status: int, body: Any, code: str = "") -> Reply:
    return Reply(status, json.dumps(body).encode(), code=code)


def ok(body: dict[str, Any]) -> Reply:
    """A success answer: HTTP 200 whatever the body's status_code (201, 202, 407 included)."""
    return json_reply(200, body, str(body.get("status_code", "200")))


def error_reply(error: SandboxError) -> Reply:
    return json_reply(HTTP_OF_CODE.get(error.status_code, 200), error.body(), error.status_code)
