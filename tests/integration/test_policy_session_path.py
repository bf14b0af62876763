"""The search path a session starts with comes from the server, not from an assumption.

`ALTER ROLE … SET search_path`, `ALTER ROLE … IN DATABASE … SET`, `ALTER
DATABASE … SET` and the startup packet change where a session's unqualified
names resolve before it sends a single SET. Here a login's default path puts
schema cat_shadow first, where `cat_report` is a view of the customers' SSNs,
while public.cat_report is a harmless table of the same name and columns.
Had pgguard assumed `"$user", public`, it would have checked and masked
public.cat_report while PostgreSQL read the view: the SSNs would come back
raw, and a role that may not read cat_shadow would read it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import asyncpg
import psycopg
import pytest
from helpers import fetch_all

from pgguard.demo import data

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway

LOGIN = "cat_path_reader"
SHADOW_PATH = "cat_shadow, public"


def superuser(postgres: PostgresServer, sql: str) -> None:
    with psycopg.connect(postgres.dsn(sslmode="verify-full"), autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="module")
def shadow(postgres: PostgresServer) -> Iterator[list[str]]:
    """The look-alike schema, and a login whose default search path puts it first; the raw SSNs, by id."""
    password = postgres.login_passwords[data.READER].replace("'", "''")
    superuser(postgres, f"""
        CREATE ROLE {LOGIN} LOGIN PASSWORD '{password}';
        ALTER ROLE {LOGIN} SET default_transaction_read_only = on;
        CREATE SCHEMA cat_shadow;
        CREATE TABLE public.cat_report (id int, code text);
        INSERT INTO public.cat_report SELECT g, 'nothing to see' FROM generate_series(1, 5) g;
        CREATE VIEW cat_shadow.cat_report AS SELECT id, ssn AS code FROM public.customers;
        GRANT USAGE ON SCHEMA cat_shadow TO {LOGIN}, {data.READER};
        GRANT USAGE ON SCHEMA public TO {LOGIN};
        GRANT SELECT ON public.customers, public.cat_report, cat_shadow.cat_report TO {LOGIN}, {data.READER};
        ALTER ROLE {LOGIN} SET search_path = {SHADOW_PATH};
    """)
    try:
        yield [ssn for ssn, in fetch_all(postgres.dsn(sslmode="verify-full"),
                                          "SELECT ssn FROM customers WHERE id <= 3 ORDER BY id")]
    finally:
        superuser(postgres, f"""
            DROP VIEW cat_shadow.cat_report; DROP SCHEMA cat_shadow; DROP TABLE public.cat_report;
            DROP OWNED BY {LOGIN}; DROP ROLE {LOGIN};
        """)


def analysts_on(read: str, login: str = LOGIN) -> Callable[[str], str]:
    """The demo's config with the analysts' read patterns and (for the reader's entry) database login replaced."""
    def edit(text: str) -> str:
        text = text.replace('login = "reader"\nread = ["public.*"]', f'login = "reader"\nread = {read}', 1)
        return text.replace(f'user = "{data.READER}"', f'user = "{login}"', 1)
    return edit


READ_SHADOW = '["public.*", "cat_shadow.*"]'
REPORT = "SELECT code FROM cat_report WHERE id <= 3 ORDER BY id"


def codes(dsn: str, *setup: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql in setup:
            conn.execute(sql)
        return [code for code, in conn.execute(REPORT).fetchall()]


def assert_masked(found: list[str], ssns: list[str]) -> None:
    assert len(found) == 3 and "nothing to see" not in found  # PostgreSQL read the view in cat_shadow
    assert not set(found) & set(ssns)


def test_a_role_default_search_path_cannot_unmask_a_column(
        shadow: list[str], gateway_factory: Callable[..., RunningGateway]) -> None:
    gateway = gateway_factory(analysts_on(READ_SHADOW))
    found = codes(gateway.dsn("analyst"))
    assert_masked(found, shadow)
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        assert conn.execute("SHOW search_path").fetchone() == (SHADOW_PATH,)


def test_a_role_default_search_path_cannot_reach_a_schema_the_role_may_not_read(
        shadow: list[str], gateway_factory: Callable[..., RunningGateway]) -> None:
    gateway = gateway_factory(analysts_on('["public.*"]'))
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not read cat_shadow.cat_report"):
            conn.execute(REPORT)
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM public.cat_report").fetchone() == (5,)


def test_reset_returns_to_the_role_default_not_to_the_assumed_one(
        shadow: list[str], gateway_factory: Callable[..., RunningGateway]) -> None:
    """RESET (and RESET ALL, DISCARD ALL, SET … TO DEFAULT) go back to the path the session started with, which
    adds no path pgguard must also consider: the view is still read, and masked."""
    gateway = gateway_factory(analysts_on(READ_SHADOW))
    for reset in ("RESET search_path", "RESET ALL", "DISCARD ALL", "SET search_path TO DEFAULT"):
        assert_masked(codes(gateway.dsn("analyst"), reset), shadow)


def test_a_name_that_two_paths_of_the_session_resolve_differently_is_refused(
        shadow: list[str], gateway_factory: Callable[..., RunningGateway]) -> None:
    """pgguard takes the union of the paths a session has had. Where `cat_report` is a view on one of them and a
    table on the other, it cannot tell which one a statement reads: refused, on either path."""
    gateway = gateway_factory(analysts_on(READ_SHADOW))
    with psycopg.connect(gateway.dsn("analyst"), autocommit=True) as conn:
        for path in ("public", SHADOW_PATH):
            conn.execute(f"SET search_path = {path}")
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="cat_report may be"):
                conn.execute(REPORT)
        assert conn.execute("SELECT count(*) FROM public.cat_report").fetchone() == (5,)


@pytest.mark.parametrize("setting", [
    f"ALTER ROLE {LOGIN} IN DATABASE {data.DATABASE} SET search_path = {SHADOW_PATH}",
    f"ALTER DATABASE {data.DATABASE} SET search_path = {SHADOW_PATH}",
])
def test_database_and_role_in_database_defaults_are_learnt_too(
        shadow: list[str], gateway_factory: Callable[..., RunningGateway], postgres: PostgresServer,
        setting: str) -> None:
    gateway = gateway_factory(analysts_on(READ_SHADOW))
    superuser(postgres, f"ALTER ROLE {LOGIN} RESET search_path; {setting}")
    try:
        assert_masked(codes(gateway.dsn("analyst")), shadow)
    finally:
        superuser(postgres, f"ALTER ROLE {LOGIN} IN DATABASE {data.DATABASE} RESET search_path;"
                            f" ALTER DATABASE {data.DATABASE} RESET search_path;"
                            f" ALTER ROLE {LOGIN} SET search_path = {SHADOW_PATH}")


def test_startup_options_and_parameters_set_the_path_too(
        shadow: list[str], gateway_factory: Callable[..., RunningGateway]) -> None:
    """The demo's own reader login, whose default is `"$user", public`, with the path in PGOPTIONS (psql), in
    libpq's options (psycopg), and as a startup parameter of its own (asyncpg's server_settings)."""
    gateway = gateway_factory(analysts_on(READ_SHADOW, login=data.READER))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PG")},
           "PGOPTIONS": "-c search_path=cat_shadow,public"}
    result = subprocess.run(["psql", gateway.dsn("analyst"), "-XAtc", REPORT], capture_output=True, text=True,
                            env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert_masked(result.stdout.split(), shadow)
    assert_masked(codes(gateway.dsn("analyst", options="-c search_path=cat_shadow,public")), shadow)

    async def by_asyncpg() -> list[str]:
        conn = await asyncpg.connect(gateway.dsn("analyst"), server_settings={"search_path": SHADOW_PATH})
        try:
            return [row[0] for row in await conn.fetch(REPORT)]
        finally:
            await conn.close()

    assert_masked(asyncio.run(by_asyncpg()), shadow)
    assert codes(gateway.dsn("analyst")) == ["nothing to see"] * 3  # and without, public's table
