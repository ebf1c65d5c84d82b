"""DISPENSER=serial against a simulated board on a pseudo-terminal (tests/board_sim.py).

The board speaks the protocol of cores/board_protocol.py as firmware/main.py does; each test
sets what it does with the next VEND and reads what it received and which motors ran.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from cores import board_protocol as bp
from cores.config import Settings
from cores.dispenser import JOURNAL_NAME, STARTED, VendJournal, from_settings
from cores.rules import Vend
from cores.serial_dispenser import SerialDispenser
from tests.board_sim import BoardSim
from tests.machine_helpers import ROOT, eventually

#: Shorter than the protocol's 2 s of silence, to keep the tests quick; one test keeps 2 s.
SILENT_S = 0.4


@pytest.fixture
def board() -> Iterator[BoardSim]:
    sim = BoardSim()
    yield sim
    sim.close()


@pytest.fixture
def driver(board: BoardSim, tmp_path: Path) -> Iterator[SerialDispenser]:
    d = SerialDispenser(board.path, tmp_path, vend_timeout_s=1.0, silent_after_s=SILENT_S)
    yield d
    d.close()


def journal(tmp_path: Path, order_id: str) -> list[dict]:
    return [e for e in VendJournal(tmp_path).entries() if e["order_id"] == order_id]


# --- a good vend, and each failure ----------------------------------------------------------


def test_a_good_vend_is_vended_and_journaled_started_then_vended(board, driver, tmp_path):
    """VEND -> ACK -> DONE OK: VENDED; the journal has "started" then "vended", with the slot."""
    assert driver.vend("vm-1-o1", "cola", 3) is Vend.VENDED
    assert board.vends_received() == ["VEND vm-1-o1 3"]
    assert board.moved == [("vm-1-o1", 3)]
    assert [(e["result"], e["slot"], e["drink"]) for e in journal(tmp_path, "vm-1-o1")] == [
        (STARTED, 3, "cola"),
        ("vended", 3, "cola"),
    ]
    assert driver.outcome("vm-1-o1") is Vend.VENDED


@pytest.mark.parametrize("reason", [r.value for r in bp.Reason])
def test_each_fail_reason_is_failed_with_the_reason_journaled(board, driver, tmp_path, reason):
    """DONE FAIL JAM/EMPTY/NO_DROP/TIMEOUT: FAILED (a refund), the reason in the journal."""
    board.mode, board.fail_reason = "fail", reason
    assert driver.vend("o1", "cola", 2) is Vend.FAILED
    last = journal(tmp_path, "o1")[-1]
    assert (last["result"], last["reason"], last["slot"]) == ("failed", reason, 2)
    assert driver.outcome("o1") is Vend.FAILED


@pytest.mark.parametrize(("mode", "reason"), [("busy", "BUSY"), ("err", "ERR")])
def test_busy_or_err_is_a_refusal_failed_and_nothing_moved(board, driver, tmp_path, mode, reason):
    """BUSY / ERR instead of ACK: the board refused, no motor ran: FAILED with the reason."""
    board.mode = mode
    assert driver.vend("o1", "cola", 1) is Vend.FAILED
    assert board.moved == []
    assert journal(tmp_path, "o1")[-1]["reason"] == reason


def test_a_board_that_never_acks_is_unknown_after_two_seconds(board, tmp_path):
    """Silence for the protocol's 2 s after VEND: UNKNOWN (operator), only "started" journaled."""
    board.mode = "no_ack"
    d = SerialDispenser(board.path, tmp_path, vend_timeout_s=30)
    try:
        began = time.monotonic()
        assert d.vend("o1", "cola", 1) is Vend.UNKNOWN
        waited = time.monotonic() - began
    finally:
        d.close()
    assert bp.SILENT_AFTER_S <= waited < bp.SILENT_AFTER_S + 1
    assert [e["result"] for e in journal(tmp_path, "o1")] == [STARTED]


def test_ack_without_done_asks_result_and_takes_the_boards_memory(board, driver, tmp_path):
    """ACK, then no DONE within VEND_TIMEOUT_S: RESULT asked; the board remembers OK: VENDED."""
    board.mode, board.result_after = "ack_only", "OK"
    assert driver.vend("o1", "cola", 1) is Vend.VENDED
    assert board.received[-1] == "RESULT o1"
    assert journal(tmp_path, "o1")[-1]["result"] == "vended"


def test_ack_without_done_and_a_forgetful_board_is_unknown(board, driver, tmp_path):
    """ACK, no DONE, RESULT answers UNKNOWN: the vend's outcome is UNKNOWN, nothing more journaled."""
    board.mode, board.result_after = "ack_only", None
    assert driver.vend("o1", "cola", 1) is Vend.UNKNOWN
    assert board.received[-1] == "RESULT o1"
    assert [e["result"] for e in journal(tmp_path, "o1")] == [STARTED]


def test_ack_without_done_and_silent_to_result_is_unknown(board, driver, tmp_path):
    """ACK, no DONE, no answer to RESULT either: UNKNOWN."""
    board.mode, board.answer_result = "ack_only", False
    assert driver.vend("o1", "cola", 1) is Vend.UNKNOWN
    assert driver.outcome("o1") is Vend.UNKNOWN
    assert [e["result"] for e in journal(tmp_path, "o1")] == [STARTED]


def test_garbage_lines_are_ignored_and_the_vend_still_reads_right(board, driver, tmp_path):
    """Junk lines before every answer (binary, half messages, unknown words) change nothing."""
    board.garbage = True
    assert driver.ping() == board.firmware
    assert driver.vend("o1", "cola", 1) is Vend.VENDED
    board.mode, board.fail_reason = "fail", "JAM"
    assert driver.vend("o2", "cola", 1) is Vend.FAILED
    assert len(board.vends_received()) == 2


def test_a_stale_busy_left_on_the_line_is_not_taken_for_the_answer(board, driver):
    """A BUSY the board sent while nobody asked is drained before VEND, not read as a refusal."""
    assert driver.ping()  # the port is open
    board.send("BUSY")
    board.send("DONE some-old-order OK")
    eventually(lambda: driver._port.in_waiting >= len("BUSY\nDONE some-old-order OK\n"))
    assert driver.vend("o1", "cola", 1) is Vend.VENDED


# --- the port unplugged, the host restarted -------------------------------------------------


def test_unplugged_mid_vend_is_unknown_and_never_vended_again(board, driver, tmp_path):
    """The cable is pulled after ACK: UNKNOWN; the order's outcome stays UNKNOWN, so no
    worker vends it again (both callers read `outcome` first), and the board saw one VEND."""
    board.unplug_after_ack = True
    assert driver.vend("o1", "cola", 1) is Vend.UNKNOWN
    assert [e["result"] for e in journal(tmp_path, "o1")] == [STARTED]
    assert driver.outcome("o1") is Vend.UNKNOWN  # the port is gone: still nobody can tell
    restarted = SerialDispenser(board.path, tmp_path, silent_after_s=SILENT_S)
    assert restarted.outcome("o1") is Vend.UNKNOWN
    assert board.vends_received() == ["VEND o1 1"]


def test_a_port_that_cannot_be_opened_fails_the_vend_before_anything_is_sent(tmp_path):
    """No such device: nothing was sent, so nothing moved: FAILED, reason PORT."""
    d = SerialDispenser(str(tmp_path / "no-such-tty"), tmp_path, silent_after_s=SILENT_S)
    assert d.vend("o1", "cola", 1) is Vend.FAILED
    assert journal(tmp_path, "o1")[-1]["reason"] == "PORT"


@pytest.mark.parametrize(
    ("remembered", "expected", "journaled"),
    [
        ("OK", Vend.VENDED, "vended"),
        ("FAIL JAM", Vend.FAILED, "failed"),
        (None, Vend.UNKNOWN, None),  # the board answers RESULT o1 UNKNOWN
    ],
)
def test_after_a_restart_a_started_only_order_is_asked_of_the_board(
    board, tmp_path, remembered, expected, journaled
):
    """Journal "started" and no result (the host died mid-vend): `outcome` asks RESULT and
    journals a definite answer; UNKNOWN stays for the operator."""
    VendJournal(tmp_path).record("o1", "cola", STARTED, slot=2)
    if remembered is not None:
        board.results["o1"] = remembered
    d = SerialDispenser(board.path, tmp_path, silent_after_s=SILENT_S)
    assert d.outcome("o1") is expected
    assert board.received == ["RESULT o1"]
    results = [e["result"] for e in journal(tmp_path, "o1")]
    assert results == [STARTED] + ([journaled] if journaled else [])
    if journaled:
        assert journal(tmp_path, "o1")[-1]["slot"] == 2
        assert d.outcome("o1") is expected  # now from the journal: no second question
        assert board.received == ["RESULT o1"]


def test_after_a_restart_a_board_still_vending_or_silent_is_unknown(board, tmp_path):
    """RESULT BUSY (that order still vends) past VEND_TIMEOUT_S, or no answer: UNKNOWN,
    nothing journaled."""
    VendJournal(tmp_path).record("o1", "cola", STARTED, slot=2)
    d = SerialDispenser(board.path, tmp_path, vend_timeout_s=0.3, silent_after_s=SILENT_S)
    board.current = "o1"
    assert d.outcome("o1") is Vend.UNKNOWN
    board.current, board.answer_result = None, False
    assert d.outcome("o1") is Vend.UNKNOWN
    assert [e["result"] for e in journal(tmp_path, "o1")] == [STARTED]


HOST = """
import sys
from cores.serial_dispenser import SerialDispenser
d = SerialDispenser(sys.argv[1], sys.argv[2], vend_timeout_s=60)
d.vend("o1", "cola", 4)
"""


def test_host_killed_mid_vend_is_answered_by_result_after_the_restart(board, tmp_path):
    """A host process is killed -9 between ACK and DONE; the board finishes the vend (its DONE
    goes to nobody). The restarted host reads "started", asks RESULT: VENDED, journaled; the
    board received one VEND only."""
    board.mode = "hold"
    host = subprocess.Popen(
        [sys.executable, "-c", HOST, board.path, str(tmp_path)], cwd=ROOT, env=os.environ
    )
    try:
        eventually(lambda: board.moved, timeout_s=20, what="the board ran the motor")
    finally:
        host.send_signal(signal.SIGKILL)
        host.wait(timeout=10)
    board.release.set()
    eventually(lambda: board.results.get("o1") == "OK", what="the board finished the vend")
    assert [e["result"] for e in journal(tmp_path, "o1")] == [STARTED]
    restarted = SerialDispenser(board.path, tmp_path, silent_after_s=SILENT_S)
    assert restarted.outcome("o1") is Vend.VENDED
    assert board.vends_received() == ["VEND o1 4"]
    assert journal(tmp_path, "o1")[-1]["result"] == "vended"


def test_after_a_restart_a_board_still_vending_the_order_is_asked_again_until_it_ends(
    board, tmp_path
):
    """RESULT o1 BUSY (the board still vends it after the host restarted): asked again until
    the board finishes (within VEND_TIMEOUT_S); its DONE is the answer, journaled, one VEND."""
    VendJournal(tmp_path).record("o1", "cola", STARTED, slot=2)
    board.mode = "hold"
    board._vend("o1", "2")  # the VEND the host sent before it died
    d = SerialDispenser(board.path, tmp_path, vend_timeout_s=20, silent_after_s=SILENT_S)
    answer: list[Vend | None] = []
    asking = threading.Thread(target=lambda: answer.append(d.outcome("o1")))
    asking.start()
    try:
        eventually(lambda: board.received.count("RESULT o1") >= 2, what="RESULT asked again")
        assert not answer
    finally:
        board.release.set()
        asking.join(timeout=10)
    assert answer == [Vend.VENDED]
    assert [(e["result"], e.get("slot")) for e in journal(tmp_path, "o1")] == [
        (STARTED, 2),
        ("vended", 2),
    ]
    d.close()


def test_a_late_done_of_a_started_only_order_read_while_draining_is_journaled(
    board, driver, tmp_path
):
    """The board's DONE of an order the journal has only "started" for (it outlived the host's
    wait) comes while nobody asks: the drain before the next VEND journals it, so `outcome`
    answers from the journal without asking the board."""
    VendJournal(tmp_path).record("o1", "cola", STARTED, slot=2)
    assert driver.ping()  # the port is open
    board.send("DONE o1 FAIL JAM")
    eventually(lambda: driver._port.in_waiting >= len("DONE o1 FAIL JAM\n"))
    assert driver.vend("o2", "cola", 1) is Vend.VENDED
    last = journal(tmp_path, "o1")[-1]
    assert (last["result"], last["reason"], last["slot"]) == ("failed", "JAM", 2)
    assert driver.outcome("o1") is Vend.FAILED
    assert "RESULT o1" not in board.received


@pytest.mark.parametrize("stale", ["BUSY", "ERR bad slot 9"])
def test_a_refusal_followed_by_this_orders_ack_is_stale_and_the_vend_goes_on(
    board, driver, tmp_path, stale
):
    """BUSY / ERR carry no order id: one on the line just before `ACK <this order>` (another
    writer's refusal) does not fail a vend the board took: VENDED, the motor ran once."""
    board.stale_before_ack = stale
    assert driver.vend("o1", "cola", 3) is Vend.VENDED
    assert board.moved == [("o1", 3)]
    assert journal(tmp_path, "o1")[-1]["result"] == "vended"


def test_the_port_is_held_exclusively_and_a_second_opener_is_told(board, driver, tmp_path):
    """While the driver holds the port, a second driver (a doctor, a terminal) cannot open it:
    its vend is FAILED with reason PORT before anything is sent, and its status says why;
    once the first lets go it can."""
    assert driver.ping()  # the driver holds the port
    other_dir = tmp_path / "other"
    other = SerialDispenser(board.path, other_dir, silent_after_s=SILENT_S)
    try:
        assert other.vend("x1", "cola", 1) is Vend.FAILED
        assert journal(other_dir, "x1")[-1]["reason"] == "PORT"
        assert board.vends_received() == []
        assert other.ping() is None
        assert "lock" in str(other.status()["error"])
        driver.close()
        assert other.ping() == board.firmware
        assert other.status()["error"] is None
    finally:
        other.close()


# --- PING, settings, callers without a slot ---------------------------------------------------


def test_ping_keeps_the_firmware_version_and_a_silent_board_is_reported(board, driver):
    """PONG <firmware>: kept on the driver for status; a silent board: None, alive False."""
    assert driver.ping() == "drinkboard-sim 1.2.0"
    assert driver.status()["firmware"] == "drinkboard-sim 1.2.0"
    assert driver.status()["alive"] is True
    board.answer_ping = False
    assert driver.ping() is None
    assert driver.status()["alive"] is False
    assert driver.firmware == "drinkboard-sim 1.2.0"  # the last version known stays shown


def test_start_pings_now_and_then_every_interval(board, tmp_path):
    """start(): a PING at once, then one per interval (a minute in production)."""
    d = SerialDispenser(board.path, tmp_path, silent_after_s=SILENT_S, ping_every_s=0.1)
    try:
        d.start()
        assert board.received[0] == "PING"
        eventually(lambda: board.received.count("PING") >= 3, what="periodic pings")
    finally:
        d.close()


def test_start_with_a_silent_board_is_not_fatal(board, tmp_path):
    """A board that does not answer PING at start: reported (alive False), no exception."""
    board.answer_ping = False
    d = SerialDispenser(board.path, tmp_path, silent_after_s=SILENT_S, ping_every_s=60)
    try:
        d.start()
        assert d.alive is False and d.firmware is None
    finally:
        d.close()


def test_a_vend_without_a_slot_is_refused_failed_and_nothing_is_sent(board, driver, tmp_path):
    """Callers that pass no slot yet: FAILED, reason NO_SLOT journaled, no VEND on the wire."""
    assert driver.vend("o1", "cola") is Vend.FAILED
    assert board.received == []
    assert journal(tmp_path, "o1")[-1]["reason"] == "NO_SLOT"


def test_begin_then_vend_journals_started_once(board, driver, tmp_path):
    """Fleet mode's agent journals the start itself (`begin`); the vend does not repeat it."""
    driver.begin("o1", "cola", 1)
    assert driver.vend("o1", "cola", 1) is Vend.VENDED
    assert [(e["result"], e["slot"]) for e in journal(tmp_path, "o1")] == [
        (STARTED, 1),
        ("vended", 1),
    ]


def test_from_settings_builds_a_started_serial_driver(board, tmp_path):
    """DISPENSER=serial with DISPENSER_PORT: a SerialDispenser on that port, pinged at start."""
    settings = Settings(dispenser="serial", dispenser_port=board.path, var_dir=tmp_path)
    d = from_settings(settings)
    try:
        assert isinstance(d, SerialDispenser)
        assert d.journal == tmp_path / JOURNAL_NAME
        assert d.firmware == board.firmware
    finally:
        d.close()


def test_the_journal_lines_stay_json_lines_a_reader_of_the_old_format_reads(board, driver):
    """Extra fields (slot, reason) do not change the four the design names."""
    board.mode, board.fail_reason = "fail", "EMPTY"
    driver.vend("o1", "cola", 1)
    for line in driver.journal.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        assert {"order_id", "drink", "result", "at"} <= set(entry)


# --- the protocol module ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"PONG drinkboard 1.0\r\n", bp.Pong("drinkboard 1.0")),
        (b"ACK vm-1-o1\n", bp.Ack("vm-1-o1")),
        (b"DONE o1 OK", bp.Done("o1", True)),
        (b"DONE o1 FAIL NO_DROP", bp.Done("o1", False, bp.Reason.NO_DROP)),
        (b"RESULT o1 FAIL EMPTY", bp.Result("o1", False, bp.Reason.EMPTY)),
        (b"RESULT o1 OK", bp.Result("o1", True)),
        (b"RESULT o1 UNKNOWN", bp.Result("o1", memory=bp.Memory.UNKNOWN)),
        (b"RESULT o1 BUSY", bp.Result("o1", memory=bp.Memory.BUSY)),
        (b"BUSY", bp.Busy()),
        (b"ERR motor fault", bp.Err("motor fault")),
    ],
)
def test_board_lines_parse_to_their_messages(line, message):
    assert bp.parse(line) == message


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"ACK",
        b"ACK o1 extra",
        b"DONE o1",
        b"DONE o1 FAIL",
        b"DONE o1 FAIL SMOKE",
        b"DONE o1 ok",
        b"RESULT o1",
        b"BUSY now",
        b"ERR",
        b"PONG",
        b"\xff\xfe",
        b"ACK o\x001",
        b"HELLO",
        b"A" * 300,
    ],
)
def test_anything_else_is_a_line_the_host_does_not_understand(line):
    assert isinstance(bp.parse(line), bp.Unknown)


def test_host_lines_are_encoded_and_order_ids_with_spaces_refused():
    assert bp.ping() == b"PING\n"
    assert bp.vend("vm-1-o1", 3) == b"VEND vm-1-o1 3\n"
    assert bp.result("vm-1-o1") == b"RESULT vm-1-o1\n"
    for bad in ("has space", "", "x" * 65):
        with pytest.raises(ValueError):
            bp.vend(bad, 1)
    with pytest.raises(ValueError):
        bp.vend("o1", 0)


# --- the reference firmware, run on the host with fake pins -----------------------------------


def load_firmware():
    spec = importlib.util.spec_from_file_location("drinkboard_firmware", ROOT / "firmware/main.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakePin:
    def __init__(self, level: int = 1) -> None:
        self.level = level

    def value(self, v: int | None = None) -> int:
        if v is not None:
            self.level = v
        return self.level


class FirmwareOnPty:
    """firmware/main.py's Board on one end of a pty, its pins faked: a running motor makes
    its slot's beam break when `drop` is True."""

    def __init__(self, firmware, slots: dict) -> None:
        self.firmware = firmware
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.pins: dict[int, FakePin] = {}
        self.drop = True
        #: The beam broken whatever the motor does (a can stuck in it, a dirty sensor).
        self.blocked = False
        self.motor_ran: list[int] = []

        def pin(number: int, output: bool) -> FakePin:
            return self.pins.setdefault(number, FakePin())

        self.board = firmware.Board(
            pin, lambda text: os.write(self.master, text.encode() + b"\n"), slots
        )
        self.slots = slots
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.005)
            if ready:
                self.board.feed(os.read(self.master, 1024))
            for number, cfg in self.slots.items():
                running = self.pins[cfg["motor"]].level == 0  # relays active low
                if running and number not in self.motor_ran:
                    self.motor_ran.append(number)
                broken = self.blocked or (running and self.drop)
                self.pins[cfg["sensor"]].level = 0 if broken else 1
            self.board.poll()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        os.close(self.master)
        os.close(self.slave)


def test_the_reference_firmware_speaks_the_protocol_the_driver_expects(tmp_path):
    """PING, a good vend, EMPTY (nothing moves), TIMEOUT, RESULT from its memory: the host
    driver and firmware/main.py agree on every line."""
    firmware = load_firmware()
    firmware.VEND_TIMEOUT_MS = 300
    slots = {
        1: {"motor": 2, "sensor": 10, "empty": None, "jam": None, "cycle": None},
        2: {"motor": 3, "sensor": 11, "empty": 20, "jam": None, "cycle": None},
    }
    board = FirmwareOnPty(firmware, slots)
    d = SerialDispenser(board.path, tmp_path, vend_timeout_s=2, silent_after_s=SILENT_S)
    try:
        assert d.ping() == firmware.FIRMWARE
        assert d.vend("o1", "cola", 1) is Vend.VENDED
        assert board.pins[2].level == 1  # motor off again
        board.pins[20].level = 0  # slot 2 reports empty
        assert d.vend("o2", "cola", 2) is Vend.FAILED
        assert board.motor_ran == [1]
        board.drop = False
        assert d.vend("o3", "cola", 1) is Vend.FAILED
        assert journal(tmp_path, "o2")[-1]["reason"] == "EMPTY"
        assert journal(tmp_path, "o3")[-1]["reason"] == "TIMEOUT"
        assert d.vend("o9", "cola", 7) is Vend.FAILED  # ERR bad slot: refused
        VendJournal(tmp_path).record("o4", "cola", STARTED, slot=1)
        assert d.outcome("o4") is Vend.UNKNOWN  # never vended by this board
        board.board.memory.append(("o5", "OK"))
        VendJournal(tmp_path).record("o5", "cola", STARTED, slot=1)
        assert d.outcome("o5") is Vend.VENDED
    finally:
        d.close()
        board.close()


def test_the_reference_firmware_refuses_a_vend_while_its_drop_sensor_is_blocked(tmp_path):
    """A beam already broken before the motor turns (a can stuck in it) would read as a drop
    at once: the firmware refuses the vend (ERR), nothing moves, and the driver records it
    FAILED (refunded, never DISPENSED with nothing given)."""
    firmware = load_firmware()
    slots = {1: {"motor": 2, "sensor": 10, "empty": None, "jam": None, "cycle": None}}
    board = FirmwareOnPty(firmware, slots)
    d = SerialDispenser(board.path, tmp_path, vend_timeout_s=2, silent_after_s=SILENT_S)
    try:
        board.blocked = True
        eventually(lambda: board.pins[10].level == 0, what="the beam broken")
        assert d.vend("o1", "cola", 1) is Vend.FAILED
        assert board.motor_ran == []
        board.blocked = False
        eventually(lambda: board.pins[10].level == 1, what="the beam clear")
        assert d.vend("o2", "cola", 1) is Vend.VENDED
    finally:
        d.close()
        board.close()
