"""Fuzzed frames against the kiosk websocket server, started in-process on port 0 against a
private real Redis and driven over real sockets with frames drawn by hypothesis
(tests/fuzz_strategies.py).

Properties, for every frame a page may send, in every state of the machine:

- the sender gets an answer in bounded time: an ERROR frame or a clean close; never silence,
  never a crash;
- the server stays up: another, well-behaved page gets its answers afterwards;
- a refused frame changes nothing: the machine's state hash, events, sales, commands and
  stock in Redis are as they were.

Frames that once crashed the server (keys holding lone surrogates) have a regression test at
the end. Profiles and the count of cases run: tests/fuzz_helpers.py.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from constants.states import ORDER_STATES, RESULT_STATES, State
from constants.tunables import CLIENT_FRAMES_PER_S
from cores.broker import Broker
from cores.config import Settings
from cores.machine import Transition, moves_from
from cores.protocol import FLOOD_CLOSE_FACTOR
from tests import fuzz_strategies as fz
from tests.fuzz_helpers import FUZZ, PINNED, WAIT_S, ErrorRecords, count, fuzz_test
from tests.kiosk_helpers import MENU, Running, error_code, http_request, open_page, recv, serving
from tests.machine_helpers import machine_state

#: A page lives shorter than this: the server pings older ones (see Kiosk).
WATCHER_MAX_AGE_S = 10.0


@pytest.fixture
def menu() -> list[dict]:
    """Cola in stock, tea sold out (fuzz_strategies.IN_STOCK and SOLD_OUT)."""
    return MENU


def path_to(frm: State, to: State) -> list[State]:
    """The shortest walk of legal moves from `frm` to `to` (at least one move)."""
    paths = {nxt: [nxt] for nxt in moves_from(frm)}
    frontier = list(paths)
    while to not in paths:
        here = frontier.pop(0)
        for nxt in moves_from(here):
            if nxt not in paths:
                paths[nxt] = [*paths[here], nxt]
                frontier.append(nxt)
    return paths[to]


class Kiosk:
    """A live websocket server, its machine, and a page that watches every broadcast.

    The watcher never sends (so the flood gate never counts it); each `put_in` moves the
    machine with one transition and waits until the watcher has seen exactly that frame, so
    no broadcast is in flight when a case starts, and an echo of a case's frames to other
    pages would show up as the watcher's next frame.

    The watcher is replaced every WATCHER_MAX_AGE_S: the server's keepalive ping (every 20 s)
    draws its payload from the global `random`, and hypothesis fails a test whose strategies
    see that state move under them.
    """

    def __init__(self, running: Running, broker: Broker) -> None:
        self.running = running
        self.broker = broker
        self.nonce = 0
        self.watcher: ClientConnection | None = None
        self._watcher_since = 0.0
        self._watcher_stack = contextlib.ExitStack()

    def page(self) -> ClientConnection:
        """A new page; use it in a `with` block. It sends no keepalive pings of its own."""
        return open_page(self.running.ws_url, ping_interval=None)

    @contextlib.contextmanager
    def watching(self) -> Iterator[Kiosk]:
        try:
            self._new_watcher()
            yield self
        finally:
            self._watcher_stack.close()

    def _new_watcher(self) -> None:
        self._watcher_stack.close()
        self.watcher = self._watcher_stack.enter_context(self.page())
        self._watcher_since = time.monotonic()
        assert recv(self.watcher) == self.broker.snapshot().frame

    def put_in(self, state: State) -> None:
        """Move the machine to `state` by legal moves (cores.machine.TRANSITIONS), with an
        order of its own where the state has one; the watcher sees every frame."""
        if time.monotonic() - self._watcher_since > WATCHER_MAX_AGE_S:
            self._new_watcher()
        broker = self.broker
        for to in path_to(broker.snapshot().state, state):
            snap = broker.snapshot()
            self.nonce += 1
            order_id = snap.order_id
            if to in ORDER_STATES or to in RESULT_STATES:
                order_id = order_id or f"{broker.machine_id}-fuzz-{self.nonce:06d}"
            else:
                order_id = None
            values: object
            if to is State.SHOW_MENU:
                values = broker.menu_values()
            else:
                # The nonce makes each frame unique: the watcher tells it from any other.
                values = {"fuzz_case": self.nonce}
                if order_id:
                    values.update(order_id=order_id, drink=MENU[0], amount=MENU[0]["price"])
            assert broker.transition(
                Transition(to, (snap.state,), snap.order_id, values, new_order_id=order_id)
            )
            assert self.watcher is not None
            assert recv(self.watcher) == broker.snapshot().frame, "the watcher saw another frame"

    def check_alive(self) -> None:
        """The server still answers: a new page gets the screen and an answer; /healthz is 200."""
        assert self.running.thread.is_alive(), "the server thread died"
        snap = self.broker.snapshot()
        with self.page() as other:
            assert recv(other) == snap.frame
            # A command refused in every state: the page must get its ERROR (and nothing else).
            other.send(
                json.dumps({"event": "ORDER", "values": {"id": "no-such-drink", "total": 1}})
            )
            expected = "unknown_drink" if snap.state is State.SHOW_MENU else "wrong_state"
            assert error_code(recv(other)) == expected
        status, _, body = http_request(self.running.port, "/healthz")
        assert status == 200, body
        assert json.loads(body)["state"] == str(snap.state)


def outcome(ws: ClientConnection, label: str) -> str:
    """The server's answer to the frame just sent: an ERROR code, or "close:<code>"."""
    try:
        text = ws.recv(timeout=WAIT_S)
    except TimeoutError:
        raise AssertionError(f"no answer within {WAIT_S} s to {label}") from None
    except ConnectionClosed as closed:
        # No close frame received (1006) means the server dropped the connection.
        return f"close:{closed.rcvd.code if closed.rcvd is not None else 1006}"
    return error_code(json.loads(text))


def send_frame(ws: ClientConnection, frame: fz.Frame) -> None:
    with contextlib.suppress(ConnectionClosed):  # the answer (a close) is read next
        if frame.cuts:
            ws.send(frame.chunks(), text=frame.text)
        else:
            ws.send(frame.payload, text=frame.text)


def play(kiosk: Kiosk, state: State, frames: list[fz.Frame], errors: ErrorRecords) -> None:
    """One case: the machine in `state`, a new page sends `frames` one at a time; every frame
    gets an allowed answer, nothing changes, and the server keeps answering other pages."""
    kiosk.put_in(state)
    before = machine_state(kiosk.broker)
    with kiosk.page() as page:
        assert recv(page) == kiosk.broker.snapshot().frame
        for frame in frames:
            send_frame(page, frame)
            got = outcome(page, frame.label)
            assert got in frame.answers, (
                frame.label,
                got,
                sorted(frame.answers),
                frame.payload[:200],
            )
            if got.startswith("close:"):
                break
    assert machine_state(kiosk.broker) == before
    kiosk.check_alive()
    errors.check()


@pytest.fixture
def kiosk(broker: Broker, settings: Settings) -> Iterator[Kiosk]:
    with (
        serving(settings, broker.redis) as running,
        Kiosk(running, broker).watching() as live,
    ):
        yield live


states = st.sampled_from(list(State))


@fuzz_test
@settings(FUZZ)
@given(
    state=states,
    frames=st.lists(fz.binary_frames() | fz.non_utf8_text_frames(), min_size=1, max_size=4),
)
def test_binary_and_non_utf8_frames_get_an_error_or_1007_and_change_nothing(
    kiosk, errors, state, frames
):
    count("binary_and_non_utf8")
    play(kiosk, state, frames, errors)


@fuzz_test
@settings(FUZZ)
@given(
    state=states,
    before=st.lists(fz.fragmented(fz.malformed_frames()), max_size=3),
    big=fz.oversized_frames(),
)
def test_oversized_frames_close_the_page_with_1009_and_change_nothing(
    kiosk, errors, state, before, big
):
    count("oversized")
    play(kiosk, state, [*before, big], errors)


@fuzz_test
@settings(FUZZ)
@given(state=states, frames=st.lists(fz.fragmented(fz.malformed_frames()), min_size=1, max_size=6))
def test_malformed_or_mistyped_json_frames_get_an_error_and_change_nothing(
    kiosk, errors, state, frames
):
    count("malformed_json")
    play(kiosk, state, frames, errors)


@fuzz_test
@settings(FUZZ)
@given(data=st.data(), state=states)
def test_commands_refused_in_the_current_state_get_an_error_and_change_nothing(
    kiosk, errors, data, state
):
    count("refused_commands")
    frames = data.draw(st.lists(fz.refused_commands(state), min_size=1, max_size=6))
    play(kiosk, state, frames, errors)


@fuzz_test
@settings(FUZZ)
@given(data=st.data(), state=states)
def test_any_mix_of_refused_frames_leaves_the_machine_and_other_pages_untouched(
    kiosk, errors, data, state
):
    count("mixed_frames")
    frames = data.draw(st.lists(fz.any_refused_frame(state), min_size=1, max_size=8))
    play(kiosk, state, frames, errors)


@pytest.fixture
def frozen_kiosk(broker: Broker, settings: Settings) -> Iterator[Kiosk]:
    """A kiosk whose flood gate's clock stands still: every frame falls in the same second."""
    with (
        serving(settings, broker.redis, clock=lambda: 1000.0) as running,
        Kiosk(running, broker).watching() as live,
    ):
        yield live


LIMIT = CLIENT_FRAMES_PER_S
CLOSE_AFTER = CLIENT_FRAMES_PER_S * FLOOD_CLOSE_FACTOR


@fuzz_test
@settings(FUZZ)
@given(data=st.data(), state=states, n=st.integers(LIMIT + 1, CLOSE_AFTER + 30))
def test_flooding_page_gets_errors_then_rate_limited_then_1008_and_changes_nothing(
    frozen_kiosk, errors, data, state, n
):
    count("flood")
    kiosk = frozen_kiosk
    small = st.one_of(fz.malformed_frames(), fz.refused_commands(state), fz.binary_frames())
    # A few distinct frames, repeated: drawing a hundred fresh ones per case costs more than
    # the flood itself, and the gate counts frames whatever they hold.
    pool = data.draw(st.lists(small.filter(lambda f: not f.closes), min_size=1, max_size=8))
    frames = [pool[i % len(pool)] for i in range(n)]
    kiosk.put_in(state)
    before = machine_state(kiosk.broker)
    with kiosk.page() as page:
        assert recv(page) == kiosk.broker.snapshot().frame
        for frame in frames:  # all at once, without reading
            send_frame(page, frame)
        for i, frame in enumerate(frames, start=1):
            got = outcome(page, f"flood frame {i}: {frame.label}")
            if i <= LIMIT:
                assert got in frame.answers, (i, frame.label, got)
            elif i <= CLOSE_AFTER:
                assert got == "rate_limited", (i, got)
            else:
                assert got == fz.CLOSE_POLICY, (i, got)
                break
    assert machine_state(kiosk.broker) == before
    kiosk.check_alive()
    errors.check()


# --- defects the fuzzing found (fixed), kept as regressions ---


@fuzz_test
@PINNED
@given(key=fz.surrogates, order=st.booleans())
@example(key="\ud800", order=False)
@example(key="\udfff", order=True)
def test_frame_whose_keys_hold_lone_surrogates_gets_an_error_frame(kiosk, errors, key, order):
    count("regression_surrogate_keys")
    if order:
        frame = {"event": "ORDER", "values": {"id": "cola", "total": 1, key: 1}}
        code = fz.BAD_VALUES
    else:
        frame = {"event": "SHOW_MENU", "values": {}, key: 1}
        code = fz.MALFORMED
    text = json.dumps(frame)  # ASCII: the surrogate travels as a \\u escape
    play(
        kiosk,
        State.SHOW_MENU,
        [fz.Frame(text.encode(), True, frozenset({code}), "surrogate")],
        errors,
    )
