"""sandbox.journal: the ledger on disk, an append-only JSON Lines file replayed at start."""

from __future__ import annotations

import json

import pytest

from sandbox.journal import Journal


def lines(journal: Journal) -> list[dict]:
    return [json.loads(line) for line in journal.path.read_text().splitlines()]


def test_replay_gives_the_last_record_of_each_transaction_in_the_order_they_were_created(
    tmp_path,
):
    journal = Journal(tmp_path)
    assert journal.open() == []
    journal.append({"transaction_id": "t1", "status": "pending"})
    journal.append({"transaction_id": "t2", "status": "pending"})
    journal.append({"transaction_id": "t1", "status": "settlement"})
    journal.close()
    again = Journal(tmp_path)
    assert again.open() == [
        {"transaction_id": "t1", "status": "settlement"},
        {"transaction_id": "t2", "status": "pending"},
    ]
    again.close()


def test_opening_compacts_the_file_to_one_line_per_transaction(tmp_path):
    journal = Journal(tmp_path)
    journal.open()
    for status in ("pending", "settlement", "refund"):
        journal.append({"transaction_id": "t1", "status": status})
    journal.close()
    assert len(lines(journal)) == 3
    again = Journal(tmp_path)
    again.open()
    again.close()
    assert lines(journal) == [{"v": 1, "transaction_id": "t1", "status": "refund"}]
    assert not list(tmp_path.glob("*.tmp"))


def test_a_torn_last_line_and_unreadable_lines_are_skipped(tmp_path, caplog):
    journal = Journal(tmp_path)
    journal.open()
    journal.append({"transaction_id": "t1", "status": "pending"})
    journal.close()
    with journal.path.open("a") as file:
        file.write(
            '{"v": 9, "transaction_id": "t2"}\n["not a record"]\n{"v": 1, "transaction_id": "t1", "sta'
        )
    again = Journal(tmp_path)
    assert again.open() == [{"transaction_id": "t1", "status": "pending"}]
    again.close()
    assert sum("line skipped" in r.getMessage() for r in caplog.records) == 3


def test_a_directory_is_held_by_one_journal_at_a_time(tmp_path):
    first = Journal(tmp_path)
    first.open()
    with pytest.raises(RuntimeError, match="another sandbox"):
        Journal(tmp_path).open()
    first.close()
    second = Journal(tmp_path)
    second.open()
    second.close()


def test_nothing_is_written_once_closed(tmp_path):
    journal = Journal(tmp_path / "deeper" / "sandbox")
    journal.open()
    journal.close()
    journal.append({"transaction_id": "t1"})
    assert journal.path.read_text() == ""
