"""DISPENSER=serial: a vending board on a serial port (pyserial, DISPENSER_PORT, 115200 8N1).

The board speaks the line protocol of cores/board_protocol.py (shared/DESIGN.md "Dispenser
drivers"; firmware/main.py is a reference firmware, tests/board_sim.py the simulated board).
Every vend keeps the journal of money rule 6 (cores/dispenser.VendJournal, VAR_DIR/vends.jsonl)
and ends in one of three answers, never in a second VEND of the same order:

    journal "started" with the slot (fsync'd), then VEND <order_id> <slot>
    ACK, then DONE OK                                   VENDED   journal "vended"
    ACK, then DONE FAIL <reason>                        FAILED   journal "failed", reason
    BUSY or ERR <text>, and no ACK of this order
      within the 1 s ACK window: refused                FAILED   journal "failed", reason BUSY/ERR
    no answer for 2 s after VEND                        UNKNOWN  nothing more journaled
    ACK, no DONE within VEND_TIMEOUT_S: RESULT asked    its answer; UNKNOWN/BUSY/silence: UNKNOWN
    the port fails (unplugged) after VEND was written   UNKNOWN
    the port cannot be opened (nothing was sent)        FAILED   journal "failed", reason PORT
    no slot given, or an order id with a space          FAILED   reason NO_SLOT / BAD_REQUEST

BUSY and ERR carry no order id: one may be a stale refusal of a VEND another writer put on the
line. So after one the driver keeps listening for the rest of the ACK window, and an `ACK
<this order>` in it wins: the board took this vend, which goes on. Only a refusal with no ACK
by the end of the window is FAILED (nothing moved).

UNKNOWN goes to the operator's queue: a "started" line without a result. `outcome(order_id)`
reads the journal first; for a started-only order (the host restarted mid-vend, or the port
failed) it asks the board `RESULT <order_id>` and journals a definite answer (OK: vended,
FAIL: failed). `RESULT <order_id> BUSY` (the board is still vending that order) is asked again
every RESULT_AGAIN_S until VEND_TIMEOUT_S has passed (a DONE of the order in between is the
answer); UNKNOWN, BUSY by then, or silence stay UNKNOWN. The ACK is expected within 1 s; one
that comes later but within the 2 s of silence is taken (and logged).

Lines the host does not understand, and lines about other orders, are logged and ignored; the
input is drained before each request so a stale BUSY cannot pass for the answer to a new VEND.
A DONE (or a definite RESULT) of an order the journal has only "started" for, read while the
driver was doing something else (draining, pinging, another vend), is journaled all the same:
the board's last word on a vend is never dropped.

The port is opened with `exclusive=True` (an flock on posix): a second process (doctor, a
terminal) cannot open it while the driver holds it and sees an error instead of stealing the
board's answers; the driver, finding it taken, fails the vend with reason PORT (nothing sent)
and keeps the error in `status()`.
`ping()` (at `start()` and every minute after) keeps the board's firmware version on the object
(`firmware`, `status()`); a board silent to PING is logged as such, never fatal.

One conversation with the board at a time (a lock): vends, RESULT questions and pings queue.
A port that failed is closed and opened again on the next request (a board plugged back in).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import serial  # type: ignore[import-untyped]

from cores import board_protocol as bp
from cores.dispenser import STARTED, VendJournal
from cores.logs import kv
from cores.rules import Vend

if TYPE_CHECKING:
    from cores.config import Settings

log = logging.getLogger(__name__)

#: How often the board is pinged after `start()`.
PING_EVERY_S = 60.0
#: One read waits at most this long, so deadlines are kept to about this precision.
READ_SLICE_S = 0.05
#: After `RESULT <order> BUSY`, ask again this often (until VEND_TIMEOUT_S).
RESULT_AGAIN_S = 0.5

PORT_ERRORS = (serial.SerialException, OSError)


def open_port(url: str) -> Any:
    """The board's port, 115200 8N1, locked for this process alone (a port open elsewhere
    raises serial.SerialException); any pyserial URL (a device, a pty, `loop://`)."""
    return serial.serial_for_url(
        url,
        exclusive=True,
        baudrate=bp.BAUDRATE,
        bytesize=serial.EIGHTBITS,
        parity=serial.PARITY_NONE,
        stopbits=serial.STOPBITS_ONE,
        timeout=READ_SLICE_S,
        write_timeout=1.0,
    )


class SerialDispenser:
    """The Dispenser protocol over a vending board's serial line (see the module docstring)."""

    def __init__(
        self,
        port: str,
        var_dir: Path,
        vend_timeout_s: float = 30.0,
        *,
        ack_within_s: float = bp.ACK_WITHIN_S,
        silent_after_s: float = bp.SILENT_AFTER_S,
        ping_every_s: float = PING_EVERY_S,
        clock: Callable[[], float] = time.time,
        opener: Callable[[str], Any] = open_port,
    ) -> None:
        self.port_url = port
        self.vends = VendJournal(var_dir, clock)
        self.journal = self.vends.path
        self.vend_timeout_s = vend_timeout_s
        self.ack_within_s = ack_within_s
        self.silent_after_s = silent_after_s
        self.ping_every_s = ping_every_s
        self.clock = clock
        self.opener = opener
        #: The board's firmware as its last PONG said (None: never answered).
        self.firmware: str | None = None
        #: Whether the board answered the last PING (None: not pinged yet), and when.
        self.alive: bool | None = None
        self.checked_at: float | None = None
        #: Why the port could not be used the last time it failed (None: it worked since).
        self.error: str | None = None
        self._port: Any = None
        self._buffer = b""
        self._lock = threading.Lock()
        self._begun: set[str] = set()
        self._stop = threading.Event()
        self._pinger: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> SerialDispenser:
        assert settings.dispenser_port  # cores/config.py requires it for DISPENSER=serial
        return cls(settings.dispenser_port, settings.var_dir, settings.vend_timeout_s)

    # --- life -------------------------------------------------------------------------------

    def start(self) -> None:
        """Ping the board now, then every `ping_every_s` on a daemon thread."""
        self.ping()
        if self._pinger is None:
            self._pinger = threading.Thread(target=self._ping_loop, name="board ping", daemon=True)
            self._pinger.start()

    def close(self) -> None:
        self._stop.set()
        if self._pinger is not None:
            self._pinger.join(timeout=self.silent_after_s + 1)
            self._pinger = None
        with self._lock:
            self._drop_port()

    def _ping_loop(self) -> None:
        while not self._stop.wait(self.ping_every_s):
            try:
                self.ping()
            except Exception:  # the pinger must outlive any surprise
                log.exception("board ping raised")

    def status(self) -> dict[str, object]:
        """For `status` and the console: the board's firmware and whether it answers."""
        return {
            "driver": "serial",
            "port": self.port_url,
            "firmware": self.firmware,
            "alive": self.alive,
            "checked_at": self.checked_at,
            "error": self.error,
        }

    # --- the Dispenser protocol --------------------------------------------------------------

    def begin(self, order_id: str, drink_id: str, slot: int | None = None) -> None:
        """Journal "started" now, with the slot (fleet mode's agent, before `vend`)."""
        self.vends.record(order_id, drink_id, STARTED, slot=slot)
        self._begun.add(order_id)
        log.info("vend started", extra=kv(order_id=order_id, drink=drink_id, slot=slot))

    def vend(self, order_id: str, drink_id: str, slot: int | None = None) -> Vend:
        if slot is None:
            return self._refuse(order_id, drink_id, slot, "NO_SLOT", "no slot for this drink")
        try:
            request = bp.vend(order_id, slot)
        except ValueError as exc:
            return self._refuse(order_id, drink_id, slot, "BAD_REQUEST", str(exc))
        with self._lock:
            if order_id in self._begun:
                self._begun.discard(order_id)
            else:
                self.vends.record(order_id, drink_id, STARTED, slot=slot)
            try:
                port = self._open()
                self._drain(port)
            except PORT_ERRORS as exc:
                self._drop_port(exc)
                return self._refuse(order_id, drink_id, slot, "PORT", f"port unusable: {exc}")
            try:
                port.write(request)
                port.flush()
                result, reason = self._await_vend(port, order_id)
            except PORT_ERRORS as exc:
                self._drop_port(exc)
                log.error(
                    "port failed mid-vend: outcome unknown",
                    extra=kv(order_id=order_id, slot=slot, error=exc),
                )
                return Vend.UNKNOWN
            if result is not Vend.UNKNOWN:
                self.vends.record(order_id, drink_id, result.value, slot=slot, reason=reason)
            log.info(
                "vend",
                extra=kv(
                    order_id=order_id, drink=drink_id, slot=slot, result=result.value, reason=reason
                ),
            )
            return result

    def outcome(self, order_id: str) -> Vend | None:
        known = self.vends.outcome(order_id)
        if known is not Vend.UNKNOWN:
            return known
        with self._lock:
            known = self.vends.outcome(order_id)  # a vend of this process may have ended
            if known is not Vend.UNKNOWN:
                return known
            return self._recover(order_id)

    def entries(self) -> list[dict]:
        return self.vends.entries()

    def ping(self) -> str | None:
        """PING the board: its firmware version, or None when it is silent or unreachable."""
        with self._lock:
            firmware = None
            try:
                port = self._open()
                self._drain(port)
                port.write(bp.ping())
                port.flush()
                deadline = time.monotonic() + self.silent_after_s
                while (raw := self._readline(port, deadline)) is not None:
                    message = bp.parse(raw)
                    if isinstance(message, bp.Pong):
                        firmware = message.firmware
                        break
                    self._ignored(message, "PING")
            except PORT_ERRORS as exc:
                self._drop_port(exc)
                log.warning("board unreachable", extra=kv(port=self.port_url, error=exc))
            if firmware is None:
                log.warning("board silent to PING", extra=kv(port=self.port_url))
            elif firmware != self.firmware:
                log.info("board firmware", extra=kv(port=self.port_url, firmware=firmware))
            self.alive = firmware is not None
            self.checked_at = self.clock()
            if firmware is not None:
                self.firmware = firmware
            return firmware

    # --- conversations (under the lock) -----------------------------------------------------

    def _await_vend(self, port: Any, order_id: str) -> tuple[Vend, str | None]:
        """After VEND was written: the vend's result and the reason of a failure."""
        sent = time.monotonic()
        first_deadline = sent + self.silent_after_s
        done_deadline = sent + max(self.vend_timeout_s, self.silent_after_s)
        ack_deadline = min(first_deadline, sent + self.ack_within_s)
        acked = False
        #: A BUSY or ERR seen before any ACK of this order: (reason, text).
        refused: tuple[str, str] | None = None
        while True:
            if acked:
                deadline = done_deadline
            elif refused is not None:
                deadline = ack_deadline
            else:
                deadline = first_deadline
            raw = self._readline(port, deadline)
            if raw is None:
                break
            message = bp.parse(raw)
            if isinstance(message, bp.Ack) and message.order_id == order_id:
                acked = True
                late = time.monotonic() - sent
                if late > self.ack_within_s:
                    log.warning("late ACK", extra=kv(order_id=order_id, after_s=round(late, 2)))
                if refused is not None:
                    log.warning(
                        "refusal before this order's ACK taken for a stale line",
                        extra=kv(order_id=order_id, refusal=refused[0], text=refused[1]),
                    )
            elif isinstance(message, bp.Done) and message.order_id == order_id:
                if message.ok:
                    return Vend.VENDED, None
                return Vend.FAILED, message.reason.value if message.reason else None
            elif not acked and isinstance(message, bp.Busy):
                refused = ("BUSY", "")  # no order id: an ACK of this order may still come
            elif not acked and isinstance(message, bp.Err):
                refused = ("ERR", message.text)
            else:
                self._ignored(message, "VEND")
        if not acked and refused is not None:
            log.warning(
                "board refused the vend",
                extra=kv(order_id=order_id, reason=refused[0], error=refused[1] or None),
            )
            return Vend.FAILED, refused[0]
        if not acked:
            log.error(
                "board silent after VEND: outcome unknown",
                extra=kv(order_id=order_id, silent_s=self.silent_after_s),
            )
            return Vend.UNKNOWN, None
        log.warning(
            "no DONE within the vend timeout: asking RESULT",
            extra=kv(order_id=order_id, timeout_s=self.vend_timeout_s),
        )
        return self._ask_result(port, order_id)

    def _recover(self, order_id: str) -> Vend:
        """A started-only order: ask the board; journal a definite answer."""
        started = self.vends.started(order_id) or {}
        try:
            port = self._open()
            self._drain(port)
            result, reason = self._ask_result(port, order_id, busy_for_s=self.vend_timeout_s)
        except PORT_ERRORS as exc:
            self._drop_port(exc)
            log.warning(
                "board unreachable for RESULT: outcome unknown",
                extra=kv(order_id=order_id, error=exc),
            )
            return Vend.UNKNOWN
        if result is not Vend.UNKNOWN:
            self.vends.record(
                order_id,
                str(started.get("drink", "")),
                result.value,
                slot=started.get("slot"),
                reason=reason,
                source="RESULT",
            )
        log.info(
            "vend outcome asked of the board",
            extra=kv(order_id=order_id, result=result.value, reason=reason),
        )
        return result

    def _ask_result(
        self, port: Any, order_id: str, busy_for_s: float = 0.0
    ) -> tuple[Vend, str | None]:
        """RESULT <order_id>: the board's memory of it. While it answers BUSY (still vending
        that order) it is asked again every RESULT_AGAIN_S for up to `busy_for_s`; a DONE of
        the order meanwhile is the answer."""
        busy_until = time.monotonic() + busy_for_s
        while True:
            port.write(bp.result(order_id))
            port.flush()
            deadline = time.monotonic() + self.silent_after_s
            memory: bp.Memory | None = None
            while (raw := self._readline(port, deadline)) is not None:
                message = bp.parse(raw)
                if isinstance(message, bp.Result | bp.Done) and message.order_id == order_id:
                    if isinstance(message, bp.Result) and message.memory is not None:
                        memory = message.memory
                        break
                    if message.ok:
                        return Vend.VENDED, None
                    return Vend.FAILED, message.reason.value if message.reason else None
                self._ignored(message, "RESULT")
            if memory is None:
                log.warning("board silent to RESULT", extra=kv(order_id=order_id))
                return Vend.UNKNOWN, None
            if memory is not bp.Memory.BUSY or time.monotonic() >= busy_until:
                log.warning("board cannot tell", extra=kv(order_id=order_id, memory=memory.value))
                return Vend.UNKNOWN, None
            log.info("board still vending the order: asking again", extra=kv(order_id=order_id))
            pause = min(time.monotonic() + RESULT_AGAIN_S, busy_until)
            while (raw := self._readline(port, pause)) is not None:
                message = bp.parse(raw)
                if isinstance(message, bp.Done) and message.order_id == order_id:
                    if message.ok:
                        return Vend.VENDED, None
                    return Vend.FAILED, message.reason.value if message.reason else None
                self._ignored(message, "RESULT")

    def _refuse(
        self, order_id: str, drink_id: str, slot: int | None, reason: str, detail: str
    ) -> Vend:
        """FAILED before anything was sent to the board: nothing moved."""
        self.vends.record(order_id, drink_id, Vend.FAILED.value, slot=slot, reason=reason)
        self._begun.discard(order_id)
        log.error(
            "vend refused, nothing moved",
            extra=kv(order_id=order_id, drink=drink_id, slot=slot, reason=reason, detail=detail),
        )
        return Vend.FAILED

    # --- the port ---------------------------------------------------------------------------

    def _open(self) -> Any:
        if self._port is None:
            self._port = self.opener(self.port_url)
            self._buffer = b""
            self.error = None
        return self._port

    def _drop_port(self, error: BaseException | None = None) -> None:
        if error is not None:
            self.error = str(error)
        port, self._port, self._buffer = self._port, None, b""
        if port is not None:
            with contextlib.suppress(*PORT_ERRORS):
                port.close()

    def _drain(self, port: Any) -> None:
        """Log and forget whatever the board said while nobody asked."""
        while port.in_waiting:
            self._buffer += port.read(port.in_waiting)
        while b"\n" in self._buffer:
            raw, _, self._buffer = self._buffer.partition(b"\n")
            self._ignored(bp.parse(raw), "nothing")
        if self._buffer:
            log.info("partial line dropped", extra=kv(line=self._buffer[: bp.MAX_LINE]))
            self._buffer = b""

    def _readline(self, port: Any, deadline: float) -> bytes | None:
        """The next whole line before `deadline` (monotonic), or None."""
        while b"\n" not in self._buffer:
            if time.monotonic() >= deadline:
                return None
            chunk = port.read(max(1, min(port.in_waiting, 256)))
            self._buffer += chunk
            if len(self._buffer) > 4 * bp.MAX_LINE and b"\n" not in self._buffer:
                log.warning("over-long line dropped", extra=kv(size=len(self._buffer)))
                self._buffer = b""
        raw, _, self._buffer = self._buffer.partition(b"\n")
        return raw

    def _ignored(self, message: bp.BoardLine, during: str) -> None:
        """A line nobody asked for now: journaled when it ends a started-only vend (a DONE, or
        a definite RESULT, e.g. of a vend that outlived the host's wait), else logged."""
        if isinstance(message, bp.Done | bp.Result) and self._late_result(message, during):
            return
        log.warning("board line ignored", extra=kv(during=during, line=repr(message)))

    def _late_result(self, message: bp.Done | bp.Result, during: str) -> bool:
        if isinstance(message, bp.Result) and message.memory is not None:
            return False
        if self.vends.outcome(message.order_id) is not Vend.UNKNOWN:
            return False  # no record, or a result journaled already
        started = self.vends.started(message.order_id) or {}
        result = Vend.VENDED if message.ok else Vend.FAILED
        reason = message.reason.value if message.reason and not message.ok else None
        self.vends.record(
            message.order_id,
            str(started.get("drink", "")),
            result.value,
            slot=started.get("slot"),
            reason=reason,
            source=f"late {type(message).__name__.upper()}",
        )
        log.warning(
            "late vend result journaled",
            extra=kv(order_id=message.order_id, result=result.value, reason=reason, during=during),
        )
        return True
