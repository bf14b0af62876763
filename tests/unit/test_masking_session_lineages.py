"""A session traces each statement text's lineage once, and again whenever what it depends on changed."""

from __future__ import annotations


from dataclasses import replace

import pytest

from helpers import offline_demo_config
from pgguard.config import Config, load
from pgguard.demo import data
from pgguard.masking.plan import MaskingRefused
from pgguard.masking.session import MaskingConfig, SessionRelations
from pgguard.policy.catalog import Catalog
from pgguard.policy.classify import parse
from pgguard.policy.guard import Policy, SessionGuard

SQL = "SELECT email FROM customers WHERE id = 1"


def catalog(*schemas: str) -> Catalog:
    """`customers` (with email) in each of `schemas`."""
    names = Catalog.from_rows([("s", schema, "") for schema in ("public", "pg_catalog", *schemas)]
                              + [("o", "pg_catalog", "=")])
    rows = [[str(16000 + index), schema, "customers", str(attnum), column, None, "25"]
            for index, schema in enumerate(("public", *schemas)) for attnum, column in enumerate(("id", "email"), 1)]
    return names.with_relations(rows)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return load(offline_demo_config(tmp_path_factory.mktemp("lineages")))


class Session:
    def __init__(self, config: Config, snapshot: Catalog, role: str = "analysts") -> None:
        self.snapshot = snapshot
        self.refreshes = 0
        self.guard = SessionGuard(Policy(config), [role], data.READER, lambda: self.snapshot,
                                  on_ddl=self.refresh)
        self.relations = SessionRelations(self.guard, lambda: self.snapshot, MaskingConfig(config).rules)

    def refresh(self) -> None:
        self.refreshes += 1


def test_a_shape_is_traced_once(config: Config) -> None:
    session = Session(config, catalog())
    first = session.relations.lineages(SQL)
    assert session.relations.lineages(SQL) is first
    assert session.relations.lineages("SELECT email FROM customers WHERE id = 42 ") is first  # constants, spacing
    assert session.relations.lineages("SELECT email FROM customers WHERE id > 1") is not first  # another shape


def test_a_text_whose_tracing_reads_a_constant_is_traced_as_itself(config: Config) -> None:
    """`ORDER BY 2` sorts by the second column: the constant is read, so no other text shares the answer."""
    session = Session(config, catalog())
    by_id = "SELECT id, email FROM customers ORDER BY 1"
    first = session.relations.lineages(by_id)
    assert session.relations.lineages(by_id) is first
    by_email = session.relations.lineages("SELECT id, email FROM customers ORDER BY 2")
    assert by_email is not first
    assert {str(c) for c in by_email[0].filters} == {"public.customers.email"}
    assert {str(c) for c in first[0].filters} == {"public.customers.id"}


def test_a_new_catalog_snapshot_is_traced_again_even_if_equal(config: Config) -> None:
    session = Session(config, catalog())
    first = session.relations.lineages(SQL)
    session.snapshot = catalog()
    again = session.relations.lineages(SQL)
    assert again is not first and again == first


def test_a_new_search_path_is_traced_again_and_may_change_the_answer(config: Config) -> None:
    """`customers` in `shadow` too: once the session may be resolving it there, pgguard cannot tell which."""
    session = Session(config, catalog("shadow"))
    assert session.relations.lineages(SQL)[0].columns
    for statement in parse("SET search_path = shadow, public"):
        session.guard.apply(statement)
    with pytest.raises(MaskingRefused, match="cannot tell which"):
        session.relations.lineages(SQL)


def test_a_relation_the_catalog_does_not_know_is_traced_every_time(config: Config) -> None:
    """For a role that may run DDL, whose own new (and temporary) tables no snapshot shows at once."""
    session = Session(config, catalog(), "engineering")
    sql = "SELECT * FROM made_since"
    first = session.relations.lineages(sql)
    assert first[0].unresolved and session.refreshes == 1
    assert session.relations.lineages(sql) is not first


def test_a_relation_the_catalog_does_not_know_is_refused_to_a_role_that_may_not_run_ddl(config: Config) -> None:
    """It may be a view over anything, pg_stat_activity.query among it, which no detector recognises."""
    session = Session(config, catalog())
    with pytest.raises(MaskingRefused, match="relation made_since is unknown to pgguard") as caught:
        session.relations.lineages("SELECT * FROM made_since")
    assert session.refreshes == 1 and "retry" in (caught.value.hint or "")


def test_a_snapshot_behind_ddl_is_refused_to_a_role_that_may_not_run_ddl(config: Config) -> None:
    """Another session's DDL may have made a known name a view over other columns."""
    behind = replace(catalog(), behind=True)
    with pytest.raises(MaskingRefused, match="DDL ran since pgguard read the catalog"):
        Session(config, behind).relations.lineages(SQL)
    assert Session(config, behind, "engineering").relations.lineages(SQL)[0].columns
