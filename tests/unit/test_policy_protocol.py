"""The session protocol's policy path, sans I/O: what goes upstream for a refused or allowed statement.

The upstream must read exactly the text pgguard read: the same bytes, in
the session's client_encoding, and no text whose encoding is in doubt.
"""

from __future__ import annotations

import re

import pytest

from helpers import offline_demo_config
from pgguard.config import load
from pgguard.demo import data
from pgguard.policy.catalog import Catalog
from pgguard.policy.guard import Policy, SessionGuard
from pgguard.relay.protocol import SessionProtocol
from pgguard.wire import backend, frontend
from pgguard.wire.codec import message
from pgguard.wire.framing import MessageFramer

CATALOG = Catalog.from_rows([("s", "public", ""), ("r", "pg_catalog", "pg_class"),
                             ("f", "pg_catalog", "set_config"), ("f", "pg_catalog", "count")])
STAND_IN = re.compile(rb"SELECT 'pgguard-refusal:([0-9a-f]{16})'::pg_catalog\.int4")


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    return Policy(load(offline_demo_config(tmp_path_factory.mktemp("protocol"))))


def session(policy: Policy, encoding: str = "utf-8") -> SessionProtocol:
    guard = SessionGuard(policy, ["analysts"], data.READER, lambda: CATALOG)
    return SessionProtocol(MessageFramer(), MessageFramer(), guard, encoding)


def query(text: bytes) -> bytes:
    return message(b"Q", text + b"\0")


def parse(text: bytes, name: bytes = b"") -> bytes:
    return message(b"P", name + b"\0" + text + b"\0" + b"\0\0")


def upstream_error(protocol: SessionProtocol, sent: bytes) -> backend.ErrorResponse:
    """Answer the stand-in in `sent` as PostgreSQL would; return what the client gets."""
    match = STAND_IN.search(sent)
    assert match, sent
    error = backend.ErrorResponse.build(
        "ERROR", "22P02", f'invalid input syntax for type integer: "pgguard-refusal:{match[1].decode()}"')
    out = protocol.upstream_bytes(error.encode() + backend.ReadyForQuery("I").encode())
    framer = MessageFramer()
    _, frames = framer.feed(out.to_client)
    first = backend.decode_backend(frames[0])
    assert isinstance(first, backend.ErrorResponse)
    return first


def test_an_allowed_query_goes_up_as_the_very_bytes_sent(policy: Policy) -> None:
    protocol = session(policy, "shift_jis")
    sent = query("SELECT 'ぁ' FROM orders".encode("shift_jis"))
    assert protocol.client_bytes(sent).to_upstream == sent


def test_statements_kept_before_a_refusal_keep_their_bytes(policy: Policy) -> None:
    protocol = session(policy, "shift_jis")
    kept = "SELECT 'ぁ' AS kana; ".encode("shift_jis")
    out = protocol.client_bytes(query(kept + b"DELETE FROM orders"))
    assert out.to_upstream.startswith(b"Q") and out.to_upstream[5:].startswith(kept)
    assert STAND_IN.fullmatch(out.to_upstream[5 + len(kept):-1])
    error = upstream_error(protocol, out.to_upstream)
    assert error.code == "42501" and error.message.startswith("pgguard: DELETE refused")


def test_parse_is_decoded_in_the_client_encoding(policy: Policy) -> None:
    """C3 81 5C is "ﾃ―" in SJIS: no backslash, so the string ends and set_config is called."""
    protocol = session(policy, "shift_jis")
    hidden = b"SELECT E'\xc3\x81\\', set_config($$default_transaction_read_only$$, $$off$$, false) --'"
    out = protocol.client_bytes(parse(hidden) + frontend.Sync().encode())
    assert hidden not in out.to_upstream and STAND_IN.search(out.to_upstream)
    assert "may not write anything" in upstream_error(protocol, out.to_upstream).message


def test_parse_that_does_not_decode_is_refused(policy: Policy) -> None:
    protocol = session(policy)
    out = protocol.client_bytes(parse(b"SELECT '\xff'") + frontend.Sync().encode())
    assert b"\xff" not in out.to_upstream
    assert upstream_error(protocol, out.to_upstream).message == \
        "pgguard: statement refused: the statement is not valid utf-8"


def test_non_ascii_text_waits_for_a_client_encoding_change_to_be_answered(policy: Policy) -> None:
    protocol = session(policy)
    out = protocol.client_bytes(query(b"SET client_encoding = 'SJIS'") + query("SELECT 'é'".encode())
                                + query(b"SELECT 'ascii'"))
    sent = out.to_upstream
    assert query(b"SET client_encoding = 'SJIS'") in sent and query(b"SELECT 'ascii'") in sent
    assert "SELECT 'é'".encode() not in sent and STAND_IN.search(sent)
    # Once the server has answered the SET, the encoding is known again.
    protocol.upstream_bytes(backend.ParameterStatus("client_encoding", "SJIS").encode()
                            + backend.ReadyForQuery("I").encode())
    assert "may be changing" in upstream_error(protocol, sent).message
    sjis = query("SELECT 'ぁ'".encode("shift_jis"))
    assert protocol.client_bytes(sjis).to_upstream == sjis


def test_binding_a_statement_that_changes_client_encoding_counts_too(policy: Policy) -> None:
    protocol = session(policy)
    named = parse(b"SET client_encoding = 'LATIN1'", b"enc") + frontend.Sync().encode()
    assert protocol.client_bytes(named).to_upstream == named
    protocol.upstream_bytes(backend.ReadyForQuery("I").encode())
    batch = (frontend.Bind("", "enc", [], [], []).encode() + frontend.Execute("", 0).encode()
             + parse("SELECT 'é'".encode()) + frontend.Sync().encode())
    assert STAND_IN.search(protocol.client_bytes(batch).to_upstream)
    # Closed, it changes nothing any more.
    protocol.upstream_bytes(backend.ReadyForQuery("I").encode())
    protocol.client_bytes(frontend.Close("S", "enc").encode() + frontend.Sync().encode())
    protocol.upstream_bytes(backend.ReadyForQuery("I").encode())
    batch = frontend.Bind("", "enc", [], [], []).encode() + parse("SELECT 'é'".encode()) + frontend.Sync().encode()
    assert protocol.client_bytes(batch).to_upstream == batch
