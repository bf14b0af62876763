"""DDL that only makes the session's own temporary relations leaves other sessions' catalog snapshot current.

DDL through the gateway marks the snapshot behind until it is read again, and meanwhile roles that may
not run DDL are refused reads (docs/masking.md, Unknown relations): what a name is may have changed.
A temporary relation is seen by its own session only, so an ORM's CREATE TEMP TABLE must not cost
every analyst a refusal. The session itself still has the catalog read again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import offline_demo_config
from pgguard.config import load
from pgguard.demo import data
from pgguard.policy.catalog import Catalog
from pgguard.policy.classify import parse
from pgguard.policy.guard import Policy, SessionGuard

CATALOG = Catalog.from_rows([("s", "public", ""), ("r", "pg_catalog", "pg_class")])


@pytest.mark.parametrize(("sql", "temporary"), [
    ("CREATE TEMP TABLE t (a int)", True),
    ("CREATE TEMPORARY TABLE t AS SELECT 1 AS a", True),
    ("SELECT 1 AS a INTO TEMP t", True),
    ("CREATE TEMP VIEW v AS SELECT 1 AS a", True),
    ("CREATE TEMP SEQUENCE s", True),
    ("CREATE TABLE t (a int)", False),
    ("CREATE TABLE t AS SELECT 1 AS a", False),
    ("SELECT 1 AS a INTO t", False),
    ("CREATE VIEW v AS SELECT 1 AS a", False),
    ("CREATE UNLOGGED TABLE t (a int)", False),
    ("DROP TABLE t", False),  # it may be a temporary one, or not
    ("CREATE INDEX ON t (a)", False),
    ("ALTER TABLE t ADD COLUMN b int", False),
])
def test_only_ddl_that_creates_a_temporary_relation_is_temporary(sql: str, temporary: bool) -> None:
    (statement,) = parse(sql)
    assert statement.temporary is temporary


def test_the_catalog_is_read_again_but_not_marked_behind_after_temporary_ddl(tmp_path: Path) -> None:
    told: list[str] = []
    guard = SessionGuard(Policy(load(offline_demo_config(tmp_path))), ["engineering"], data.ENGINEER,
                         lambda: CATALOG, on_ddl=lambda: told.append("ddl"), on_unknown=lambda: told.append("read"))
    assert all(d.allowed for d in guard.check_query("CREATE TEMP TABLE scratch (a int)"))
    guard.answered_ready(idle=True)
    assert told == ["read", "read"]
    told.clear()
    assert all(d.allowed for d in guard.check_query("CREATE TEMP TABLE t2 (a int); CREATE TABLE public.t3 (a int)"))
    guard.answered_ready(idle=True)
    assert told == ["read", "ddl", "ddl"]
    told.clear()
    guard.check_query("CREATE TEMP TABLE t4 (a int)")
    guard.answered_ready(idle=True)
    assert told == ["read", "read"]
