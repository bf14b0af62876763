"""The verifier: every change, removal, reordering or cut is found, and named exactly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pgguard.audit import records
from pgguard.audit.chain import FRAME, Chain, Signer, frame
from pgguard.audit.records import Limits, RowCapture
from pgguard.audit.verify import LogCorrupt, public_keys_from_jwks, read_records, verify
from pgguard.config import IdentityConfig, SigningKey
from pgguard.identity import Identity
from pgguard.identity.tokens import TokenService, generate_signing_key

SESSION = "6a1f0c2e9b7d4e55"
KEY = Ed25519PrivateKey.generate()
KEYS: dict[str, Ed25519PublicKey] = {"k1": KEY.public_key()}
LIMITS = Limits()


def session_records() -> list[records.Record | None]:
    """A short session: header, a statement and its result, a checkpoint, a refusal, a notice,
    the close record, and the final checkpoint (added by `write_log`)."""
    identity = Identity(provider="pgguard", issuer="pgguard-test", subject="alice", username="alice",
                        groups=("analysts",), jti="j1", issued_at=1.0, expires_at=2.0, valid_until=3.0,
                        roles=("analyst",))
    rows = RowCapture(LIMITS)
    rows.add([b"1", b"a***@example.com"])
    return [
        records.header(session_id=SESSION, identity=identity, client_address="127.0.0.1:40000",
                       application_name="psql", target="demo", tls=None, at=100.0),
        records.statement(protocol="simple", sql="select id, email from customers limit 1", decision="allowed",
                          classes=("select",), limits=LIMITS, at=101.0),
        records.result(statement=1, columns=[("id", 23, 0), ("email", 25, 0)], rows=rows, command_tag="SELECT 1",
                       duration_ms=0.8, limits=LIMITS, at=101.5),
        None,  # a checkpoint here
        records.statement(protocol="simple", sql="delete from orders", decision="refused", rule="roles.analyst",
                          reason="analysts write nothing", limits=LIMITS, at=102.0),
        records.notice(statement=4, severity="WARNING", sqlstate="01000", message="pgguard: refused", limits=LIMITS,
                       at=102.1),
        records.close(reason="client closed", bytes_in=120, bytes_out=340, counts={"statements": 2, "refused": 1},
                      at=103.0),
    ]


def write_log(directory: Path, signer: Signer = Signer("k1", KEY)) -> tuple[Path, list[int]]:
    """The session's log and the offset of each frame (plus the file's end)."""
    chain = Chain(SESSION)
    sealed = [chain.checkpoint(signer, 101.9) if record is None else chain.append(record)
              for record in session_records()]
    sealed.append(chain.checkpoint(signer, 103.1))
    offsets = [0]
    for item in sealed:
        offsets.append(offsets[-1] + len(item))
    path = directory / f"{SESSION}.pgglog"
    path.write_bytes(b"".join(sealed))
    return path, offsets


def record_at(offsets: list[int], position: int) -> int:
    return max(index for index, offset in enumerate(offsets[:-1]) if offset <= position)


def test_an_untouched_log_verifies_and_reads_back(tmp_path: Path) -> None:
    path, offsets = write_log(tmp_path)
    report = verify(path, KEYS)
    assert report.ok, report.problems
    assert (report.records, report.signed, report.closed, report.session_id) == (8, 8, True, SESSION)
    entries = list(read_records(path))
    assert [entry.offset for entry in entries] == offsets[:-1]
    assert [entry.end for entry in entries] == offsets[1:]
    assert [entry.record["type"] for entry in entries] == ["header", "statement", "result", "checkpoint",
                                                          "statement", "notice", "close", "checkpoint"]
    assert [entry.record["seq"] for entry in entries] == list(range(8))
    result = entries[2].record
    assert result["rows"] == [[b"1", b"a***@example.com"]] and result["columns"] == [["id", 23, 0], ["email", 25, 0]]
    assert entries[4].record["reason"] == "analysts write nothing"


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_flipping_any_byte_is_found_in_the_record_that_holds_it(tmp_path: Path, mask: int) -> None:
    path, offsets = write_log(tmp_path)
    original = path.read_bytes()
    for position in range(len(original)):
        damaged = bytearray(original)
        damaged[position] ^= mask
        path.write_bytes(damaged)
        report = verify(path, KEYS)
        assert report.error is not None, position
        assert (report.error.index, report.error.offset) == (record_at(offsets, position),
                                                             offsets[record_at(offsets, position)]), position


def test_changing_any_payload_byte_behind_correct_checksums_is_found_in_that_record(tmp_path: Path) -> None:
    """Someone who knows the framing writes correct CRCs: the hashes and signatures still catch it."""
    path, offsets = write_log(tmp_path)
    original = path.read_bytes()
    for index in range(len(offsets) - 1):
        start, end = offsets[index], offsets[index + 1]
        payload = original[start + FRAME.size:end]
        for position in range(len(payload)):
            changed = bytearray(payload)
            changed[position] ^= 0x01
            path.write_bytes(original[:start] + frame(bytes(changed)) + original[end:])
            report = verify(path, KEYS)
            assert report.error is not None, (index, position)
            assert report.error.index == index, (index, position, report.error)


def test_an_altered_record_with_the_chain_rebuilt_after_it_fails_the_next_signature(tmp_path: Path) -> None:
    """Without the key, rebuilding every later hash still leaves the checkpoint's signature."""
    entries = [entry.record for entry in read_records(write_log(tmp_path)[0])]
    entries[1]["sql"] = "select 1"
    chain = Chain(SESSION)
    forged = []
    for record in entries:
        record.pop("seq"), record.pop("prev")
        forged.append(chain.append(dict(record)))
    path = tmp_path / f"{SESSION}.pgglog"
    path.write_bytes(b"".join(forged))
    report = verify(path, KEYS)
    assert report.error is not None
    assert (report.error.kind, report.error.index) == ("signature", 3)
    assert report.records == 3


@pytest.mark.parametrize("removed", range(8))
def test_removing_a_record_is_found_where_it_is_missing(tmp_path: Path, removed: int) -> None:
    path, offsets = write_log(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:offsets[removed]] + data[offsets[removed + 1]:])
    report = verify(path, KEYS)
    if removed == 7:  # the final checkpoint: what is left verifies, but the close is not signed
        assert report.error is None and report.closed
        assert [(problem.kind, problem.index) for problem in report.problems] == [("unsigned", 4)]
    else:
        assert report.error is not None
        assert (report.error.kind, report.error.index, report.error.offset) == (
            "header" if removed == 0 else "seq", removed, offsets[removed])


@pytest.mark.parametrize("first", range(1, 7))
def test_swapping_two_records_is_found_at_the_first_of_them(tmp_path: Path, first: int) -> None:
    path, offsets = write_log(tmp_path)
    data = path.read_bytes()
    a, b, c = offsets[first], offsets[first + 1], offsets[first + 2]
    path.write_bytes(data[:a] + data[b:c] + data[a:b] + data[c:])
    report = verify(path, KEYS)
    assert report.error is not None
    assert (report.error.kind, report.error.index, report.error.offset) == ("seq", first, a)


def test_a_cut_anywhere_in_the_last_record_is_a_torn_tail_after_records_that_verify(tmp_path: Path) -> None:
    path, offsets = write_log(tmp_path)
    data = path.read_bytes()
    last = offsets[-2]
    for cut in range(last + 1, len(data)):
        path.write_bytes(data[:cut])
        report = verify(path, KEYS)
        assert report.error is None, cut
        assert report.torn is not None and (report.torn.index, report.torn.offset) == (7, last), cut
        assert (report.records, report.closed, report.signed) == (7, True, 4)
        assert [problem.kind for problem in report.problems] == ["torn", "unsigned"]
        assert len(list(read_records(path))) == 7


def test_a_crashed_session_is_reported_open_with_its_records_intact(tmp_path: Path) -> None:
    path, offsets = write_log(tmp_path)
    path.write_bytes(path.read_bytes()[:offsets[5]] + b"\x00" * 100)  # a power loss: zeros after the refusal
    report = verify(path, KEYS)
    assert report.error is None and not report.ok
    assert [(problem.kind, problem.index) for problem in report.problems] == [("torn", 5), ("open", 5),
                                                                               ("unsigned", 4)]


def test_a_forged_signature_is_named(tmp_path: Path) -> None:
    path, offsets = write_log(tmp_path)
    data = path.read_bytes()
    checkpoint = records.decode(data[offsets[3] + FRAME.size:offsets[4]])
    checkpoint["sig"] = bytes(64)
    path.write_bytes(data[:offsets[3]] + frame(records.encode(checkpoint)) + data[offsets[4]:])
    report = verify(path, KEYS)
    assert report.error is not None and (report.error.kind, report.error.index) == ("signature", 3)


def test_keys_are_matched_by_kid(tmp_path: Path) -> None:
    path, _ = write_log(tmp_path)
    other = Ed25519PrivateKey.generate().public_key()
    wrong = verify(path, {"k1": other})  # the right kid, another key
    assert wrong.error is not None and (wrong.error.kind, wrong.error.index) == ("signature", 3)
    unknown = verify(path, {"k2": KEY.public_key()})  # the right key under another kid
    assert unknown.error is not None and (unknown.error.kind, unknown.error.index) == ("unknown-key", 3)
    assert "'k1'" in unknown.error.detail


def test_the_gateways_jwks_verifies_its_logs(tmp_path: Path) -> None:
    key_file = tmp_path / "signing.pem"
    generate_signing_key(key_file)
    signing_key = SigningKey("gw-1", key_file)
    config = IdentityConfig(issuer="pgguard-test", audience="pgguard", username_claim="sub", groups_claim="groups",
                            signing_keys=(signing_key,), leeway=30, providers=(),
                            revocation_file=tmp_path / "revoked.json", expiry_grace=0)
    path, _ = write_log(tmp_path, Signer.load(signing_key))
    keys = public_keys_from_jwks(TokenService(config).jwks())
    assert list(keys) == ["gw-1"]
    assert verify(path, keys).ok


def test_a_log_under_another_sessions_name_is_refused(tmp_path: Path) -> None:
    path, _ = write_log(tmp_path)
    renamed = path.rename(tmp_path / "0000000000000000.pgglog")
    report = verify(renamed, KEYS)
    assert report.error is not None and (report.error.kind, report.error.index) == ("session", 0)


def test_a_record_appended_after_the_final_checkpoint_is_named(tmp_path: Path) -> None:
    path, offsets = write_log(tmp_path)
    last = records.decode(path.read_bytes()[offsets[-2] + FRAME.size:])
    chain = Chain(SESSION)
    chain.seq, chain.prev = 8, hashlib.sha256(records.encode(last)).digest()
    with path.open("ab") as file:
        file.write(chain.append({"type": "statement", "at": 104.0, "sql": "drop table orders"}))
    report = verify(path, KEYS)
    assert report.error is not None and (report.error.kind, report.error.index) == ("order", 8)


def test_a_file_being_written_is_read_as_far_as_it_is_complete(tmp_path: Path) -> None:
    path, offsets = write_log(tmp_path)
    data = path.read_bytes()
    growing = tmp_path / "growing.pgglog"
    growing.write_bytes(data[:offsets[3] + 5])
    first = list(read_records(growing))
    assert [entry.record["seq"] for entry in first] == [0, 1, 2]
    growing.write_bytes(data)
    rest = list(read_records(growing, first[-1].end))
    assert [entry.record["seq"] for entry in rest] == [3, 4, 5, 6, 7]


def test_reading_stops_at_damage_with_its_offset(tmp_path: Path) -> None:
    path, offsets = write_log(tmp_path)
    damaged = bytearray(path.read_bytes())
    damaged[offsets[2] + FRAME.size + 3] ^= 0xFF
    path.write_bytes(damaged)
    with pytest.raises(LogCorrupt) as caught:
        list(read_records(path))
    assert caught.value.offset == offsets[2]
    # Frames whose checksums hold but which are no records are damage too.
    for payload in (records.encode([1, 2]), records.encode({"type": "statement"}), b"\xc1"):
        path.write_bytes(frame(payload))
        with pytest.raises(LogCorrupt):
            list(read_records(path))
