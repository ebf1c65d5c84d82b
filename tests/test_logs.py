"""key=value log lines with the service and machine_id (cores/logs.py)."""

from __future__ import annotations

import logging
import sys

import pytest

from cores.logs import KeyValueFormatter, follow_output, for_machine, kv, setup


def record(
    msg: str, *args: object, level: int = logging.INFO, exc_info=None, **fields: object
) -> logging.LogRecord:
    rec = logging.LogRecord("services.order", level, __file__, 1, msg, args, exc_info)
    rec.__dict__.update(kv(**fields) if fields else {})
    return rec


@pytest.fixture
def formatter() -> KeyValueFormatter:
    return KeyValueFormatter("ORDER", "vm-1")


def pairs(line: str) -> list[str]:
    return line.split(" ")


def test_line_has_time_level_service_machine_logger_and_message(formatter):
    line = formatter.format(record("charged"))
    parts = pairs(line)
    assert parts[0].startswith("ts=")
    assert parts[1:] == [
        "level=INFO",
        "service=ORDER",
        "machine_id=vm-1",
        "logger=services.order",
        "msg=charged",
    ]
    assert "\n" not in line


def test_timestamp_is_iso_like_with_milliseconds(formatter):
    ts = pairs(formatter.format(record("x")))[0].removeprefix("ts=")
    date, time = ts.split("T")
    assert len(date) == 10 and date.count("-") == 2
    assert len(time) == len("12:34:56.789")


def test_message_arguments_are_interpolated(formatter):
    assert 'msg="vended 2 drinks"' in formatter.format(record("vended %d drinks", 2))


def test_values_with_spaces_are_quoted(formatter):
    line = formatter.format(record("order placed", drink="Iced Tea"))
    assert 'msg="order placed"' in line
    assert 'drink="Iced Tea"' in line


def test_extra_kv_fields_follow_in_order(formatter):
    line = formatter.format(record("charged", order_id="vm-1-o1", amount=7000, ok=True))
    assert line.endswith(" order_id=vm-1-o1 amount=7000 ok=True")


def test_quotes_equals_and_newlines_cannot_forge_fields_or_lines(formatter):
    line = formatter.format(record("bad", note='a "b"\nlevel=ERROR x=1'))
    assert "\n" not in line
    assert 'note="a \\"b\\"\\nlevel=ERROR x=1"' in line


def test_empty_value_is_shown_as_empty_quotes(formatter):
    assert formatter.format(record("x", order_id="")).endswith(' order_id=""')


def test_exception_traceback_follows_the_line(formatter):
    try:
        raise RuntimeError("gateway exploded")
    except RuntimeError:
        exc_info = sys.exc_info()
    line = formatter.format(
        record("vend raised", level=logging.ERROR, exc_info=exc_info, order_id="vm-1-o1")
    )
    first, _, rest = line.partition("\n")
    assert "level=ERROR" in first and "order_id=vm-1-o1" in first
    assert rest.startswith("Traceback (most recent call last):")
    assert "RuntimeError: gateway exploded" in rest


def test_logger_with_kv_extra_goes_through_the_formatter(formatter):
    logger = logging.getLogger("tests.logs.kv")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    captured: list[str] = []

    class Collect(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            captured.append(self.format(rec))

    handler = Collect()
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    try:
        logger.info("refund owed", extra=kv(order_id="vm-1-o9", amount=7000))
    finally:
        logger.removeHandler(handler)
    assert len(captured) == 1
    assert "logger=tests.logs.kv" in captured[0]
    assert captured[0].endswith('msg="refund owed" order_id=vm-1-o9 amount=7000')


def test_kv_wraps_fields_for_the_extra_argument():
    assert kv(order_id="o1", amount=1) == {"kv": {"order_id": "o1", "amount": 1}}


def test_setup_writes_key_value_lines_to_stderr_and_the_service_log(tmp_path, capsys):
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        setup("DISPENSE", "vm-2", level="INFO", log_dir=tmp_path / "logs")
        logging.getLogger("services.dispense").info("vended", extra=kv(order_id="vm-2-o1"))
        logging.getLogger("services.dispense").debug("not shown")
        for handler in root.handlers:
            handler.flush()
        written = (tmp_path / "logs" / "dispense.log").read_text(encoding="utf-8")
    finally:
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    err = capsys.readouterr().err
    for text in (err, written):
        assert "service=DISPENSE machine_id=vm-2" in text
        assert text.rstrip("\n").endswith("msg=vended order_id=vm-2-o1")
        assert "not shown" not in text


def test_a_shared_process_names_the_machine_of_each_line_once():
    """In fleet mode a process serves many machines (its own id is `-`): a line carries the
    machine it is about, from its own field or from the step in hand, and names it once."""
    shared = KeyValueFormatter("GATEWAY", "-")
    assert "machine_id=-" in pairs(shared.format(record("listening")))
    line = shared.format(record("connected", machine_id="vm-7", peer="10.0.0.2"))
    assert pairs(line).count("machine_id=vm-7") == 1 and line.count("machine_id=") == 1
    with for_machine("vm-9"):
        assert "machine_id=vm-9" in pairs(shared.format(record("transition")))
        inside = shared.format(record("vend", machine_id="vm-7"))
    assert "machine_id=vm-7" in pairs(inside) and "machine_id=vm-9" not in inside
    assert "machine_id=-" in pairs(shared.format(record("after the step")))


def test_a_childs_output_goes_to_a_size_capped_file_and_to_the_journal_when_asked(tmp_path):
    """What the supervisor does with a child's output: every line to VAR_DIR/logs/<name>.log,
    rotated past the cap (name.log.1 ... kept, the oldest dropped), and the same bytes to
    `echo` (the journal, under systemd); the pipe is read to its end."""
    import io
    import subprocess

    lines = [f"line {n:03d} " + "x" * 90 for n in range(60)]
    child = subprocess.Popen(
        [sys.executable, "-c", f"print({chr(10).join(lines)!r})"], stdout=subprocess.PIPE
    )
    assert child.stdout is not None
    echo = io.BytesIO()
    path = tmp_path / "logs" / "order.log"
    thread = follow_output(child.stdout, path, echo, max_bytes=1000, backups=2)
    assert child.wait(10) == 0
    thread.join(10)
    assert not thread.is_alive()
    assert echo.getvalue().decode().splitlines() == lines
    kept = [path, path.with_name("order.log.1"), path.with_name("order.log.2")]
    assert all(p.exists() and p.stat().st_size <= 1000 for p in kept)
    assert not path.with_name("order.log.3").exists()
    newest = path.read_text().splitlines()
    assert newest and newest[-1] == lines[-1]
