"""A reload reaches statements prepared before it: psycopg 3, asyncpg and SQL PREPARE, through a real gateway.

Every client here prepares its statements before the reload and only runs
them after it: psycopg with prepare_threshold=0 (a Bind of its named
statement), asyncpg from its statement cache and as an explicit prepared
statement, and PREPARE/EXECUTE and DECLARE/FETCH in SQL. A reload that takes
public.orders from the analysts refuses them with 42501; one that masks
public.customers.city masks what they return; one that changes nothing
they use leaves them working.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import asyncpg
import psycopg
import pytest

from test_approvals import Background, api, pending, token
from test_ops_reload import ORDERS, rewrite, sighup
from test_session_log import find_log, records_of

if TYPE_CHECKING:
    from conftest import RunningGateway

COUNT_ORDERS = "SELECT count(*) FROM orders"
# The city as read from the table, and a value derived from it: one the server's RowDescription
# ties to customers.city, one only the statement's masking plan knows comes from it.
CITY = "SELECT city, lower(city) AS town FROM customers WHERE id = 1"
REDACTED = "[redacted]"  # the city once [masking.columns] names it with "redact"
MASKED = (REDACTED, None)  # derived values of a hidden column become NULL
RELOADED = r"configuration reloaded .*1 open session\(s\) updated, 0 ended"


def take_orders_away(gateway: RunningGateway) -> None:
    rewrite(gateway, "roles.analysts", {"read": ["public.customers", "public.tickets"]})
    sighup(gateway, RELOADED)


def mask_the_city(gateway: RunningGateway) -> None:
    rewrite(gateway, "masking.columns", {'"public.customers.city"': "redact"})
    sighup(gateway, RELOADED)


def change_nothing_they_use(gateway: RunningGateway) -> None:
    rewrite(gateway, "roles.support", {"read": ["public.customers"]})
    sighup(gateway, RELOADED)


def city_now(gateway: RunningGateway) -> tuple[str | None, ...]:
    """What a session opened after the reload gets for the city, by the simple protocol."""
    with psycopg.connect(gateway.dsn("analyst"), autocommit=True) as conn:
        return tuple(conn.execute(CITY, prepare=False).fetchone())


@pytest.fixture
def gateway(gateway_factory: Callable[..., RunningGateway]) -> RunningGateway:
    return gateway_factory()


# -- psycopg 3: prepared statements it binds by name --------------------------------------------------


def psycopg_prepared(gateway: RunningGateway, application: str = "") -> psycopg.Connection:
    conn = psycopg.connect(gateway.dsn("analyst"), autocommit=True, prepare_threshold=0,
                           application_name=application)
    assert conn.execute(COUNT_ORDERS).fetchone() == (ORDERS,)
    assert conn.execute(CITY).fetchone() != MASKED
    return conn


def test_psycopg_prepared_statement_refused_after_a_reload_takes_the_table_away(gateway: RunningGateway) -> None:
    with psycopg_prepared(gateway, "reload-refusal") as conn:
        take_orders_away(gateway)
        for _ in range(2):  # psycopg keeps binding its statement: refused each time
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match=r"pgguard: SELECT refused: role analysts may not read public\.orders") as caught:
                conn.execute(COUNT_ORDERS)
            assert "prepared before a configuration reload" in (caught.value.diag.message_hint or "")
        # The connection goes on, with what the role may still read.
        assert conn.execute(CITY).fetchone() != MASKED
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (1200,)
    # The session log has each refused Bind as a refused statement, answered by the 42501.
    records = records_of(find_log(gateway, "reload-refusal"))
    refused = [r for r in records if r["type"] == "statement" and r["decision"] == "refused"]
    assert [(r["sql"], r["rule"]) for r in refused] == [(COUNT_ORDERS, "roles.analysts.read")] * 2
    errors = [r["error"]["sqlstate"] for r in records if r["type"] == "result" and r["statement"] == refused[0]["seq"]]
    assert errors == ["42501"]


def test_psycopg_prepared_statement_masked_after_a_reload_masks_the_column(gateway: RunningGateway) -> None:
    with psycopg_prepared(gateway) as conn:
        raw = conn.execute(CITY).fetchone()
        by_city = "SELECT count(*) FROM customers WHERE city = 'Lyon'"
        conn.execute(by_city)
        mask_the_city(gateway)
        assert conn.execute(CITY).fetchone() == MASKED == city_now(gateway)
        # What the new rules cannot mask (the analysts' strict_inference: no filtering on a hidden
        # column) is refused at its Bind, as its Parse would be now.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="filters, .* on public.customers.city"):
            conn.execute(by_city)
        assert raw[0] != REDACTED and raw[1] == raw[0].lower()
        # Binary results too, through a statement prepared before the reload.
        with conn.cursor(binary=True) as cursor:
            assert cursor.execute(CITY).fetchone() == MASKED


def test_psycopg_prepared_statements_keep_working_after_an_unrelated_reload(gateway: RunningGateway) -> None:
    with psycopg_prepared(gateway) as conn:
        raw = conn.execute(CITY).fetchone()
        change_nothing_they_use(gateway)
        for _ in range(2):
            assert conn.execute(COUNT_ORDERS).fetchone() == (ORDERS,)
            assert conn.execute(CITY).fetchone() == raw


# -- asyncpg: its statement cache, and an explicit prepared statement ---------------------------------


def test_asyncpg_cached_and_prepared_statements_follow_reloads(gateway: RunningGateway) -> None:
    async def work() -> None:
        conn = await asyncpg.connect(gateway.dsn("analyst"))
        try:
            assert await conn.fetchval(COUNT_ORDERS) == ORDERS  # now in asyncpg's statement cache
            raw = tuple(await conn.fetchrow(CITY))
            city = await conn.prepare(CITY)
            change_nothing_they_use(gateway)
            assert await conn.fetchval(COUNT_ORDERS) == ORDERS
            assert tuple(await city.fetchrow()) == raw != MASKED
            mask_the_city(gateway)
            assert tuple(await conn.fetchrow(CITY)) == MASKED
            assert tuple(await city.fetchrow()) == MASKED
            take_orders_away(gateway)
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="may not read public.orders"):
                await conn.fetchval(COUNT_ORDERS)
            assert tuple(await city.fetchrow()) == MASKED  # still allowed, still masked
        finally:
            await conn.close()

    asyncio.run(work())


def test_asyncpg_cursors_opened_before_a_reload_follow_it(gateway: RunningGateway) -> None:
    async def work() -> None:
        conn = await asyncpg.connect(gateway.dsn("analyst"))
        try:
            async with conn.transaction():
                towns = await conn.cursor("SELECT city, lower(city) FROM customers ORDER BY id")
                assert tuple((await towns.fetch(1))[0]) != MASKED
                mask_the_city(gateway)
                for _ in range(2):
                    assert [tuple(row) for row in await towns.fetch(2)] == [MASKED, MASKED]
            async with conn.transaction():
                ids = await conn.cursor("SELECT id FROM orders ORDER BY id")
                assert [row[0] for row in await ids.fetch(2)] == [1, 2]
                take_orders_away(gateway)
                with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError,
                                   match=r"may not read public\.orders"):
                    await ids.fetch(2)
        finally:
            await conn.close()

    asyncio.run(work())


# -- SQL: PREPARE/EXECUTE and DECLARE/FETCH -------------------------------------------------------------


def test_sql_execute_is_decided_again_and_masked_after_reloads(gateway: RunningGateway) -> None:
    with psycopg.connect(gateway.dsn("analyst"), autocommit=True) as conn:
        conn.execute("PREPARE o AS SELECT count(*) FROM orders")
        conn.execute(f"PREPARE c AS {CITY}")
        raw = conn.execute("EXECUTE c").fetchone()
        change_nothing_they_use(gateway)
        assert conn.execute("EXECUTE o").fetchone() == (ORDERS,)
        assert conn.execute("EXECUTE c").fetchone() == raw != MASKED
        mask_the_city(gateway)
        assert conn.execute("EXECUTE c").fetchone() == MASKED
        take_orders_away(gateway)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not read public.orders"):
            conn.execute("EXECUTE o")
        # PREPARE of a name the server holds fails: o still holds the count of orders, and stays refused.
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
            conn.execute("PREPARE o AS SELECT 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not read public.orders"):
            conn.execute("EXECUTE o")
        # Deallocated and prepared again, the name runs what it holds now.
        conn.execute("DEALLOCATE o")
        conn.execute("PREPARE o AS SELECT 1")
        assert conn.execute("EXECUTE o").fetchone() == (1,)


def test_a_cursor_declared_before_a_reload_is_fetched_masked(gateway: RunningGateway) -> None:
    with psycopg.connect(gateway.dsn("analyst"), autocommit=True) as conn:
        conn.execute("DECLARE towns CURSOR WITH HOLD FOR SELECT city, lower(city) FROM customers ORDER BY id")
        assert conn.execute("FETCH 1 FROM towns").fetchone() != MASKED
        mask_the_city(gateway)
        assert conn.execute("FETCH 2 FROM towns").fetchall() == [MASKED, MASKED]


def test_a_cursor_declared_before_a_reload_that_takes_its_table_away_is_refused(gateway: RunningGateway) -> None:
    with psycopg.connect(gateway.dsn("analyst"), autocommit=True) as conn:
        conn.execute("DECLARE ids CURSOR WITH HOLD FOR SELECT id FROM orders ORDER BY id")
        conn.execute("DECLARE towns CURSOR WITH HOLD FOR SELECT city FROM customers ORDER BY id")
        assert conn.execute("FETCH 2 FROM ids").fetchall() == [(1,), (2,)]
        take_orders_away(gateway)
        for fetch in ("FETCH 2 FROM ids", "MOVE 10 IN ids", "FETCH ALL FROM ids"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="(FETCH|MOVE) refused: .* public.orders"):
                conn.execute(fetch)
        assert len(conn.execute("FETCH 3 FROM towns").fetchall()) == 3


# -- approvals: a rule added by a reload holds statements prepared before it --------------------------


def test_a_statement_prepared_before_a_reload_that_adds_an_approval_rule_is_held(gateway: RunningGateway) -> None:
    update = "UPDATE tickets SET status = status WHERE id = %s"
    with psycopg.connect(gateway.dsn("engineer"), autocommit=True, prepare_threshold=0) as conn:
        assert conn.execute(update, (1,)).statusmessage == "UPDATE 1"  # prepared; no rule holds it yet
        text = gateway.config_path.read_text()
        rule = 'tables = ["public.orders"], kinds = ["update", "delete"]'
        assert rule in text
        gateway.config_path.write_text(text.replace(rule, rule.replace('"public.orders"',
                                                                        '"public.orders", "public.tickets"')))
        sighup(gateway, RELOADED)
        client = Background(lambda: conn.execute(update, (1,)).statusmessage)
        request = pending(gateway, "UPDATE tickets SET status = status WHERE id = $1")
        status, answer = api(gateway, f"/api/approvals/{request['id']}/deny", token(gateway, "dba"),
                             {"reason": "not now"})
        assert status == 200 and answer["status"] == "denied", answer
        client.join()
        assert isinstance(client.error, psycopg.errors.InsufficientPrivilege)
        assert "denied by" in str(client.error)
