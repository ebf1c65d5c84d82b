"""The menu as the operator edits it (cores/catalog.py): pure validation, no Redis."""

from __future__ import annotations

import pytest

from constants.tunables import SLOTS_MAX
from cores import catalog
from cores.console_errors import InvalidInput
from cores.models import Drink

COLA = Drink("cola", "Cola", "assets/cola.svg", 7000, "Cola", 1, True, 10, 2)
TEA = Drink("tea", "Es Teh", "assets/tea.svg", 5000, "Iced Tea", 2, True, 12, 3)
MENU = [COLA, TEA]


def refused_field(fields: dict, menu: list[Drink] = MENU) -> str:
    with pytest.raises(InvalidInput) as caught:
        catalog.parse_drink(fields, menu)
    assert caught.value.message
    return caught.value.field


def test_a_new_drink_gets_the_defaults_and_the_lowest_free_slot():
    drink = catalog.parse_drink({"id": "juice", "name": " Jus ", "price": "9000"}, MENU)
    assert drink == Drink("juice", "Jus", "", 9000, "Jus", 3, True, 10, 2)


def test_an_edit_keeps_the_fields_it_does_not_name():
    assert catalog.parse_drink({"id": "tea", "price": 5500}, MENU) == Drink(
        "tea", "Es Teh", "assets/tea.svg", 5500, "Iced Tea", 2, True, 12, 3
    )


@pytest.mark.parametrize(
    "price", [0, -1, 10_000_001, "7.000", "7000.5", 7000.5, "", "abc", True, None, float("inf")]
)
def test_a_price_must_be_a_whole_number_of_rupiah_from_1_to_10_million(price):
    assert refused_field({"id": "juice", "name": "Jus", "price": price}) == "price"


@pytest.mark.parametrize("price", [1, "1", 10_000_000, " 7000 ", 7000.0])
def test_whole_rupiah_prices_within_range_are_accepted(price):
    drink = catalog.parse_drink({"id": "juice", "name": "Jus", "price": price}, MENU)
    assert drink.price == int(float(price))


@pytest.mark.parametrize("name", ["", "   ", "x" * 41, 12])
def test_a_name_is_1_to_40_characters(name):
    assert refused_field({"id": "juice", "name": name, "price": 1}) == "name"
    assert refused_field({"id": "juice", "name": "Jus", "name_en": "y" * 41, "price": 1}) == (
        "name_en"
    )


def test_html_in_a_name_is_kept_as_text_for_the_pages_to_escape():
    drink = catalog.parse_drink({"id": "juice", "name": "<b>Jus</b>", "price": 1}, MENU)
    assert drink.name == "<b>Jus</b>"


@pytest.mark.parametrize("drink_id", ["", "Cola", "co la", "x" * 33, "çola", None, "a/b"])
def test_an_id_is_lowercase_letters_digits_dash_or_underscore(drink_id):
    assert refused_field({"id": drink_id, "name": "X", "price": 1}) == "id"


@pytest.mark.parametrize("slot", [0, SLOTS_MAX + 1, "two", -3])
def test_a_slot_is_one_the_machine_has(slot):
    assert refused_field({"id": "juice", "name": "Jus", "price": 1, "slot": slot}) == "slot"


def test_a_slot_used_by_another_drink_is_refused_but_a_drink_keeps_its_own():
    assert refused_field({"id": "juice", "name": "Jus", "price": 1, "slot": 2}) == "slot"
    assert catalog.parse_drink({"id": "tea", "slot": 2}, MENU).slot == 2


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"capacity": 0}, "capacity"),
        ({"capacity": 1001}, "capacity"),
        ({"capacity": 5, "low_stock": 6}, "low_stock"),
        ({"low_stock": -1}, "low_stock"),
        ({"icon": "../secret.svg"}, "icon"),
        ({"icon": "/etc/passwd"}, "icon"),
        ({"icon": "assets/../x.svg"}, "icon"),
        ({"icon": "javascript:alert(1)"}, "icon"),
        ({"enabled": "maybe"}, "enabled"),
    ],
)
def test_capacity_threshold_icon_and_flag_are_checked(fields, field):
    assert refused_field({"id": "juice", "name": "Jus", "price": 1, **fields}) == field


def test_stock_is_zero_to_capacity():
    assert catalog.parse_stock("12", TEA) == 12
    for units in (-1, 13, "x", 1.5):
        with pytest.raises(InvalidInput) as caught:
            catalog.parse_stock(units, TEA)
        assert caught.value.field == "stock"


def test_an_old_menu_entry_without_the_new_fields_still_parses():
    drink = Drink.parse({"id": "cola", "name": "Cola", "icon": "assets/cola.svg", "price": 7000})
    assert (drink.name_en, drink.slot, drink.enabled, drink.capacity, drink.low_stock) == (
        "Cola",
        0,
        True,
        10,
        2,
    )
    assert drink.public() == {
        "id": "cola",
        "name": "Cola",
        "name_en": "Cola",
        "icon": "assets/cola.svg",
        "price": 7000,
    }


def test_menu_changes_lists_additions_removals_and_each_changed_field():
    juice = Drink("juice", "Jus", "", 9000, "Juice", 3)
    new = [Drink(**{**COLA.__dict__, "price": 7500, "enabled": False}), juice]
    assert catalog.menu_changes(MENU, new) == [
        "change cola price: Rp 7.000 -> Rp 7.500",
        "change cola enabled: True -> False",
        "add juice: Jus, Rp 9.000, slot 3",
        "remove tea: Es Teh",
    ]
    assert catalog.menu_changes(MENU, MENU) == []


def test_a_menu_file_with_a_drink_twice_or_a_slot_twice_is_refused():
    row = {"id": "cola", "name": "Cola", "price": 1}
    with pytest.raises(InvalidInput, match="twice"):
        catalog.parse_menu([row, row])
    with pytest.raises(InvalidInput) as caught:
        catalog.parse_menu([{**row, "slot": 4}, {"id": "tea", "name": "T", "price": 1, "slot": 4}])
    assert caught.value.field == "slot"
    with pytest.raises(InvalidInput):
        catalog.parse_menu({"cola": row})


def test_the_kiosk_menu_leaves_disabled_drinks_out():
    off = Drink(**{**TEA.__dict__, "enabled": False})
    assert [d["id"] for d in catalog.kiosk_menu([COLA, off], {"cola": 3})] == ["cola"]


def test_stock_levels_say_low_and_sold_out_by_each_drinks_threshold():
    levels = catalog.stock_levels(MENU, {"cola": 2, "tea": 0})
    assert [(lv.drink.id, str(lv.level)) for lv in levels] == [("cola", "low"), ("tea", "sold_out")]
    assert str(catalog.stock_levels([COLA], {"cola": 3})[0].level) == "ok"


def test_rupiah_uses_indonesian_grouping():
    assert catalog.rupiah(7000) == "Rp 7.000"
    assert catalog.rupiah(10_000_000) == "Rp 10.000.000"
    assert catalog.rupiah(0) == "Rp 0"


def test_a_price_in_other_scripts_digits_is_refused():
    with pytest.raises(InvalidInput):
        catalog.parse_price("\u0667\u0665\u0660\u0660")  # 7500 in Arabic-Indic digits
