"""The hold, sans I/O: what the protocol keeps, sends and records for a statement that needs approval."""

from __future__ import annotations

import re

import pytest

from helpers import offline_demo_config
from pgguard.approvals.service import Approvals, SessionApprovals
from pgguard.approvals.store import Grant, Request
from pgguard.config import Config, load
from pgguard.demo import data
from pgguard.identity import Identity
from pgguard.policy.catalog import Catalog
from pgguard.policy.guard import Policy, SessionGuard
from pgguard.relay.protocol import SessionProtocol
from pgguard.wire import backend, frontend
from pgguard.wire.codec import message
from pgguard.wire.framing import MessageFramer

CATALOG = Catalog.from_rows([("s", "public", ""), ("r", "pg_catalog", "pg_class")])
STAND_IN = re.compile(rb"SELECT 'pgguard-refusal:([0-9a-f]{16})'::pg_catalog\.int4")
ENGINEER = Identity("pgguard", "pgguard", "engineer-sub", "engineer", ("engineering",), "j1", 0, 2e9, 2e9)
DBA = Identity("pgguard", "pgguard", "dba-sub", "dba", ("dba",), "j2", 0, 2e9, 2e9)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return load(offline_demo_config(tmp_path_factory.mktemp("hold")))


@pytest.fixture
def approvals(config: Config) -> Approvals:
    return Approvals(config.approvals)


def engineer(config: Config, approvals: Approvals) -> SessionProtocol:
    guard = SessionGuard(Policy(config), ["engineering"], data.ENGINEER, lambda: CATALOG, assume_builtin=True)
    return SessionProtocol(MessageFramer(), MessageFramer(), guard,
                           approvals=SessionApprovals(approvals, ENGINEER, "session-1", data.DATABASE))


def query(text: str) -> bytes:
    return message(b"Q", text.encode() + b"\0")


def notices(data_: bytes) -> list[str]:
    _, frames = MessageFramer().feed(data_)
    return [dict(backend.NoticeResponse.decode(f.body).fields)["M"] for f in frames if f.tag == ord("N")]


def decided(approvals: Approvals, request: Request, status: str, by: str | None = "dba") -> Request:
    closed = (approvals.store.approve(request.id, "dba") if status == "approved"
              else approvals.store.close(request.id, status, by, "not during the freeze"))  # type: ignore[arg-type]
    assert closed is not None
    return closed


def test_a_read_goes_straight_up(config: Config, approvals: Approvals) -> None:
    protocol = engineer(config, approvals)
    sent = query("SELECT * FROM orders WHERE id = 1")
    out = protocol.client_bytes(sent)
    assert out.to_upstream == sent and out.hold is None
    assert approvals.pending_count() == 0


def test_a_delete_on_orders_is_held_with_everything_after_it(config: Config, approvals: Approvals) -> None:
    protocol = engineer(config, approvals)
    held = query("DELETE FROM orders WHERE id = 7")
    later = query("SELECT 1")
    out = protocol.client_bytes(query("SELECT 2") + held + later)
    assert out.to_upstream == query("SELECT 2")
    assert out.hold is not None and out.hold.sql == "DELETE FROM orders WHERE id = 7"
    [text] = notices(out.to_client)
    assert out.hold.id in text and f"pgguard approvals approve {out.hold.id}" in text
    assert protocol.client_bytes(query("SELECT 3")) == ((b"", b"", None, None))  # kept, not sent
    released = protocol.resume(decided(approvals, out.hold, "approved"))
    assert released.to_upstream == held + later + query("SELECT 3")
    assert protocol.holding is None


def test_a_denial_sends_a_stand_in_and_rewrites_its_error(config: Config, approvals: Approvals) -> None:
    protocol = engineer(config, approvals)
    out = protocol.client_bytes(query("DROP TABLE tickets"))
    assert out.hold is not None and out.to_upstream == b""
    denied = protocol.resume(decided(approvals, out.hold, "denied"))
    match = STAND_IN.search(denied.to_upstream)
    assert match and b"DROP" not in denied.to_upstream
    error = backend.ErrorResponse.build("ERROR", "22P02", f'invalid input: "pgguard-refusal:{match[1].decode()}"')
    back = protocol.upstream_bytes(error.encode() + backend.ReadyForQuery("I").encode())
    _, frames = MessageFramer().feed(back.to_client)
    fields = dict(backend.ErrorResponse.decode(frames[0].body).fields)
    assert fields["C"] == "42501" and "denied by dba: not during the freeze" in fields["M"]


def test_a_refused_statement_after_a_held_one_runs_nothing_of_the_query(config: Config,
                                                                        approvals: Approvals) -> None:
    protocol = engineer(config, approvals)
    out = protocol.client_bytes(query("DELETE FROM orders WHERE id = 7; ALTER SYSTEM SET work_mem = '1MB'"))
    assert out.hold is None and STAND_IN.fullmatch(out.to_upstream[5:-1])
    assert approvals.pending_count() == 0


def test_an_execute_is_held_with_its_parameters_and_its_batch(config: Config, approvals: Approvals) -> None:
    protocol = engineer(config, approvals)
    parse_bind = frontend.Parse("", "DELETE FROM orders WHERE id = $1", []).encode() + \
        frontend.Bind("", "", [0], [b"42"], []).encode()
    execute, sync = frontend.Execute("", 0).encode(), frontend.Sync().encode()
    out = protocol.client_bytes(parse_bind + execute + sync)
    assert out.to_upstream == parse_bind and out.hold is not None
    assert out.hold.parameters == ("42",) and out.hold.protocol == "extended"
    denied = protocol.resume(decided(approvals, out.hold, "timed_out", None))
    assert denied.to_upstream.startswith(b"P") and denied.to_upstream.endswith(sync)
    assert STAND_IN.search(denied.to_upstream) and execute not in denied.to_upstream


def test_a_grant_covers_the_same_rule_only(config: Config, approvals: Approvals) -> None:
    protocol = engineer(config, approvals)
    out = protocol.client_bytes(query("UPDATE orders SET status = 'x' WHERE id = 1"))
    assert out.hold is not None
    approvals.store.approve(out.hold.id, "dba", 1800)
    approvals.store.add_grant(Grant("pgguard", "engineer-sub", out.hold.rule, out.hold.rule_text, 4e9, "dba",
                                    out.hold.id))
    protocol.resume(approvals.store.get(out.hold.id))  # type: ignore[arg-type]
    again = query("DELETE FROM orders WHERE id = 2")
    assert protocol.client_bytes(again) == (again, b"", None, None)
    assert protocol.client_bytes(query("DROP TABLE tickets")).hold is not None  # another rule


def test_a_grant_does_not_pass_to_the_rule_a_reload_gives_its_label(
        tmp_path_factory: pytest.TempPathFactory, config: Config, approvals: Approvals) -> None:
    protocol = engineer(config, approvals)
    out = protocol.client_bytes(query("DELETE FROM orders WHERE id = 1"))
    assert out.hold is not None and out.hold.rule == "roles.engineering.approval[1]"
    approvals.approve(out.hold.id, DBA, 1800)
    # The reloaded config swaps the rules: approval[1] now holds every DDL statement.
    path = offline_demo_config(tmp_path_factory.mktemp("swapped"))
    rules = ('{ classes = ["ddl"] },\n    { tables = ["public.orders"], kinds = ["update", "delete"] },',
             '{ tables = ["public.orders"], kinds = ["update", "delete"] },\n    { classes = ["ddl"] },')
    assert rules[0] in path.read_text()
    path.write_text(path.read_text().replace(*rules))
    reloaded = engineer(load(path), approvals)
    held = reloaded.client_bytes(query("DROP TABLE tickets")).hold
    assert held is not None and held.rule == "roles.engineering.approval[1]"


def test_max_pending_refuses_with_42501(config: Config, approvals: Approvals) -> None:
    protocol = engineer(config, approvals)
    for index in range(config.approvals.max_pending):
        engineer(config, approvals).client_bytes(query(f"DELETE FROM orders WHERE id = {index}"))
    out = protocol.client_bytes(query("DELETE FROM orders WHERE id = 1"))
    assert out.hold is None and STAND_IN.fullmatch(out.to_upstream[5:-1])


def test_a_grant_of_one_rule_leaves_the_other_rules_of_a_statement_holding_it(config: Config,
                                                                              approvals: Approvals) -> None:
    protocol = engineer(config, approvals)
    out = protocol.client_bytes(query("CREATE INDEX ON tickets (status)"))
    assert out.hold is not None and out.hold.rule == "roles.engineering.approval[0]"
    protocol.resume(approvals.approve(out.hold.id, DBA, 1800))  # every DDL statement, for 30 minutes
    assert protocol.client_bytes(query("CREATE INDEX ON tickets (id)")).hold is None
    # DDL that deletes orders too: the orders rule still holds it, as an Execute or as a Query.
    both = "WITH d AS (DELETE FROM orders RETURNING *) SELECT * INTO public.kept FROM d"
    held = protocol.client_bytes(query(both)).hold
    assert held is not None and held.rule == "roles.engineering.approval[1]"
    protocol.resume(decided(approvals, held, "denied"))
    out = protocol.client_bytes(frontend.Parse("", both, []).encode() + frontend.Bind("", "", [], [], []).encode()
                                + frontend.Execute("", 0).encode() + frontend.Sync().encode())
    assert out.hold is not None and out.hold.rule == "roles.engineering.approval[1]"


@pytest.mark.parametrize("sql", ["DROP TABLE orders", "ALTER TABLE orders RENAME TO kept",
                                 "ALTER TABLE orders ALTER COLUMN total TYPE int USING 0"])
def test_ddl_that_drops_rewrites_or_renames_a_table_is_held_by_its_rule_under_a_ddl_grant(
        config: Config, approvals: Approvals, sql: str) -> None:
    protocol = engineer(config, approvals)
    out = protocol.client_bytes(query("CREATE INDEX ON tickets (status)"))
    assert out.hold is not None
    protocol.resume(approvals.approve(out.hold.id, DBA, 1800))
    held = protocol.client_bytes(query(sql)).hold
    assert held is not None and held.rule == "roles.engineering.approval[1]"


def test_an_approved_statement_is_not_run_when_a_reload_came_while_it_waited(config: Config,
                                                                             approvals: Approvals) -> None:
    protocol = engineer(config, approvals)
    held = protocol.client_bytes(query("DELETE FROM orders WHERE id = 1")).hold
    assert held is not None
    # The reloaded configuration no longer lets engineering write: the DELETE would be refused now.
    assert protocol.guard is not None
    protocol.guard.reconfigure(Policy(config), ["analysts"])
    out = protocol.resume(decided(approvals, held, "approved"))
    assert b"DELETE" not in out.to_upstream and STAND_IN.search(out.to_upstream)
