"""The guard resolves on the search path the server started the session with, and RESET returns there."""

from __future__ import annotations

import pytest

from helpers import offline_demo_config
from pgguard.config import Config, load
from pgguard.demo import data
from pgguard.policy.catalog import Catalog
from pgguard.policy.classify import Name, parse
from pgguard.policy.guard import Policy, SessionGuard

SNAPSHOT = Catalog.from_rows([("s", schema, "") for schema in ("public", "pg_catalog", "shadow", "hr")]
                            + [("r", "pg_catalog", "pg_class")])


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return load(offline_demo_config(tmp_path_factory.mktemp("started")))


def guard(config: Config) -> SessionGuard:
    return SessionGuard(Policy(config), ["analysts"], data.READER, lambda: SNAPSHOT)


def run(guard: SessionGuard, sql: str) -> None:
    for decision in guard.check_query(sql):
        assert decision.allowed, decision.message


def test_the_servers_path_replaces_the_assumed_one(config: Config) -> None:
    session = guard(config)
    assert session.resolve(Name(None, "salaries")) == ["public.salaries"]
    session.started('hr, "$user", public')
    assert session.search_paths == {("hr", "$user", "public")}
    assert session.resolve(Name(None, "salaries")) == ["hr.salaries", "public.salaries"]
    refused = session.check_query("SELECT * FROM salaries")[0]
    assert not refused.allowed and "may not read hr.salaries" in refused.reason


@pytest.mark.parametrize("reset", ["RESET search_path", "RESET ALL", "DISCARD ALL", "SET search_path TO DEFAULT"])
def test_reset_goes_back_to_the_servers_path(config: Config, reset: str) -> None:
    session = guard(config)
    session.started("shadow, public")
    run(session, "SET search_path = shadow, public")
    run(session, reset)
    assert session.search_paths == {("shadow", "public")}  # no assumed `"$user", public` among them
    run(session, "SET search_path = public")
    run(session, reset)
    assert session.search_paths == {("shadow", "public"), ("public",)}


def test_a_decision_made_before_the_path_was_learnt_is_not_kept(config: Config) -> None:
    session = guard(config)
    statement = parse("SELECT * FROM salaries")[0]
    assert session.decide(statement).allowed
    session.started("hr, public")
    assert not session.decide(statement).allowed
