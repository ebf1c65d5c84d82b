"""The notification receiver's HTTP connections: uvicorn, made fit for a public endpoint.

uvicorn serves the receiver's ASGI app (services/notification_service.py) from one event loop
with a real listen backlog: a sender costs a connection, not a thread. Its h11 protocol lacks
what an endpoint open to anyone needs, so `GuardedProtocol` adds it:

- A deadline for the whole request, from its first byte to its answer (`deadline_s`): a
  sender that trickles its headers or its body is answered 408 then; a request received whole
  but not answered by then (Redis hanging) is answered 503, so that Midtrans sends it again.
  A connection that sends nothing is closed at the deadline.
- Every answer is readable: a refusal is the receiver's JSON {status_code, status_message}
  with `Connection: close`, also for a request h11 cannot parse (uvicorn's own is text/plain),
  and a sender that shuts its side after its request (half-close) still gets the answer.
- A lingering close: closing a socket with request bytes still unread makes the kernel
  reset the connection, and the reset can destroy the answer before the sender has read it
  (an early 413, say). So the answer is sent, our side shut (FIN), and whatever still arrives
  is read and dropped until the sender closes or `linger_s` passes (Apache's lingering close).

A sender that goes away at any point costs nothing but its connection: no log line above
DEBUG, no traceback. `ServerThread` runs uvicorn in a thread of its own, without signal
handlers (the process's main thread keeps those), on a socket bound at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from http import HTTPStatus
from typing import Any

import h11
import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from constants.tunables import (
    NOTIFICATION_BACKLOG,
    NOTIFICATION_LINGER_S,
    NOTIFICATION_REQUEST_DEADLINE_S,
    SERVER_START_TIMEOUT_S,
)
from cores.logs import kv

log = logging.getLogger(__name__)


def answer_body(status: int, message: str) -> bytes:
    """The receiver's answer, in Midtrans's own shape: {"status_code": "401", ...}."""
    return json.dumps({"status_code": str(status), "status_message": message}).encode()


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with a whole-request deadline, JSON refusals and a lingering
    close (module docstring). `with_limits` makes a copy with other limits (tests)."""

    deadline_s: float = NOTIFICATION_REQUEST_DEADLINE_S
    linger_s: float = NOTIFICATION_LINGER_S

    @classmethod
    def with_limits(cls, deadline_s: float, linger_s: float) -> type[GuardedProtocol]:
        return type(cls.__name__, (cls,), {"deadline_s": deadline_s, "linger_s": linger_s})

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.raw: asyncio.Transport | None = None  # the socket's own transport
        self.deadline: asyncio.TimerHandle | None = None
        self.linger: asyncio.TimerHandle | None = None
        self.peer_done = False  # the sender shut its side: nothing more will arrive
        self.closed = False

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.raw = transport
        super().connection_made(_GentleTransport(transport, self))
        self._arm()  # a connection that never sends a byte is closed at the deadline too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        if self.linger is not None:
            self.linger.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.linger is not None:
            return  # answered and closing: the rest is dropped unread
        self._arm()
        super().data_received(data)

    def eof_received(self) -> bool | None:  # type: ignore[override]
        """The sender shut its side. Keep ours open while its request still has an answer to
        come (True); otherwise close (None)."""
        self.peer_done = True
        if self.linger is not None or self.closed:
            return None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False
            if self.conn.their_state is h11.SEND_BODY:
                # The body ends here, complete or not: the app sees its end and judges it.
                cycle.more_body = False
                cycle.message_event.set()
            return True
        if self.conn.trailing_data[0]:  # part of a request that will never be whole
            self._answer_now(HTTPStatus.BAD_REQUEST, "incomplete request")
            return True
        return None

    # --- uvicorn's hooks --------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """h11 cannot parse the request (uvicorn has logged it): answer in our own shape."""
        self._answer_now(HTTPStatus.BAD_REQUEST, "malformed HTTP request")

    def on_response_complete(self) -> None:
        self._disarm()  # answered in time; an idle keep-alive is uvicorn's to time out
        super().on_response_complete()
        if self.conn.their_state is not h11.IDLE or self.conn.trailing_data[0]:
            self._arm()  # a pipelined request has begun

    def shutdown(self) -> None:
        """The server stops: a lingering connection is closed now."""
        if self.linger is not None and self.raw is not None:
            self.raw.close()
            return
        super().shutdown()

    # --- the deadline, the answers, the close ------------------------------------------------

    def _arm(self) -> None:
        if self.deadline is None and not self.closed:
            self.deadline = self.loop.call_later(self.deadline_s, self._deadline_passed)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _deadline_passed(self) -> None:
        self.deadline = None
        if self.closed or self.linger is not None:
            return
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
            self.close_gently()  # not a byte of a request: nothing to answer
            return
        if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE):
            status, message = HTTPStatus.SERVICE_UNAVAILABLE, "try again later"
        else:
            status, message = HTTPStatus.REQUEST_TIMEOUT, "request not complete in time"
        log.info(
            "notification request cut at its deadline",
            extra=kv(status=status.value, deadline_s=self.deadline_s),
        )
        self._answer_now(status, message)

    def _answer_now(self, status: HTTPStatus, message: str) -> None:
        """Answer from here, in place of the app (which then never will), and close."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:  # half an answer is out: nothing readable can follow
                self.close_gently()
                return
            # The app's wait for the body ends, and its answer, if any, is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        body = answer_body(status.value, message)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        response = h11.Response(status_code=status.value, headers=headers, reason=status.phrase)
        try:
            out = b"".join(
                self.conn.send(event) or b""
                for event in (response, h11.Data(data=body), h11.EndOfMessage())
            )
        except h11.LocalProtocolError:  # h11 allows no answer in this state: just close
            out = b""
        if out and self.raw is not None:
            self.raw.write(out)
        self.close_gently()

    def close_gently(self) -> None:
        """Close; linger first when the sender may still be sending (module docstring)."""
        if self.closed or self.linger is not None or self.raw is None:
            return
        self._disarm()
        unread = self.conn.their_state in (h11.SEND_BODY, h11.ERROR) or self.conn.trailing_data[0]
        if self.peer_done or not unread or not self.raw.can_write_eof():
            self.closed = True
            self.raw.close()
            return
        self.raw.write_eof()  # the answer, then FIN: the sender reads it to its end
        self.raw.resume_reading()
        self.linger = self.loop.call_later(self.linger_s, self.raw.close)


class _GentleTransport(asyncio.Transport):
    """The transport as uvicorn sees it: the socket's, except that close() is the protocol's
    gentle close, and is_closing() is true from its start."""

    def __init__(self, raw: asyncio.Transport, protocol: GuardedProtocol) -> None:
        super().__init__()
        self._raw = raw
        self._protocol = protocol

    def close(self) -> None:
        self._protocol.close_gently()

    def is_closing(self) -> bool:
        p = self._protocol
        return p.closed or p.linger is not None or self._raw.is_closing()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._raw.write(data)

    def abort(self) -> None:
        self._raw.abort()

    def can_write_eof(self) -> bool:
        return self._raw.can_write_eof()

    def write_eof(self) -> None:
        self._raw.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._raw.get_extra_info(name, default)


class _Server(uvicorn.Server):
    """uvicorn's server, telling when it accepts connections."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


class ServerThread:
    """uvicorn serving `app` in a thread of its own. The socket is bound (and listening) at
    construction, so `port` is known at once and port 0 picks a free one."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        protocol: type[GuardedProtocol] = GuardedProtocol,
        backlog: int = NOTIFICATION_BACKLOG,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family, backlog=backlog)
        self.host, self.port = host, self.socket.getsockname()[1]
        config = Config(
            app,
            host=host,
            port=self.port,
            http=protocol,
            ws="none",  # no websocket upgrade on this port
            lifespan="off",
            backlog=backlog,
            access_log=False,  # one line per business event, from the app
            log_config=None,  # the entry script configures logging
            server_header=False,
            # Every request ends by its deadline; a lingering close, by the stop.
            timeout_graceful_shutdown=int(protocol.deadline_s) + 1,
        )
        self.server = _Server(config)
        self.thread = threading.Thread(target=self._serve, name="notification-http", daemon=True)

    def _serve(self) -> None:
        try:
            # Off the main thread uvicorn installs no signal handler (Server.capture_signals).
            self.server.run(sockets=[self.socket])
        finally:
            self.server.ready.set()  # a failed start must not leave start() waiting
            self.socket.close()

    def start(self) -> None:
        """Serve; returns once connections are being accepted."""
        self.thread.start()
        self.server.ready.wait(SERVER_START_TIMEOUT_S)
        if not self.server.started:
            raise RuntimeError(f"the HTTP server on port {self.port} did not start")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop accepting, finish the requests in hand (each ends by its deadline), close."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout_s)
        else:
            self.socket.close()
