"""The kiosk server's plain HTTP: the files of web/, and /healthz.

    GET /            web/index.html          GET /healthz   what the machine behind the page
    GET /<file>      a file under web/                      gate says, plus "pages": 200, or
    HEAD             the same headers, no body              503 when it is unavailable
    other methods    405

/healthz is `{"ok", "state", "redis", "pages"}` on one machine (503 when Redis is down) and
`{"ok", "backend": "up" | "down", "pages"}` on a fleet agent (200 while it serves: with its
backend link down its pages show the machine out of service, as they should).

Every answer carries the page's security headers: a Content-Security-Policy that allows what
web/index.html and web/kiosk.js load (their own scripts and styles, drink icons and data:
images, the gateway's QR image over http(s), websockets to any host for `?ws=`) and nothing
else, and forbids framing; X-Frame-Options for browsers that predate frame-ancestors;
nosniff; no-cache so that a kiosk picks up a new page at once after an update.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from cores.logs import kv

log = logging.getLogger(__name__)

#: The kiosk page and its assets.
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
HEALTH_PATH = "/healthz"

#: The page's policy: the <meta> policy of web/index.html plus frame-ancestors, which only a
#: header can carry. img-src keeps http: and https: for the QR image the gateway serves
#: (`qr_image_url`, e.g. the local sandbox's generate-qr-code URL).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data: http: https:; connect-src 'self' ws: wss:; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".ttf": "font/ttf",
    ".txt": "text/plain; charset=utf-8",
    ".webmanifest": "application/manifest+json",
}


#: What /healthz asks the machine behind the gate: an HTTP status and the body's fields.
Health = Callable[[], Awaitable[tuple[HTTPStatus, dict[str, object]]]]


class WebFiles:
    """Answers the HTTP requests that are not the websocket upgrade.

    `health()` is the machine's part of /healthz; `pages()` counts the connected pages.
    """

    def __init__(self, web_dir: Path, health: Health, pages: Callable[[], int]) -> None:
        self.web_dir = Path(web_dir).resolve()
        self.health = health
        self.pages = pages

    async def answer(self, request: Request) -> Response:
        path = urlsplit(request.path).path
        if request.method not in ("GET", "HEAD"):
            response = respond(HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n", ".txt")
            response.headers["Allow"] = "GET, HEAD"
        elif path == HEALTH_PATH:
            response = await self._health()
        else:
            response = await self._static(path)
        if request.method == "HEAD":
            response.body = b""
        log.debug(
            "http",
            extra=kv(method=request.method, path=request.path[:200], status=response.status_code),
        )
        return response

    async def _health(self) -> Response:
        status, fields = await self.health()
        body = {**fields, "pages": self.pages()}
        return respond(status, json.dumps(body).encode(), ".json")

    async def _static(self, path: str) -> Response:
        file = self.web_file(path)
        if file is None:
            return respond(HTTPStatus.NOT_FOUND, b"not found\n", ".txt")
        try:
            body = await asyncio.to_thread(file.read_bytes)
        except OSError:
            return respond(HTTPStatus.NOT_FOUND, b"not found\n", ".txt")
        return respond(HTTPStatus.OK, body, file.suffix)

    def web_file(self, path: str) -> Path | None:
        """The file under web/ that `path` names, or None: no '..', no dot-files, no escapes."""
        try:
            name = unquote(path, errors="strict")
        except UnicodeDecodeError:
            return None
        if name == "/":
            name = "/index.html"
        if not name.startswith("/"):
            return None
        parts = name[1:].split("/")
        for part in parts:
            if not part or part.startswith(".") or "\\" in part or "\x00" in part:
                return None
        try:
            file = self.web_dir.joinpath(*parts).resolve(strict=True)
        except (OSError, RuntimeError, ValueError):
            return None
        # A symlink inside web/ must not lead out of it either.
        if not file.is_relative_to(self.web_dir) or not file.is_file():
            return None
        return file


def respond(status: HTTPStatus, body: bytes, suffix: str) -> Response:
    """An HTTP answer with the kiosk's headers; `suffix` picks the content type."""
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Type", CONTENT_TYPES.get(suffix.lower(), "application/octet-stream")),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
            ("X-Frame-Options", "DENY"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


__all__ = ["CONTENT_SECURITY_POLICY", "HEALTH_PATH", "WEB_DIR", "Health", "WebFiles", "respond"]
