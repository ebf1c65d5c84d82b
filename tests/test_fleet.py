"""Fleet mode's registry (cores/fleet.py): machines, their tokens kept only as argon2id hashes,
revoking, the audit; and `main.py fleet add|revoke|list` as processes."""

from __future__ import annotations

import json

import pytest

from constants import keys
from cores import fleet as fleet_module
from cores.alert_store import AlertStore
from cores.alerts import Alert, AlertKind, Changes
from cores.broker import Broker
from cores.console_errors import ActionRefused, InvalidInput, NotFound
from cores.fleet import Fleet, MachineRecord
from tests.machine_helpers import T0, cli

ACTOR = "cli:ana"


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.integration)])
def client(request):
    return request.getfixturevalue(f"{request.param}_redis")


@pytest.fixture
def registry(client, clock):
    return Fleet(client, clock)


def everything_in(client) -> str:
    """Every key of the Redis and every value under it, as one text to search."""
    parts = []
    for name in client.scan_iter("*"):
        kind = client.type(name)
        if kind == "string":
            value = client.get(name)
        elif kind == "hash":
            value = client.hgetall(name)
        elif kind == "stream":
            value = client.xrange(name)
        elif kind == "list":
            value = client.lrange(name, 0, -1)
        elif kind == "set":
            value = sorted(client.smembers(name))
        else:
            value = client.zrange(name, 0, -1, withscores=True)
        parts.append(f"{name} {value!r}")
    return "\n".join(parts)


def test_a_machine_gets_a_token_once_and_only_its_hash_is_kept(registry, client):
    token = registry.add("vm-7", ACTOR)
    assert len(token) >= 43
    assert registry.authenticate("vm-7", token)
    stored = everything_in(client)
    assert token not in stored and token[:16] not in stored
    stored_hash = json.loads(client.hget(keys.FLEET_MACHINES, "vm-7"))["token_hash"]
    assert stored_hash == fleet_module.digest(token) and stored_hash.startswith("sha256:")
    assert registry.add("vm-8", ACTOR) != token


def test_a_wrong_token_an_unknown_machine_or_another_machines_token_is_refused(registry):
    token = registry.add("vm-7", ACTOR)
    other = registry.add("vm-8", ACTOR)
    assert not registry.authenticate("vm-7", token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert not registry.authenticate("vm-7", "")
    assert not registry.authenticate("vm-7", other)
    assert not registry.authenticate("vm-9", token)
    assert not registry.authenticate("vm 7", token)
    assert not registry.authenticate(None, token)
    assert not registry.authenticate("vm-7", None)
    assert not registry.authenticate("vm-7", token + "x" * 1000)


def test_a_revoked_token_is_refused_and_the_id_can_be_added_again(registry, clock):
    token = registry.add("vm-7", ACTOR)
    clock.now += 60
    registry.revoke("vm-7", ACTOR)
    assert not registry.authenticate("vm-7", token)
    [machine] = registry.machines()
    assert machine.revoked_at == T0 + 60 and not machine.active
    clock.now += 60
    fresh = registry.add("vm-7", ACTOR)
    assert registry.authenticate("vm-7", fresh) and not registry.authenticate("vm-7", token)
    assert registry.machines()[0].active and registry.machines()[0].added_at == T0 + 120


def test_adding_an_active_machine_twice_or_revoking_an_unknown_one_is_refused(registry, client):
    token = registry.add("vm-7", ACTOR)
    before = everything_in(client)
    with pytest.raises(ActionRefused):
        registry.add("vm-7", ACTOR)
    with pytest.raises(NotFound):
        registry.revoke("vm-9", ACTOR)
    registry.revoke("vm-7", ACTOR)
    with pytest.raises(ActionRefused):
        registry.revoke("vm-7", ACTOR)
    for bad in ("", "vm 7", "vm:{7}", "x" * 21, "vm-7\n", None):
        with pytest.raises(InvalidInput):
            registry.add(bad, ACTOR)
    with pytest.raises(InvalidInput):
        registry.add("vm-8", " ")
    assert not registry.authenticate("vm-7", token)
    assert "vm-8" not in everything_in(client) and before != everything_in(client)


def test_every_add_and_revoke_is_audited_without_the_token_or_its_hash(registry, client, clock):
    token = registry.add("vm-7", ACTOR)
    clock.now += 5
    registry.revoke("vm-7", "console:bob")
    audit = registry.audit()
    assert [(e["actor"], e["action"], e["target"], e["at"]) for e in audit] == [
        ("console:bob", "machine_revoke", "vm-7", T0 + 5),
        ("cli:ana", "machine_add", "vm-7", T0),
    ]
    assert audit[1]["before"] is None
    assert audit[1]["after"] == {"added_at": T0, "revoked_at": None}
    assert audit[0]["after"] == {"added_at": T0, "revoked_at": T0 + 5}
    raw = json.dumps(client.xrange(keys.FLEET_AUDIT))
    assert token not in raw and "sha256" not in raw and "token" not in raw


def test_the_list_shows_each_machine_with_when_it_was_last_seen_and_its_version(registry, clock):
    registry.add("vm-b", ACTOR)
    registry.add("vm-a", ACTOR)
    registry.seen("vm-a", "1.4.0", T0 + 30)
    registry.seen("vm-z", "1.4.0", T0 + 30)  # unknown: not recorded
    registry.revoke("vm-b", ACTOR)
    registry.seen("vm-b", "1.3.0", T0 + 40)  # revoked: not recorded
    assert registry.machines() == [
        MachineRecord("vm-a", T0, None, T0 + 30, "1.4.0"),
        MachineRecord("vm-b", T0, T0, None, None),
    ]
    assert registry.machines()[1].record()["state"] == "revoked"


def test_an_unknown_or_revoked_machine_costs_one_digest_and_one_comparison_like_a_real_one(
    registry, monkeypatch
):
    """So that the time of a refusal tells nothing of which machines exist: every answer
    spends one digest and one constant-time comparison of two digests of the same length."""
    token = registry.add("vm-7", ACTOR)
    registry.add("vm-8", ACTOR)
    registry.revoke("vm-8", ACTOR)
    digests: list[str] = []
    compared: list[tuple[int, int]] = []
    real_digest, real_compare = fleet_module.digest, fleet_module.hmac.compare_digest

    def counting_digest(presented: str) -> str:
        digests.append(presented)
        return real_digest(presented)

    def counting_compare(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real_compare(a, b)

    monkeypatch.setattr(fleet_module, "digest", counting_digest)
    monkeypatch.setattr(fleet_module.hmac, "compare_digest", counting_compare)
    answers = [
        registry.authenticate(machine_id, presented)
        for machine_id, presented in (
            ("vm-7", token),
            ("vm-7", "wrong"),
            ("vm-8", token),
            ("vm-9", token),
            ("bad id", token),
        )
    ]
    assert answers == [True, False, False, False, False]
    assert len(digests) == 5 and len(compared) == 5
    assert set(compared) == {(71, 71)}  # "sha256:" and 64 hex digits, both sides


# --- main.py fleet, as processes ---------------------------------------------------------------


@pytest.mark.integration
def test_fleet_add_prints_the_token_alone_on_its_last_line_once(redis_server, real_redis, tmp_path):
    done = cli(redis_server.url, tmp_path, "fleet", "add", "vm-7")
    assert done.returncode == 0, done.stderr
    *said, token = done.stdout.strip().splitlines()
    assert "cannot be shown again" in " ".join(said) and "secret" in " ".join(said)
    assert " " not in token and Fleet(real_redis).authenticate("vm-7", token)
    assert token not in everything_in(real_redis)
    again = cli(redis_server.url, tmp_path, "fleet", "add", "vm-7")
    assert again.returncode == 1 and again.stderr.startswith("refused: ")
    assert len(again.stderr.strip().splitlines()) == 1 and again.stdout == ""
    listed = cli(redis_server.url, tmp_path, "fleet", "list")
    assert listed.returncode == 0 and token not in listed.stdout
    # Added with its menu and on the attract screen, ready for its agent.
    assert listed.stdout.splitlines()[1].split()[:3] == ["vm-7", "active", "IDLE"]
    assert Broker(real_redis, "vm-7").menu() and Broker(real_redis, "vm-7").snapshot().version
    assert [e["actor"] for e in Fleet(real_redis).audit()] == ["cli:ana"]


@pytest.mark.integration
def test_fleet_revoke_and_list_as_json(redis_server, real_redis, tmp_path):
    token = Fleet(real_redis).add("vm-7", ACTOR)
    Fleet(real_redis).seen("vm-7", "1.4.0", T0)
    machine = Broker(real_redis, "vm-7")
    machine.ensure_ready([{"id": "cola", "name": "Cola", "icon": "cola", "price": 5000}])
    machine.set_out_of_service(True)
    owed = Alert(AlertKind.REFUND_OWED, "vm-7-order", "refund owed", T0)
    AlertStore(machine).apply(Changes(raised=(owed,)))
    done = cli(redis_server.url, tmp_path, "fleet", "revoke", "vm-7")
    assert done.returncode == 0 and "revoked" in done.stdout
    assert not Fleet(real_redis).authenticate("vm-7", token)
    [machine] = json.loads(cli(redis_server.url, tmp_path, "fleet", "list", "--json").stdout)
    assert machine["id"] == "vm-7" and machine["state"] == "revoked"
    assert machine["last_seen"] == T0 and machine["version"] == "1.4.0"
    assert machine["alerts"] == ["refund_owed"] and machine["screen"] == "OUT_OF_SERVICE"
    readable = cli(redis_server.url, tmp_path, "fleet", "list").stdout.splitlines()
    assert "Asia/Jakarta" in readable[0]
    assert readable[1].split() == [
        "vm-7",
        "revoked",
        "OUT_OF_SERVICE",
        "2027-01-15",
        "15:00:00",
        "1.4.0",
        "refund_owed",
    ]
    unknown = cli(redis_server.url, tmp_path, "fleet", "revoke", "vm-9")
    assert unknown.returncode == 1 and unknown.stderr.startswith("refused: ")


@pytest.mark.integration
def test_fleet_commands_with_redis_down_are_one_line_and_exit_1(tmp_path):
    for args in (["fleet", "list"], ["fleet", "add", "vm-7"], ["fleet", "revoke", "vm-7"]):
        done = cli("redis://127.0.0.1:1/0", tmp_path, *args)
        assert done.returncode == 1, done
        assert done.stderr.startswith("redis unreachable at redis://127.0.0.1:1/0: ")
        assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""
