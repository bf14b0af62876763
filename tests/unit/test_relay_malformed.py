"""Malformed messages, sans I/O: whatever the bytes, the session protocol answers with a FATAL
08P01 and ends the session, or goes on; it never raises (which the reactor would turn into an
internal error) and never passes on what came with a malformed message.

The messages are real ones of every kind a client sends after login, and a server's answer to a
query, each batch with one of them mutated (bytes changed, cut out or put in, with its length
field kept right or left wrong), from fixed seeds.
"""

from __future__ import annotations

import random

import pytest

from helpers import offline_demo_config
from pgguard.config import Config, load
from pgguard.masking.session import MaskingConfig
from pgguard.policy.catalog import Catalog
from pgguard.policy.guard import Policy, SessionGuard
from pgguard.relay.protocol import SessionProtocol
from pgguard.wire import backend, frontend
from pgguard.wire.backend import FieldDescription
from pgguard.wire.codec import message
from pgguard.wire.framing import MessageFramer

CATALOG = Catalog.from_rows([("s", "public", ""), ("r", "pg_catalog", "pg_class"), ("f", "pg_catalog", "count")])
TEXTS = [b"SELECT relname FROM pg_class WHERE oid = $1", b"SELECT 1", b"BEGIN", b"COMMIT",
         b"DECLARE c CURSOR FOR SELECT relname FROM pg_class", b"FETCH 5 FROM c", b"PREPARE p AS SELECT 1",
         b"EXECUTE p", b"COPY (SELECT 1) TO STDOUT"]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return load(offline_demo_config(tmp_path_factory.mktemp("malformed")))


def analyst_session(config: Config, policy: Policy, masking: MaskingConfig) -> SessionProtocol:
    role = config.roles["analysts"]
    guard = SessionGuard(policy, [role.name], role.login, lambda: CATALOG)
    return SessionProtocol(MessageFramer(), MessageFramer(), guard,
                           masking=masking.for_session([role], guard, lambda: CATALOG))


def some_message(rng: random.Random) -> bytes:
    text = rng.choice(TEXTS)
    kind = rng.choice("QPBDECSHdcfF")
    if kind == "Q":
        return message(b"Q", text + b"\0")
    if kind == "P":
        return frontend.Parse(rng.choice(["", "s1"]), text.decode(), [23]).encode()
    if kind == "B":
        count = rng.randint(0, 2)
        return frontend.Bind(rng.choice(["", "p1"]), rng.choice(["", "s1"]), [0, 1][:count],
                             [b"42", None][:count], [rng.choice([0, 1])]).encode()
    if kind == "D":
        return frontend.Describe(rng.choice("SP"), rng.choice(["", "s1", "p1"])).encode()
    if kind == "E":
        return frontend.Execute(rng.choice(["", "p1"]), rng.randint(0, 5)).encode()
    if kind == "C":
        return frontend.Close(rng.choice("SP"), "s1").encode()
    if kind == "F":  # FunctionCall: one text argument, a text result
        return message(b"F", b"\0\0\0\x17\0\1\0\0\0\1\0\0\0\1x\0\0")
    return message(kind.encode(), {"S": b"", "H": b"", "d": b"1\t2\n", "c": b"", "f": b"oops\0"}[kind])


def mutated(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not out:
            break
        at = rng.randrange(len(out))
        change = rng.randrange(4)
        if change == 0:
            out[at] = rng.randrange(256)
        elif change == 1:
            del out[at:at + rng.randint(1, 4)]
        elif change == 2:
            out[at:at] = rng.randbytes(rng.randint(1, 4))
        else:
            out[at] = 0
    if rng.random() < 0.5 and len(out) >= 5:  # the length field kept right: the body is what is wrong
        out[1:5] = (len(out) - 1).to_bytes(4, "big")
    return bytes(out)


@pytest.mark.parametrize("first_seed", range(0, 3000, 500))
def test_mutated_messages_end_the_session_cleanly_or_pass(config: Config, first_seed: int) -> None:
    policy, masking = Policy(config), MaskingConfig(config)
    violations = 0
    for seed in range(first_seed, first_seed + 500):
        rng = random.Random(seed)
        batch = [some_message(rng) for _ in range(rng.randint(1, 6))]
        bad = rng.randrange(len(batch))
        batch[bad] = mutated(rng, batch[bad])
        out = analyst_session(config, policy, masking).client_bytes(b"".join(batch))  # must not raise
        if out.close is not None and out.close.startswith("client protocol violation"):
            violations += 1
            assert out.to_upstream == b"" and out.to_client.startswith(b"E"), seed
            assert b"08P01" in out.to_client and b"pgguard: protocol violation: " in out.to_client, seed
    assert violations > 50  # the mutations do reach the decoders, not only the framing


def server_answer(rng: random.Random) -> list[bytes]:
    relname = rng.choice([b"pg_class", b"see 4111 1111 1111 1111"])
    return [m.encode() for m in (backend.RowDescription([FieldDescription("relname", 1259, 2, 19, 64, -1, 0)]),
                                 backend.DataRow([relname]), backend.CommandComplete("SELECT 1"),
                                 backend.ReadyForQuery("I"))]


def test_mutated_server_messages_end_the_session_cleanly_or_pass(config: Config) -> None:
    policy, masking = Policy(config), MaskingConfig(config)
    violations = 0
    for seed in range(1000):
        rng = random.Random(seed)
        session = analyst_session(config, policy, masking)
        session.client_bytes(message(b"Q", b"SELECT relname FROM pg_class\0"))
        answer = server_answer(rng)
        bad = rng.randrange(len(answer))
        answer[bad] = mutated(rng, answer[bad])
        out = session.upstream_bytes(b"".join(answer))  # must not raise
        if out.close is not None and out.close.startswith("target protocol violation"):
            violations += 1
            assert out.to_client.startswith(b"E") and b"sent an invalid message" in out.to_client, seed
            assert b"4111" not in out.to_client, seed
    assert violations > 50
