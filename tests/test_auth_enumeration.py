"""Whether a username exists must not show in the work a refusal costs, counted in bcrypt
operations (the cost factor of every hash checked), not on a clock. The platform may hash its
MotorBlock passwords at another cost than encimap hashes its own credentials."""

from __future__ import annotations

import pytest

from encimap.auth import AuthFailed, hasher
from encimap.auth.passwords import hash_password
from encimap.store import credentials
from tests.support import TEST_BCRYPT_COST, Databases, make_config, make_motorblock, make_vaultbox
from tests.test_auth_engine import close_engine, open_engine

pytestmark = pytest.mark.timeout(60)
ENCIMAP_COST = TEST_BCRYPT_COST + 1  # what encimap hashes at; the platform's MotorBlocks differ


@pytest.fixture
def checked_costs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The cost of every hash bcrypt checks a password against, in order."""
    costs: list[int] = []
    checkpw = hasher._checkpw

    def counted(password: bytes, stored: bytes) -> bool:
        costs.append(int(stored[4:6]))
        return checkpw(password, stored)

    monkeypatch.setattr(hasher, "_checkpw", counted)
    return costs


async def test_unknown_users_cost_what_known_users_cost(
    databases: Databases, checked_costs: list[int]
) -> None:
    motorblock = await make_motorblock(
        databases, username="enum-mb", password="pw", domain="enum.test"
    )
    box = await make_vaultbox(databases, "enum@vault.test", password="pw", kinds=("smtp",))
    conn = await databases.connect()
    try:
        await credentials.set_password(
            conn, "smtp", box.username, hash_password("pw", ENCIMAP_COST)
        )
    finally:
        await conn.close()
    cfg = make_config(databases, auth={"bcrypt_cost": ENCIMAP_COST, "negative_cache_ttl": 0})
    engine, pools = await open_engine(cfg)

    async def refused_cost(username: str, password: str) -> int:
        before = len(checked_costs)
        with pytest.raises(AuthFailed) as refusal:
            await engine.authenticate(username, password, service="smtp")
        assert str(refusal.value) == "authentication failed"
        [cost] = checked_costs[before:]
        return cost

    try:
        known = {
            await refused_cost(motorblock.username, "wrong-1"),
            await refused_cost(box.username, "wrong-2"),
        }
        assert known == {TEST_BCRYPT_COST, ENCIMAP_COST}
        unknown: dict[str, set[int]] = {}
        for attempt in range(2):
            for i in range(24):
                name = f"enum-nobody-{i}"
                unknown.setdefault(name, set()).add(await refused_cost(name, f"pw-{attempt}"))
    finally:
        await close_engine(engine, pools)
    # Each unknown name always costs the same, and what some known user costs; together
    # they cost what the known users cost (none of them stands out by costing less or more).
    assert all(len(costs) == 1 for costs in unknown.values()), unknown
    assert set().union(*unknown.values()) == known


async def test_a_malformed_exchange_costs_what_a_wrong_password_costs(
    databases: Databases, checked_costs: list[int]
) -> None:
    """Not a cheaper way to fill the throttling's memory with (address, name) entries."""
    cfg = make_config(databases, auth={"bcrypt_cost": ENCIMAP_COST, "negative_cache_ttl": 0})
    engine, pools = await open_engine(cfg)
    try:
        for number in range(3):
            with pytest.raises(AuthFailed):
                await engine.refuse(f"enum-malformed-{number}", "invalid base64", service="smtp")
    finally:
        await close_engine(engine, pools)
    assert checked_costs == [ENCIMAP_COST] * 3


async def test_a_name_live_in_both_databases_costs_what_a_wrong_password_costs(
    databases: Databases, checked_costs: list[int]
) -> None:
    box = await make_vaultbox(databases, "enum-twin@vault.test", password="pw", kinds=("smtp",))
    await make_motorblock(databases, username=box.username, password="pw", domain="twin.test")
    cfg = make_config(databases, auth={"bcrypt_cost": ENCIMAP_COST})
    engine, pools = await open_engine(cfg)
    try:
        with pytest.raises(AuthFailed):
            await engine.authenticate(box.username, "pw", service="smtp")
    finally:
        await close_engine(engine, pools)
    assert len(checked_costs) == 1
