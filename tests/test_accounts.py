"""The console's operators (cores/accounts.py): argon2id hashes in Redis, never passwords."""

from __future__ import annotations

import pytest

from constants.keys import OPERATORS
from cores.accounts import Accounts
from cores.console_errors import ActionRefused, InvalidInput, NotFound


@pytest.fixture
def accounts(fake_redis):
    return Accounts(fake_redis)


def test_an_operator_logs_in_with_the_right_password_only(accounts, fake_redis):
    accounts.add("ana", "a long passphrase")
    assert accounts.verify("ana", "a long passphrase")
    assert not accounts.verify("ana", "a long passphrasE")
    assert not accounts.verify("bob", "a long passphrase")
    stored = fake_redis.hget(OPERATORS, "ana")
    assert stored.startswith("$argon2id$") and "passphrase" not in stored


def test_names_and_passwords_are_checked_and_a_name_is_taken_once(accounts):
    with pytest.raises(InvalidInput) as caught:
        accounts.add("ana", "short")
    assert caught.value.field == "password"
    for bad in ("Ana", "", "a b", "x" * 33):
        with pytest.raises(InvalidInput):
            accounts.add(bad, "a long passphrase")
    accounts.add("ana", "a long passphrase")
    with pytest.raises(ActionRefused):
        accounts.add("ana", "another passphrase")
    assert accounts.verify("ana", "a long passphrase")


def test_a_removed_operator_cannot_log_in(accounts):
    accounts.add("ana", "a long passphrase")
    accounts.add("bob", "a long passphrase")
    assert accounts.names() == ["ana", "bob"]
    accounts.remove("ana")
    assert not accounts.verify("ana", "a long passphrase")
    assert accounts.names() == ["bob"]
    with pytest.raises(NotFound):
        accounts.remove("ana")
