"""Server-side settings that would defeat the guard end the session, or refuse it at login."""

from __future__ import annotations

import psycopg
import pytest
from helpers import known_to


@pytest.fixture
def reader_default(postgres):
    """Set a database-side default for the analyst's login, undone afterwards."""
    changed: list[str] = []

    def set_default(setting: str, value: str) -> None:
        postgres.cluster.psql(f"ALTER ROLE pgguard_reader IN DATABASE demo SET {setting} = {value}", "demo")
        changed.append(setting)

    yield set_default
    for setting in changed:
        postgres.cluster.psql(f"ALTER ROLE pgguard_reader IN DATABASE demo RESET {setting}", "demo")


def test_a_target_with_standard_conforming_strings_off_is_refused_at_login(gateway, reader_default):
    reader_default("standard_conforming_strings", "off")
    with pytest.raises(psycopg.OperationalError, match="standard_conforming_strings off"):
        psycopg.connect(gateway.dsn("analyst")).close()


def test_a_function_that_makes_a_read_only_session_writable_ends_it(gateway, postgres):
    postgres.cluster.psql(
        "CREATE OR REPLACE FUNCTION public.turn_writable() RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS "
        "$$BEGIN PERFORM set_config('default_transaction_read_only', 'off', false); RETURN 1; END$$;"
        "CREATE OR REPLACE VIEW public.innocent AS SELECT public.turn_writable() AS one;"
        "GRANT SELECT ON public.innocent TO pgguard_reader", "demo")
    try:
        known_to(gateway.dsn("analyst"), "innocent")
        with psycopg.connect(gateway.dsn("analyst"), autocommit=True) as conn:
            with pytest.raises(psycopg.Error, match="read-only login became writable"):
                conn.execute("SELECT * FROM innocent").fetchall()
            with pytest.raises(psycopg.OperationalError):
                conn.execute("INSERT INTO orders (customer_id, total, status) VALUES (1, 1, 'x')")
    finally:
        postgres.cluster.psql("DROP VIEW public.innocent; DROP FUNCTION public.turn_writable()", "demo")
