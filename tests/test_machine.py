"""The state machine as data: its table, the check of a Transition, the README's diagram."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from constants.states import ORDER_STATES, RESULT_STATES, State
from cores import machine
from cores.machine import TRANSITIONS, Effect, Effects, IllegalTransition, Transition

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_state_can_be_reached_from_idle_and_leads_back_to_idle():
    reachable = {State.IDLE}
    frontier = [State.IDLE]
    while frontier:
        for to in machine.moves_from(frontier.pop()):
            if to not in reachable:
                reachable.add(to)
                frontier.append(to)
    assert reachable == set(State)
    for state in State:
        seen, frontier = {state}, [state]
        while frontier:
            for to in machine.moves_from(frontier.pop()):
                if to not in seen:
                    seen.add(to)
                    frontier.append(to)
        assert State.IDLE in seen, f"{state} never leads back to IDLE"


def test_stock_is_taken_only_when_a_drink_is_dispensed():
    assert [move for move, effects in TRANSITIONS.items() if Effect.STOCK in effects] == [
        (State.DISPENSING, State.DISPENSED)
    ]


def test_money_is_recorded_only_on_moves_of_an_order():
    for (frm, to), effects in TRANSITIONS.items():
        if Effect.SALE in effects:
            assert frm in ORDER_STATES | {State.SHOW_MENU}, (frm, to)


def test_no_customer_is_interrupted_by_maintenance():
    assert not set(machine.OUT_OF_SERVICE_FROM) & ORDER_STATES
    assert set(RESULT_STATES) <= set(machine.OUT_OF_SERVICE_FROM)


def test_a_transition_with_legal_effects_passes_the_check():
    Transition(
        State.DISPENSED,
        (State.DISPENSING,),
        "o-1",
        {},
        Effects(
            sale={"kind": "dispensed"}, stock_drink="cola", order_fields={"outcome": "dispensed"}
        ),
    ).check()


@pytest.mark.parametrize(
    ("move", "message"),
    [
        (Transition(State.DISPENSED, (State.ORDER_CREATED,), "o-1", {}), "not a move"),
        (
            Transition(
                State.PAYMENT_SUCCESS,
                (State.ORDER_CREATED,),
                "o-1",
                {},
                Effects(stock_drink="cola"),
            ),
            "cannot write stock",
        ),
        (
            Transition(State.IDLE, (State.SHOW_MENU,), None, {}, Effects(sale={"kind": "x"})),
            "cannot write sale",
        ),
        (Transition(State.IDLE, (), None, {}), "from no state"),
        (
            Transition(State.OUT_OF_SERVICE, (State.IDLE, State.ORDER_CREATED), None, {}),
            "ORDER_CREATED -> OUT_OF_SERVICE",
        ),
    ],
)
def test_a_move_or_effect_outside_the_table_is_refused_as_a_bug(move, message):
    with pytest.raises(IllegalTransition, match=message):
        move.check()


def test_a_transition_keeps_its_order_unless_told_otherwise():
    assert Transition(State.IDLE, (State.IDLE,), "o-1", {}).next_order_id == "o-1"
    assert Transition(State.IDLE, (State.IDLE,), "o-1", {}, new_order_id=None).next_order_id is None


def test_the_diagram_lists_every_move_once_with_its_effects():
    lines = machine.diagram().splitlines()
    assert len(lines) == len(TRANSITIONS)
    assert "DISPENSING      -> DISPENSED        sale, order, stock" in lines


def test_the_readme_state_table_is_the_machine_table():
    """README's "States" block is `python -m cores.machine`'s output: a new move updates it."""
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- states:begin -->\n```\n(.*?)\n```\n<!-- states:end -->", text, re.S)
    assert found, "README.md has no <!-- states:begin --> block"
    assert found.group(1) == machine.diagram(), (
        "README.md's state table is stale: paste `python -m cores.machine` into it"
    )
