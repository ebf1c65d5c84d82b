"""The simulated dispenser driver and its vend journal (cores/dispenser.py, money rule 6)."""

from __future__ import annotations

import json
import random

import pytest

from cores.config import Settings
from cores.dispenser import JOURNAL_NAME, STARTED, SimulatedDispenser, VendJournal, from_settings
from cores.rules import Vend

AT = 1_764_150_000.0


class Sleeps:
    """Records the requested sleeps instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sleeps():
    return Sleeps()


def make(var_dir, sleeps, failure_rate: float = 0.0, seed: int = 7) -> SimulatedDispenser:
    return SimulatedDispenser(
        var_dir,
        duration_s=2.5,
        failure_rate=failure_rate,
        rng=random.Random(seed),
        sleep=sleeps,
        clock=lambda: AT,
    )


def lines(var_dir) -> list[str]:
    return (var_dir / JOURNAL_NAME).read_text(encoding="utf-8").splitlines()


def test_vend_writes_exactly_one_json_line_of_the_design_schema(tmp_path, sleeps):
    var_dir = tmp_path / "var"  # created on the first vend
    result = make(var_dir, sleeps).vend("vm-1-o1", "cola")
    assert result is Vend.VENDED
    written = lines(var_dir)
    assert len(written) == 1
    assert json.loads(written[0]) == {
        "order_id": "vm-1-o1",
        "drink": "cola",
        "result": "vended",
        "at": AT,
    }


def test_vend_takes_the_configured_duration_through_the_injected_sleep(tmp_path, sleeps):
    make(tmp_path, sleeps).vend("vm-1-o1", "cola")
    assert sleeps.calls == [2.5]


def test_each_vend_appends_one_line(tmp_path, sleeps):
    dispenser = make(tmp_path, sleeps)
    for n in range(5):
        dispenser.vend(f"vm-1-o{n}", "cola")
    assert [json.loads(line)["order_id"] for line in lines(tmp_path)] == [
        f"vm-1-o{n}" for n in range(5)
    ]


def test_failure_rate_one_always_fails_and_records_it(tmp_path, sleeps):
    dispenser = make(tmp_path, sleeps, failure_rate=1.0)
    assert [dispenser.vend(f"o{n}", "tea") for n in range(20)] == [Vend.FAILED] * 20
    assert {json.loads(line)["result"] for line in lines(tmp_path)} == {"failed"}


def test_failure_rate_zero_always_vends(tmp_path, sleeps):
    dispenser = make(tmp_path, sleeps, failure_rate=0.0)
    assert {dispenser.vend(f"o{n}", "tea") for n in range(50)} == {Vend.VENDED}


def test_same_seed_gives_the_same_outcomes(tmp_path, sleeps):
    a = make(tmp_path / "a", sleeps, failure_rate=0.5, seed=3)
    b = make(tmp_path / "b", sleeps, failure_rate=0.5, seed=3)
    outcomes_a = [a.vend(f"o{n}", "cola") for n in range(30)]
    assert outcomes_a == [b.vend(f"o{n}", "cola") for n in range(30)]
    assert set(outcomes_a) == {Vend.VENDED, Vend.FAILED}


def test_outcome_reads_vended_and_failed_from_the_journal(tmp_path, sleeps):
    make(tmp_path, sleeps, failure_rate=0).vend("ok", "cola")
    make(tmp_path, sleeps, failure_rate=1).vend("bad", "cola")
    reader = SimulatedDispenser(tmp_path, sleep=sleeps)  # e.g. a restarted worker
    assert reader.outcome("ok") is Vend.VENDED
    assert reader.outcome("bad") is Vend.FAILED


def test_outcome_of_an_order_never_vended_is_none(tmp_path, sleeps):
    dispenser = make(tmp_path, sleeps)
    assert dispenser.outcome("nope") is None  # no journal yet
    dispenser.vend("other", "cola")
    assert dispenser.outcome("nope") is None


def test_a_vended_record_wins_over_an_earlier_failed_attempt(tmp_path, sleeps):
    make(tmp_path, sleeps, failure_rate=1).vend("o1", "cola")
    make(tmp_path, sleeps, failure_rate=0).vend("o1", "cola")
    assert make(tmp_path, sleeps).outcome("o1") is Vend.VENDED


def test_a_torn_last_line_is_ignored(tmp_path, sleeps):
    dispenser = make(tmp_path, sleeps)
    dispenser.vend("o1", "cola")
    with (tmp_path / JOURNAL_NAME).open("a", encoding="utf-8") as f:
        f.write('{"order_id":"o2","drink":"co')  # crash mid-write
    assert dispenser.outcome("o1") is Vend.VENDED
    assert dispenser.outcome("o2") is None
    assert [e["order_id"] for e in dispenser.entries()] == ["o1"]


def test_a_vend_after_a_torn_line_is_still_recorded(tmp_path, sleeps):
    dispenser = make(tmp_path, sleeps)
    with (tmp_path / JOURNAL_NAME).open("a", encoding="utf-8") as f:
        f.write('{"order_id":"o1","drink":"co')  # crash mid-write
    dispenser.vend("o2", "cola")
    assert dispenser.outcome("o2") is Vend.VENDED


def test_from_settings_uses_var_dir_duration_and_failure_rate(tmp_path):
    settings = Settings(var_dir=tmp_path, dispense_s=0.25, dispense_failure_rate=1.0)
    dispenser = from_settings(settings)
    assert isinstance(dispenser, SimulatedDispenser)
    assert dispenser.journal == tmp_path / JOURNAL_NAME
    assert dispenser.duration_s == 0.25
    assert dispenser.failure_rate == 1.0


# --- the journal every driver shares (VendJournal) --------------------------------------------


def test_the_journal_class_keeps_the_file_format_and_adds_only_given_fields(tmp_path):
    """record(): the four fields of the design, plus slot/reason when given (None: left out)."""
    journal = VendJournal(tmp_path, clock=lambda: AT)
    journal.record("o1", "cola", STARTED, slot=3, reason=None)
    journal.record("o1", "cola", "failed", slot=3, reason="JAM")
    assert [json.loads(line) for line in lines(tmp_path)] == [
        {"order_id": "o1", "drink": "cola", "result": "started", "at": AT, "slot": 3},
        {
            "order_id": "o1",
            "drink": "cola",
            "result": "failed",
            "at": AT,
            "slot": 3,
            "reason": "JAM",
        },
    ]
    assert journal.outcome("o1") is Vend.FAILED


def test_the_simulated_driver_reads_what_another_driver_journaled(tmp_path, sleeps):
    """Same file, same reading: a line with extra fields written by a hardware driver is read
    by the simulated driver (and the other way round)."""
    VendJournal(tmp_path).record("o1", "cola", "vended", slot=2, source="RESULT")
    VendJournal(tmp_path).record("o2", "cola", STARTED, slot=2)
    reader = make(tmp_path, sleeps)
    assert reader.outcome("o1") is Vend.VENDED
    assert reader.outcome("o2") is Vend.UNKNOWN
    assert VendJournal(tmp_path).started("o2")["slot"] == 2
    assert VendJournal(tmp_path).started("o1") is None


def test_a_simulated_vend_given_a_slot_journals_it(tmp_path, sleeps):
    """vend(order_id, drink_id, slot): the slot is on the line; without one, nothing changes."""
    dispenser = make(tmp_path, sleeps)
    dispenser.vend("o1", "cola", 4)
    dispenser.vend("o2", "cola")
    first, second = (json.loads(line) for line in lines(tmp_path))
    assert first["slot"] == 4
    assert "slot" not in second


def test_from_settings_builds_the_simulated_driver_by_default(tmp_path):
    """DISPENSER unset: the simulated driver, whatever hardware settings are present."""
    settings = Settings(var_dir=tmp_path, gpio_relay_pins="1:17")
    assert isinstance(from_settings(settings), SimulatedDispenser)
