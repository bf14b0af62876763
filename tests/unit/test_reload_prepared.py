"""A reload reaches statements prepared before it, sans I/O: plain bytes through SessionProtocol.

The analysts start with every public table and lose public.orders in the
reload. What the server holds under a name prepared before it is decided
again at its Bind, Describe or EXECUTE, however the client tries to make
pgguard think the name holds something else.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from helpers import offline_demo_config
from pgguard.config import load
from pgguard.demo import data
from pgguard.policy.catalog import Catalog, versioned
from pgguard.policy.guard import Policy, SessionGuard
from pgguard.policy.names import Named
from pgguard.relay.protocol import SessionProtocol
from pgguard.wire import backend, frontend
from pgguard.wire.framing import MessageFramer
from rawclient import set_keys

CATALOG = Catalog.from_rows([("s", "public", ""), ("r", "pg_catalog", "pg_class"),
                             ("f", "pg_catalog", "count")])
STAND_IN = re.compile(rb"SELECT 'pgguard-refusal:([0-9a-f]{16})'::pg_catalog\.int4")
ORDERS = b"SELECT * FROM orders"
READY = backend.ReadyForQuery("I").encode()
SYNC = frontend.Sync().encode()


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Policy, Policy]:
    """The demo's policy, and the one after the reload: analysts may no longer read public.orders."""
    path = offline_demo_config(tmp_path_factory.mktemp("reload"))
    before = Policy(load(path))
    path.write_text(set_keys(path.read_text(), "roles.analysts", {"read": ["public.customers"]}))
    return before, Policy(load(path))


def session(policy: Policy) -> SessionProtocol:
    guard = SessionGuard(policy, ["analysts"], data.READER, lambda: CATALOG)
    return SessionProtocol(MessageFramer(), MessageFramer(), guard)


def reload(protocol: SessionProtocol, policy: Policy) -> None:
    assert protocol.guard is not None
    protocol.guard.reconfigure(policy, ["analysts"])


def query(text: bytes) -> bytes:
    return frontend.Query(text.decode()).encode()


def parse(text: bytes, name: str = "") -> bytes:
    return frontend.Parse(name, text.decode(), []).encode()


def bind(name: str = "") -> bytes:
    return frontend.Bind("", name, [], [], []).encode()


def run(name: str = "") -> bytes:
    return bind(name) + frontend.Execute("", 0).encode() + SYNC


def answered(protocol: SessionProtocol, *messages: bytes) -> None:
    """The server's answers to what was sent, ending with ReadyForQuery."""
    protocol.upstream_bytes(b"".join(messages) + READY)


def prepared_before_the_reload(policies: tuple[Policy, Policy], text: bytes = ORDERS,
                               name: str = "q") -> SessionProtocol:
    protocol = session(policies[0])
    sent = parse(text, name) + SYNC
    assert protocol.client_bytes(sent).to_upstream == sent  # allowed then
    answered(protocol, backend.ParseComplete().encode())
    reload(protocol, policies[1])
    return protocol


def refusal(protocol: SessionProtocol, sent: bytes, ready: bytes = READY) -> backend.ErrorResponse:
    """The error the client gets for a stand-in in `sent`, answered as PostgreSQL would."""
    match = STAND_IN.search(sent)
    assert match, sent
    error = backend.ErrorResponse.build(
        "ERROR", "22P02", f'invalid input syntax for type integer: "pgguard-refusal:{match[1].decode()}"')
    out = protocol.upstream_bytes(error.encode() + ready)
    _, frames = MessageFramer().feed(out.to_client)
    first = backend.decode_backend(frames[0])
    assert isinstance(first, backend.ErrorResponse)
    return first


def test_a_bind_of_a_statement_prepared_before_the_reload_is_decided_again(policies: tuple[Policy, Policy]) -> None:
    protocol = prepared_before_the_reload(policies)
    sent = protocol.client_bytes(run("q")).to_upstream
    # The Bind became a Parse that fails, under a name of its own; Execute and Sync follow as sent.
    assert sent.startswith(b"P") and b"pgguard_refused_" in sent and bind("q") not in sent
    assert sent.endswith(frontend.Execute("", 0).encode() + SYNC)
    error = refusal(protocol, sent)
    assert (error.code, error.message) == \
        ("42501", "pgguard: SELECT refused: role analysts may not read public.orders (rule roles.analysts.read)")
    assert error.fields["H"].startswith('prepared statement "q" was prepared before a configuration reload')


def test_a_describe_of_it_is_refused_too(policies: tuple[Policy, Policy]) -> None:
    protocol = prepared_before_the_reload(policies)
    sent = protocol.client_bytes(frontend.Describe("S", "q").encode() + SYNC).to_upstream
    assert refusal(protocol, sent).code == "42501"


def test_what_the_new_policy_allows_binds_as_before(policies: tuple[Policy, Policy]) -> None:
    protocol = prepared_before_the_reload(policies, b"SELECT count(*) FROM customers")
    sent = run("q")
    assert protocol.client_bytes(sent).to_upstream == sent
    answered(protocol, backend.BindComplete().encode())
    assert protocol.client_bytes(sent).to_upstream == sent  # decided again once, then known allowed


def prepared_before_the_search_path_changed(policy: Policy, text: bytes) -> SessionProtocol:
    protocol = session(policy)
    sent = parse(text, "q") + SYNC
    assert protocol.client_bytes(sent).to_upstream == sent
    answered(protocol, backend.ParseComplete().encode())
    change = query(b"SET search_path = shadow")
    assert protocol.client_bytes(change).to_upstream == change
    answered(protocol, backend.CommandComplete("SET").encode())
    return protocol


def test_a_bind_after_the_search_path_changed_is_decided_again(policies: tuple[Policy, Policy]) -> None:
    """The server plans the statement again under the new path, where `orders` may be shadow.orders."""
    protocol = prepared_before_the_search_path_changed(policies[0], ORDERS)
    error = refusal(protocol, protocol.client_bytes(run("q")).to_upstream)
    assert (error.code, error.message) == \
        ("42501", "pgguard: SELECT refused: role analysts may not read shadow.orders (rule roles.analysts.read)")
    assert error.fields["H"] == 'prepared statement "q" was prepared before the session\'s search_path or the database\'s' \
        " objects changed, and is decided again as the server plans it again"
    describe = frontend.Describe("S", "q").encode() + SYNC
    assert refusal(protocol, protocol.client_bytes(describe).to_upstream).code == "42501"


def test_what_the_new_search_path_allows_binds_and_is_not_decided_again(policies: tuple[Policy, Policy]) -> None:
    protocol = prepared_before_the_search_path_changed(policies[0], b"SELECT count(*) FROM public.orders")
    guard = protocol.guard
    assert guard is not None and guard.replanning
    assert [guard.stale(held) for held in guard.prepared.candidates("q")] == [True]
    assert protocol.client_bytes(run("q")).to_upstream == run("q")
    assert [guard.stale(held) for held in guard.prepared.candidates("q")] == [False]


def test_a_statement_prepared_after_the_reload_is_not_decided_again(policies: tuple[Policy, Policy]) -> None:
    protocol = prepared_before_the_reload(policies)
    sent = parse(b"SELECT 1", "fresh") + run("fresh")
    assert protocol.client_bytes(sent).to_upstream == sent


def test_the_unnamed_statement_is_covered_and_a_new_parse_of_it_replaces_it(policies: tuple[Policy, Policy]) -> None:
    protocol = prepared_before_the_reload(policies, name="")
    # Parse and Bind in one batch: the Bind runs only if the Parse succeeded.
    sent = parse(b"SELECT 1") + run()
    assert protocol.client_bytes(sent).to_upstream == sent
    answered(protocol, backend.ParseComplete().encode(), backend.BindComplete().encode(),
             backend.CommandComplete("SELECT 1").encode())
    assert protocol.client_bytes(run()).to_upstream == run()
    # Before that, a Bind alone would have run the old one.
    protocol = prepared_before_the_reload(policies, name="")
    assert refusal(protocol, protocol.client_bytes(run()).to_upstream).code == "42501"


def test_a_parse_of_the_name_that_fails_upstream_does_not_hide_what_it_holds(policies: tuple[Policy, Policy]) -> None:
    protocol = prepared_before_the_reload(policies)
    sent = parse(b"SELECT 1", "q") + SYNC
    assert protocol.client_bytes(sent).to_upstream == sent
    answered(protocol, backend.ErrorResponse.build("ERROR", "42P05", 'prepared statement "q" already exists').encode())
    assert refusal(protocol, protocol.client_bytes(run("q")).to_upstream).code == "42501"


def test_a_close_skipped_after_an_error_does_not_hide_what_it_holds(policies: tuple[Policy, Policy]) -> None:
    protocol = prepared_before_the_reload(policies)
    # A refused Parse first: the server skips the Close and the new Parse of the name.
    sent = protocol.client_bytes(parse(b"SELECT * FROM orders", "other") + frontend.Close("S", "q").encode()
                                 + parse(b"SELECT 1", "q") + SYNC).to_upstream
    assert refusal(protocol, sent).code == "42501"
    assert refusal(protocol, protocol.client_bytes(run("q")).to_upstream).code == "42501"


def test_a_close_sent_after_the_error_came_back_counts_as_skipped(policies: tuple[Policy, Policy]) -> None:
    protocol = prepared_before_the_reload(policies)
    first = protocol.client_bytes(parse(b"SELECT 1 FROM nowhere_at_all", "x")).to_upstream  # no Sync yet
    protocol.upstream_bytes(backend.ErrorResponse.build("ERROR", "42P01", "no such relation").encode())
    # The server now skips everything up to Sync, this Close and Parse too.
    second = frontend.Close("S", "q").encode() + parse(b"SELECT 1", "q") + SYNC
    assert protocol.client_bytes(second).to_upstream == second and first
    answered(protocol)
    assert refusal(protocol, protocol.client_bytes(run("q")).to_upstream).code == "42501"


def test_a_close_that_succeeded_frees_the_name(policies: tuple[Policy, Policy]) -> None:
    protocol = prepared_before_the_reload(policies)
    sent = frontend.Close("S", "q").encode() + SYNC
    assert protocol.client_bytes(sent).to_upstream == sent
    answered(protocol, backend.CloseComplete().encode())
    again = parse(b"SELECT 1", "q") + SYNC
    assert protocol.client_bytes(again).to_upstream == again
    answered(protocol, backend.ParseComplete().encode())
    assert protocol.client_bytes(run("q")).to_upstream == run("q")


def test_sql_execute_is_decided_again_even_after_a_failed_prepare_of_its_name(
        policies: tuple[Policy, Policy]) -> None:
    guard = SessionGuard(policies[0], ["analysts"], data.READER, lambda: CATALOG)
    assert guard.check_query("PREPARE x AS SELECT * FROM orders")[0].allowed
    guard.request_sent()
    guard.answered_ready(idle=True)
    guard.reconfigure(policies[1], ["analysts"])
    assert not guard.check_query("EXECUTE x")[0].allowed
    guard.request_sent()
    guard.answered_ready(idle=True)
    # PREPARE of a taken name fails upstream: x still holds what it held.
    assert guard.check_query("PREPARE x AS SELECT 1")[0].allowed
    guard.request_sent()
    guard.answered_error()
    guard.answered_ready(idle=True)
    assert guard.check_query("EXECUTE x")[0].reason == "role analysts may not read public.orders"
    # Once DEALLOCATE x is answered, and x prepared again, EXECUTE runs the new one.
    for sql in ("DEALLOCATE x", "PREPARE x AS SELECT 1"):
        assert guard.check_query(sql)[0].allowed
        guard.request_sent()
        guard.answered_ready(idle=True)
    assert guard.check_query("EXECUTE x")[0].allowed


def test_held_statements_follow_what_the_server_ran(policies: tuple[Policy, Policy]) -> None:
    guard = SessionGuard(policies[0], ["analysts"], data.READER, lambda: CATALOG)
    held = guard.prepared

    def answered(error: bool = False) -> None:
        guard.request_sent()
        if error:
            guard.answered_error()
        guard.answered_ready(idle=True)

    old, new, other = (Named(None, text, 0) for text in ("old", "new", "other"))
    held.prepare("a", old, replaces=True)
    assert held.candidates("a") == (old,)  # the same request: it ran if anything after it runs
    guard.request_sent()
    assert held.candidates("a") == (old,)  # not answered yet: it may or may not have run
    guard.answered_ready(idle=True)
    held.prepare("a", new, replaces=True)
    guard.request_sent()
    assert held.candidates("a") == (old, new)
    guard.answered_ready(idle=True)
    assert held.candidates("a") == (new,)
    # A PREPARE may fail (the name is taken): the name may hold either.
    held.prepare("a", other, replaces=False)
    answered()
    assert held.candidates("a") == (new, other)
    held.close("*")
    answered(error=True)  # DEALLOCATE ALL in a failed transaction
    assert held.candidates("a") == (new, other)
    held.close("*")
    answered()
    assert held.candidates("a") == ()


def test_fetch_from_a_cursor_declared_before_the_reload_is_decided_again(policies: tuple[Policy, Policy]) -> None:
    guard = SessionGuard(policies[0], ["analysts"], data.READER, lambda: CATALOG)
    for sql in ("BEGIN", "DECLARE o CURSOR FOR SELECT * FROM orders", "DECLARE c CURSOR FOR SELECT 1"):
        assert guard.check_query(sql)[0].allowed
        guard.request_sent()
        guard.answered_ready(idle=False)
    guard.reconfigure(policies[1], ["analysts"])
    refused = guard.check_query("FETCH 10 FROM o")[0]
    assert refused.message == \
        "pgguard: FETCH refused: role analysts may not read public.orders (rule roles.analysts.read)"
    assert refused.hint == 'cursor "o" was opened before a configuration reload, and is decided again under' \
        " the new one"
    assert not guard.check_query("MOVE 1 IN o")[0].allowed
    assert guard.check_query("FETCH 10 FROM c")[0].allowed
    # Closed, and declared again under the new policy, the name is free.
    for sql in ("CLOSE o", "DECLARE o CURSOR FOR SELECT * FROM customers"):
        assert guard.check_query(sql)[0].allowed
        guard.request_sent()
        guard.answered_ready(idle=False)
    assert guard.check_query("FETCH 10 FROM o")[0].allowed


def test_a_portal_opened_before_the_reload_is_decided_again(policies: tuple[Policy, Policy]) -> None:
    protocol = session(policies[0])
    in_transaction = backend.ReadyForQuery("T").encode()
    sent = (parse(ORDERS, "orders") + frontend.Bind("p", "orders", [], [], []).encode()
            + parse(b"SELECT 1", "one") + frontend.Bind("q", "one", [], [], []).encode() + SYNC)
    assert protocol.client_bytes(sent).to_upstream == sent
    protocol.upstream_bytes((backend.ParseComplete().encode() + backend.BindComplete().encode()) * 2
                            + in_transaction)
    reload(protocol, policies[1])
    more = frontend.Execute("p", 10).encode() + SYNC
    error = refusal(protocol, protocol.client_bytes(more).to_upstream, backend.ReadyForQuery("E").encode())
    assert (error.code, error.message) == \
        ("42501", "pgguard: SELECT refused: role analysts may not read public.orders (rule roles.analysts.read)")
    assert error.fields["H"].startswith('cursor "p" was opened before a configuration reload')
    protocol.client_bytes(query(b"ROLLBACK TO SAVEPOINT s"))
    protocol.upstream_bytes(backend.CommandComplete("ROLLBACK").encode() + in_transaction)
    # What the new policy allows runs on.
    allowed = frontend.Execute("q", 10).encode() + SYNC
    assert protocol.client_bytes(allowed).to_upstream == allowed
    protocol.upstream_bytes(backend.PortalSuspended().encode() + in_transaction)


def test_the_unnamed_portal_bound_before_the_reload_is_not_run_after_it(policies: tuple[Policy, Policy]) -> None:
    protocol = session(policies[0])
    in_transaction = backend.ReadyForQuery("T").encode()
    sent = parse(b"SELECT 1") + bind() + SYNC
    assert protocol.client_bytes(sent).to_upstream == sent
    protocol.upstream_bytes(backend.ParseComplete().encode() + backend.BindComplete().encode() + in_transaction)
    reload(protocol, policies[1])
    more = frontend.Execute("", 10).encode() + SYNC
    error = refusal(protocol, protocol.client_bytes(more).to_upstream, in_transaction)
    assert error.message == "pgguard: statement refused: the unnamed portal was bound before a configuration" \
        " reload, and pgguard cannot tell what it holds"
    # A Bind of it that fails leaves it as it was.
    failed = bind() + SYNC
    assert protocol.client_bytes(failed).to_upstream == failed
    protocol.upstream_bytes(backend.ErrorResponse.build("ERROR", "08P01", "bind message has 1 parameter").encode()
                            + in_transaction)
    assert refusal(protocol, protocol.client_bytes(more).to_upstream, in_transaction).code == "42501"
    # Bound again after the reload, it runs, in later requests too.
    again = bind() + more
    assert protocol.client_bytes(again).to_upstream == again
    protocol.upstream_bytes(backend.BindComplete().encode() + backend.PortalSuspended().encode() + in_transaction)
    assert protocol.client_bytes(more).to_upstream == more
    protocol.upstream_bytes(backend.PortalSuspended().encode() + in_transaction)
    # Once out of the transaction, no portal of before the reload is left.
    protocol.client_bytes(query(b"COMMIT"))
    protocol.upstream_bytes(backend.CommandComplete("COMMIT").encode() + READY)
    assert protocol.client_bytes(more).to_upstream == more


def test_a_name_given_too_many_texts_holds_one_pgguard_cannot_tell(policies: tuple[Policy, Policy]) -> None:
    guard = SessionGuard(policies[0], ["analysts"], data.READER, lambda: CATALOG)
    for n in range(20):  # each PREPARE fails upstream (the name is taken), so x may hold any of them
        assert guard.check_query(f"PREPARE x AS SELECT {n}")[0].allowed
        guard.request_sent()
        guard.answered_error()
        guard.answered_ready(idle=True)
    assert len(guard.prepared.candidates("x")) == 1
    assert guard.check_query("EXECUTE x")[0].reason == \
        "EXECUTE of 'x', which may hold more statements than pgguard follows"


def test_cursors_not_with_hold_are_forgotten_out_of_a_transaction(policies: tuple[Policy, Policy]) -> None:
    guard = SessionGuard(policies[0], ["analysts"], data.READER, lambda: CATALOG)
    for sql in ("DECLARE kept CURSOR WITH HOLD FOR SELECT * FROM orders", "DECLARE gone CURSOR FOR SELECT 1"):
        assert guard.check_query(sql)[0].allowed
        guard.request_sent()
        guard.answered_ready(idle=False)
    guard.answered_ready(idle=True)
    assert guard.portals.candidates("gone") == ()
    assert len(guard.portals.candidates("kept")) == 1


def test_a_bind_after_a_snapshot_shows_changed_objects_is_decided_again(policies: tuple[Policy, Policy]) -> None:
    """The server plans a prepared statement again after DDL on what it uses (a trigger made since runs):
    a snapshot that shows a change, whoever made it, has it decided again; one that finds none does not."""
    first = versioned(CATALOG, None)
    snapshots = [first]
    guard = SessionGuard(policies[0], ["analysts"], data.READER, lambda: snapshots[-1])
    protocol = SessionProtocol(MessageFramer(), MessageFramer(), guard)
    sent = parse(ORDERS, "q") + SYNC
    assert protocol.client_bytes(sent).to_upstream == sent
    answered(protocol, backend.ParseComplete().encode())
    (held,) = guard.prepared.candidates("q")

    snapshots.append(versioned(replace(CATALOG, loaded_at=first.loaded_at + 60), first))  # read again: the same
    assert snapshots[-1].version == first.version
    assert not guard.replanning and not guard.stale(held)

    changed = Catalog.from_rows([("s", "public", ""), ("s", "shadow", ""), ("r", "pg_catalog", "pg_class"),
                                 ("f", "pg_catalog", "count")])
    snapshots.append(versioned(changed, snapshots[-1]))
    assert snapshots[-1].version > first.version
    assert guard.replanning and guard.stale(held)
    sent = run("q")
    assert protocol.client_bytes(sent).to_upstream == sent  # still allowed: decided again, then known allowed
    answered(protocol, backend.BindComplete().encode(), backend.CommandComplete("SELECT 0").encode())
    (held,) = guard.prepared.candidates("q")
    assert not guard.stale(held)
