"""A simulated vending board on a pseudo-terminal, for the serial driver's tests.

It speaks the line protocol of cores/board_protocol.py exactly as the reference firmware
(firmware/main.py) does: PING -> PONG <firmware>; VEND <order_id> <slot> -> ACK, then DONE OK
or DONE FAIL <reason> (BUSY while another vend runs, ERR for a bad line or an unknown slot);
RESULT <order_id> -> the remembered result, BUSY while that order vends, UNKNOWN otherwise.
A VEND of an order it remembers is not run again: ACK and the remembered DONE.

Tests set what the next vends do (`mode`), and read what the board received (`received`) and
which vends moved a motor (`moved`):

    mode "ok"        ACK, then DONE OK after `vend_s`
    mode "fail"      ACK, then DONE FAIL `fail_reason` (EMPTY moves nothing, as the firmware)
    mode "no_ack"    says nothing at all (the motor does not run)
    mode "ack_only"  ACK, the motor runs, DONE never sent (`result_after` is remembered: the
                     DONE line was lost), e.g. "OK"; None: the board forgets the order
    mode "hold"      ACK, DONE OK (or FAIL `fail_reason` when `hold_fails`) when `release` is set
    mode "busy"      BUSY;  mode "err": ERR <text>  (refused, nothing moved)

`stale_before_ack` is a line (e.g. "BUSY", "ERR bad slot 9") sent just before the answer to
each VEND, as a refusal of another writer's VEND still on the line; `garbage` sends junk lines
before each answer; `answer_ping` / `answer_result` off make the
board silent to PING / RESULT; `unplug_after_ack` closes the board's side right after an ACK,
as a cable pulled mid-vend; `unplug()` does it any time.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import tty

GARBAGE = [b"\x00\xff\xfe garbage", b"HELLO WORLD", b"ACK", b"DONE x MAYBE", b"PONG", b"RESULT"]


class BoardSim:
    def __init__(self, firmware: str = "drinkboard-sim 1.2.0", slots: int = 8) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.firmware = firmware
        self.slots = slots
        self.mode = "ok"
        self.fail_reason = "JAM"
        self.vend_s = 0.05
        self.result_after: str | None = "OK"
        self.hold_fails = False
        self.garbage = False
        self.answer_ping = True
        self.answer_result = True
        self.unplug_after_ack = False
        self.stale_before_ack: str | None = None
        self.release = threading.Event()
        #: Lines the board received, decoded; vends whose motor ran: (order_id, slot).
        self.received: list[str] = []
        self.moved: list[tuple[str, int]] = []
        #: order_id -> "OK" or "FAIL <reason>": the board's RESULT memory.
        self.results: dict[str, str] = {}
        self.current: str | None = None
        self.unplugged = False
        self._write_lock = threading.Lock()
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="board sim", daemon=True)
        self._thread.start()

    # --- control ------------------------------------------------------------------------------

    def vends_received(self) -> list[str]:
        return [line for line in self.received if line.startswith("VEND ")]

    def unplug(self) -> None:
        """Close the board's side of the pty: the host's reads and writes fail."""
        if self.unplugged:
            return
        self.unplugged = True
        with self._write_lock:
            for fd in (self.master, self.slave):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=2)
        self.release.set()
        self.unplug()
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # --- the board ----------------------------------------------------------------------------

    def send(self, line: str | bytes) -> None:
        data = line if isinstance(line, bytes) else line.encode("ascii")
        with self._write_lock:
            if not self.unplugged:
                with contextlib.suppress(OSError):
                    os.write(self.master, data + b"\n")

    def _run(self) -> None:
        buffer = b""
        while not self.unplugged:
            try:
                ready, _, _ = select.select([self.master, self._stop_r], [], [], 0.5)
            except (OSError, ValueError):
                return
            if self._stop_r in ready:
                return
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 1024)
            except OSError:
                return
            buffer += chunk
            while b"\n" in buffer:
                raw, _, buffer = buffer.partition(b"\n")
                self._handle(raw.decode("ascii", "replace").rstrip("\r"))

    def _handle(self, line: str) -> None:
        self.received.append(line)
        if self.garbage:
            for junk in GARBAGE:
                self.send(junk)
        words = line.split(" ")
        if words == ["PING"]:
            if self.answer_ping:
                self.send(f"PONG {self.firmware}")
        elif len(words) == 3 and words[0] == "VEND":
            self._vend(words[1], words[2])
        elif len(words) == 2 and words[0] == "RESULT":
            if self.answer_result:
                order_id = words[1]
                if order_id == self.current:
                    self.send(f"RESULT {order_id} BUSY")
                else:
                    self.send(f"RESULT {order_id} {self.results.get(order_id, 'UNKNOWN')}")
        else:
            self.send("ERR unknown command")

    def _vend(self, order_id: str, slot_text: str) -> None:
        if self.stale_before_ack is not None:
            self.send(self.stale_before_ack)
        if not slot_text.isdigit() or not 1 <= int(slot_text) <= self.slots:
            self.send(f"ERR bad slot {slot_text}")
            return
        if order_id in self.results:  # never twice: the remembered answer, nothing moves
            self.send(f"ACK {order_id}")
            self.send(f"DONE {order_id} {self.results[order_id]}")
            return
        if self.current is not None:
            self.send("BUSY" if order_id != self.current else f"ACK {order_id}")
            return
        mode = self.mode
        if mode == "no_ack":
            return
        if mode == "busy":
            self.send("BUSY")
            return
        if mode == "err":
            self.send("ERR motor driver fault")
            return
        slot = int(slot_text)
        self.current = order_id
        self.send(f"ACK {order_id}")
        if not (mode == "fail" and self.fail_reason == "EMPTY"):
            self.moved.append((order_id, slot))
        if self.unplug_after_ack:
            self.unplug()
            return
        if mode == "ack_only":
            self.current = None
            if self.result_after is not None:
                self.results[order_id] = self.result_after
            return
        threading.Thread(target=self._finish, args=(order_id, mode), daemon=True).start()

    def _finish(self, order_id: str, mode: str) -> None:
        if mode == "hold":
            self.release.wait()
            outcome = f"FAIL {self.fail_reason}" if self.hold_fails else "OK"
        else:
            self.release.wait(self.vend_s)
            outcome = f"FAIL {self.fail_reason}" if mode == "fail" else "OK"
        self.results[order_id] = outcome
        self.current = None
        if self.garbage:
            self.send(GARBAGE[0])
        self.send(f"DONE {order_id} {outcome}")
