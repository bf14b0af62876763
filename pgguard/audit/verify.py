"""Reading session logs, and verifying that one is complete and unaltered.

`verify()` checks every frame's checksums, every record's position and hash link, and every
checkpoint's signature, and reports the first record that fails, by index and byte offset;
nothing after it is trusted. The end of a log is judged apart: a torn tail (a crash
mid-write), a missing close record (a session still open, or a gateway that died) and records
after the last valid checkpoint (chained, but not signed) are reported, while the records
before them still verify.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pgguard.audit.chain import FRAME, HASH_SIZE, FrameError, frames, genesis, signature_valid
from pgguard.audit.records import FORMAT_VERSION, SUFFIX, Record, decode


class LogCorrupt(ValueError):
    """A log's bytes at `offset` are damaged: neither a record nor a torn tail."""

    def __init__(self, offset: int, detail: str) -> None:
        super().__init__(f"byte {offset}: {detail}")
        self.offset = offset
        self.detail = detail


class Entry(NamedTuple):
    offset: int
    # Where the next record starts: where to read on from, in a log still being written.
    end: int
    record: Record


def _decode(offset: int, payload: memoryview) -> Record:
    """The record in `payload`, with the fields every record has; LogCorrupt otherwise."""
    try:
        record = decode(payload)
    except ValueError as error:
        raise LogCorrupt(offset, str(error)) from None
    prev = record.get("prev")
    if not (isinstance(record.get("type"), str) and isinstance(record.get("seq"), int)
            and isinstance(prev, bytes) and len(prev) == HASH_SIZE):
        raise LogCorrupt(offset, "a record without a type, seq and prev")
    return record


def _entries(data: bytes, offset: int) -> Iterator[Entry]:
    """The records of `data`; FrameError or LogCorrupt where they stop."""
    for start, payload in frames(data, offset):
        yield Entry(start, start + FRAME.size + len(payload), _decode(start, payload))


def read_records(path: Path, offset: int = 0) -> Iterator[Entry]:
    """The complete records of a log from `offset` on, without verifying them. Stops quietly
    at a torn tail, which is also where a log still being written currently ends: call again
    from the last entry's `end` for more. Raises LogCorrupt at damage."""
    try:
        yield from _entries(Path(path).read_bytes(), offset)
    except FrameError as error:
        if not error.torn:
            raise LogCorrupt(error.offset, error.detail) from None


def public_keys_from_jwks(jwks: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    """The Ed25519 keys of a JWKS, by kid: the gateway serves its signing keys at
    /.well-known/jwks.json, so that an auditor can verify logs without its private keys."""
    keys = {}
    for jwk in jwks.get("keys", []):
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and "kid" in jwk:
            raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
            keys[jwk["kid"]] = Ed25519PublicKey.from_public_bytes(raw)
    return keys


@dataclass(frozen=True)
class Problem:
    kind: str  # damaged, malformed, header, format, session, seq, hash, order, unknown-key,
    #            signature; at the end: torn, open, unsigned
    index: int  # the record's position in the file: 0 is the header
    offset: int  # the byte where its frame starts
    detail: str

    def __str__(self) -> str:
        return f"record {self.index} at byte {self.offset}: {self.detail}"


@dataclass
class Report:
    path: Path
    session_id: str | None = None
    # Records that verified, from the first on, and the byte where they end.
    records: int = 0
    end: int = 0
    # How many of them a valid checkpoint covers (always a prefix), and where those end.
    signed: int = 0
    signed_end: int = 0
    closed: bool = False
    # The first bad record: nothing from it on is trusted.
    error: Problem | None = None
    # An unfinished record at the end of the file.
    torn: Problem | None = None

    @property
    def problems(self) -> list[Problem]:
        """What is wrong: the first bad record, or else what is wrong with the end."""
        if self.error is not None:
            return [self.error]
        found = [] if self.torn is None else [self.torn]
        if not self.closed:
            found.append(Problem("open", self.records, self.end, "no close record: the session is still "
                                 "open, or the gateway stopped without closing it"))
        if self.signed < self.records:
            found.append(Problem("unsigned", self.signed, self.signed_end,
                                 f"records {self.signed} to {self.records - 1} follow the last valid "
                                 "checkpoint: chained, but not signed"))
        return found

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: Path, public_keys: Mapping[str, Ed25519PublicKey]) -> Report:
    """Verifies the log at `path` with the gateway's public keys, by kid."""
    path = Path(path)
    report = Report(path)
    entries: list[Entry] = []
    hashes: list[bytes] = []
    data = path.read_bytes()
    stop: Problem | None = None
    try:
        for entry in _entries(data, 0):
            entries.append(entry)
            start = entry.offset + FRAME.size
            hashes.append(hashlib.sha256(data[start:entry.end]).digest())
    except FrameError as error:
        problem = Problem("torn" if error.torn else "damaged", len(entries), error.offset, error.detail)
        if error.torn:
            report.torn = problem
        else:
            stop = problem
    except LogCorrupt as error:
        stop = Problem("malformed", len(entries), error.offset, error.detail)
    report.error = _Walk(report, entries, hashes, public_keys).run() or stop
    if report.error is not None:
        report.records = min(report.records, report.error.index)
    return report


class _Walk:
    """The chain checks, record by record, filling in the report as they pass."""

    def __init__(self, report: Report, entries: list[Entry], hashes: list[bytes],
                 public_keys: Mapping[str, Ed25519PublicKey]) -> None:
        self.report = report
        self.entries = entries
        self.hashes = hashes
        self.keys = public_keys

    def run(self) -> Problem | None:
        expected = b""
        after = "open"  # then "close", once the close record is seen, then "end" after its checkpoint
        for index, (offset, end, record) in enumerate(self.entries):
            kind = record["type"]
            if index == 0:
                found = self._header(record, offset)
                if found:
                    return found
                expected = genesis(record["session_id"])
                self.report.session_id = record["session_id"]
            if record["seq"] != index:
                return Problem("seq", index, offset, f"seq {record['seq']} where {index} was expected: "
                               "records were removed or reordered")
            if record["prev"] != expected:
                return self._chain_break(index)
            if after == "end":
                return Problem("order", index, offset, "a record after the session's final checkpoint")
            if after == "close" and kind != "checkpoint":
                return Problem("order", index, offset, "the record after the close record is not its checkpoint")
            if kind == "checkpoint":
                found = self._checkpoint(record, offset, index)
                if found:
                    return found
                self.report.signed, self.report.signed_end = index + 1, end
                after = "end" if after == "close" else after
            elif kind == "close":
                self.report.closed = True
                after = "close"
            expected = self.hashes[index]
            self.report.records, self.report.end = index + 1, end
        return None

    def _header(self, record: Record, offset: int) -> Problem | None:
        if record["type"] != "header":
            return Problem("header", 0, offset, f"the first record is a {record['type']}, not a header")
        if record.get("format") != FORMAT_VERSION:
            return Problem("format", 0, offset, f"format {record.get('format')!r}; this reader knows "
                           f"format {FORMAT_VERSION}")
        session_id = record.get("session_id")
        if not isinstance(session_id, str):
            return Problem("header", 0, offset, "the header has no session id")
        if self.report.path.name != session_id + SUFFIX:
            return Problem("session", 0, offset, f"the log of session {session_id!r} under another session's "
                           "file name")
        return None

    def _checkpoint(self, record: Record, offset: int, index: int) -> Problem | None:
        if not (isinstance(record.get("kid"), str) and isinstance(record.get("sig"), bytes)
                and isinstance(record.get("at"), float | int)):
            return Problem("malformed", index, offset, "a checkpoint without its key id, signature or time")
        key = self.keys.get(record["kid"])
        if key is None:
            return Problem("unknown-key", index, offset, f"signed with key {record['kid']!r}, which is not "
                           "among the keys given")
        if not signature_valid(record, key):
            return Problem("signature", index, offset, f"the signature does not verify with key "
                           f"{record['kid']!r}: records since the previous checkpoint were altered, or "
                           "another key signed it")
        return None

    def _chain_break(self, index: int) -> Problem:
        """Record `index`'s prev is not the hash of the record before it. Either that record
        was altered, or this one's prev was: this one is intact if what follows still commits
        to it, i.e. the next record links to it, or it is a checkpoint whose signature (over
        its prev) holds."""
        offset, _, record = self.entries[index]
        if index == 0:
            return Problem("hash", 0, offset, "the header's prev is not derived from its session id: "
                           "the header was altered")
        following = self.entries[index + 1].record if index + 1 < len(self.entries) else None
        intact = (following is not None and following["prev"] == self.hashes[index]) or (
            record["type"] == "checkpoint" and self._checkpoint(record, offset, index) is None)
        if intact:
            before = index - 1
            return Problem("hash", before, self.entries[before].offset,
                           f"record {before} was altered (its hash is not the prev of record {index}), or "
                           "records after it were removed")
        return Problem("hash", index, offset, f"record {index}'s prev is not the hash of record {index - 1}: "
                       "this record was altered, or records before it were removed or inserted")
