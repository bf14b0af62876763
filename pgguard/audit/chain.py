"""The hash chain, the framing and the signed checkpoints of a session log, without I/O.

A frame is a 12-byte header and a payload, the msgpack encoding of one record:

    length:  u32, big-endian   the payload's size in bytes
    crc:     u32, big-endian   CRC-32 of the payload
    check:   u32, big-endian   CRC-32 of the 8 bytes before it

The header checks itself, so a reader knows the length is the one the writer wrote before it
trusts it. That is what makes torn-tail detection exact: a file whose last frame is shorter
than its intact header declares was cut while being written (a crash), while a damaged header
or payload is corruption, reported as such even in the last record. The CRCs locate accidental
damage to the very record; the SHA-256 chain and the signatures are what detect deliberate
changes, since anyone can recompute a CRC.

Every record carries `seq`, its position, and `prev`, the SHA-256 of the previous record's
exact payload bytes; the header's `prev` is `genesis(session_id)`, so a chain belongs to one
session. A checkpoint signs its own seq, prev, time and key id, and through prev everything
before it.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pgguard.audit.records import FORMAT_VERSION, Record, encode
from pgguard.config import SigningKey
from pgguard.identity.tokens import load_signing_key

FRAME = struct.Struct(">III")
_HEAD = struct.Struct(">II")
HASH_SIZE = 32


def genesis(session_id: str) -> bytes:
    """The `prev` of a session's header: binds the chain to the session and the format."""
    return hashlib.sha256(b"pgguard-session-log\x00%d\x00%s" % (FORMAT_VERSION, session_id.encode())).digest()


# `prev` as a record holds it until the chain links it: zeros of the hash's size.
_UNLINKED = bytes(HASH_SIZE)
_SIGNATURE_SIZE = 64  # Ed25519


def unlinked(record: Record, seq: int) -> bytes:
    """The payload of `record` as record `seq`, `prev` last and zeroed: its size is final, and
    `Chain.link()` fills in `prev` when the records before it are linked. Sets `seq` and `prev`."""
    record["seq"] = seq
    if "prev" in record:
        del record["prev"]  # so that `prev` is the last key, whose value ends the payload
    record["prev"] = _UNLINKED
    return encode(record)


def frame(payload: bytes) -> bytes:
    size, crc = len(payload), zlib.crc32(payload)
    return FRAME.pack(size, crc, zlib.crc32(_HEAD.pack(size, crc))) + payload


class FrameError(Exception):
    """The bytes at `offset` are not a complete, intact frame. `torn` says whether they are
    the unfinished tail a crash leaves (a prefix of a frame, or zeros a filesystem left after
    a power loss), as opposed to damage."""

    def __init__(self, offset: int, torn: bool, detail: str) -> None:
        super().__init__(f"byte {offset}: {detail}")
        self.offset = offset
        self.torn = torn
        self.detail = detail


def frames(data: bytes, offset: int = 0) -> Iterator[tuple[int, memoryview]]:
    """(offset, payload) of each frame from `offset` on; FrameError where they stop being whole."""
    view = memoryview(data)
    end = len(data)
    while offset < end:
        rest = end - offset
        if rest < FRAME.size:
            raise FrameError(offset, True, f"{rest} bytes of a {FRAME.size}-byte frame header")
        length, crc, check = FRAME.unpack_from(data, offset)
        if zlib.crc32(view[offset:offset + _HEAD.size]) != check:
            if data.count(0, offset) == rest:
                raise FrameError(offset, True, f"{rest} zero bytes where a frame was expected")
            raise FrameError(offset, False, "frame header checksum mismatch")
        start = offset + FRAME.size
        if end - start < length:
            raise FrameError(offset, True, f"{end - start} of the frame's {length} payload bytes")
        payload = view[start:start + length]
        if zlib.crc32(payload) != crc:
            raise FrameError(offset, False, "payload checksum mismatch")
        yield offset, payload
        offset = start + length


def _signed_bytes(seq: int, prev: bytes, at: float, kid: str) -> bytes:
    return encode(["pgguard-session-log checkpoint", FORMAT_VERSION, seq, prev, at, kid])


class Signer:
    """Signs checkpoints with one of the gateway's Ed25519 keys (`[identity] signing_keys`)."""

    def __init__(self, kid: str, key: Ed25519PrivateKey) -> None:
        self.kid = kid
        self._key = key

    @classmethod
    def load(cls, key: SigningKey) -> Signer:
        """The key in a PKCS8 PEM file, as the gateway's token service loads it."""
        return cls(key.kid, load_signing_key(key))

    def checkpoint(self, seq: int, prev: bytes, at: float) -> Record:
        return self._record(at, self._key.sign(_signed_bytes(seq, prev, at, self.kid)))

    def checkpoint_size(self, seq: int, at: float) -> int:
        """The frame size of the checkpoint that will be record `seq`: what it signs does not change it."""
        return FRAME.size + len(unlinked(self._record(at, bytes(_SIGNATURE_SIZE)), seq))

    def _record(self, at: float, sig: bytes) -> Record:
        return {"type": "checkpoint", "at": at, "kid": self.kid, "sig": sig}


def signature_valid(record: dict[str, Any], key: Ed25519PublicKey) -> bool:
    """Whether a decoded checkpoint's signature is `key`'s, over its own seq, prev, at and kid."""
    try:
        key.verify(record["sig"], _signed_bytes(record["seq"], record["prev"], record["at"], record["kid"]))
    except Exception:  # InvalidSignature, or a value of the wrong type in a forged record
        return False
    return True


@dataclass(frozen=True, slots=True)
class CheckpointAt:
    """Where a checkpoint goes among queued payloads: `Chain.link_all` signs it once it has
    linked the records before it."""

    at: float


class Chain:
    """Turns records into frames, each chained to the one before.

    `append()` frames a record as the next one. A writer that encodes records as they come
    and hashes them in batches does the same in two steps: `unlinked()` encodes a record at
    its seq, with a size that is final (for the disk-space check, which may still decline
    it), and `link()` completes it once every record before it is linked.
    """

    __slots__ = ("seq", "prev")

    def __init__(self, session_id: str) -> None:
        self.seq = 0
        self.prev = genesis(session_id)

    def link(self, payload: bytes) -> bytes:
        """The frame of a payload made by `unlinked()` for the next seq, taken as the next record."""
        return self.link_all((payload,), None)

    def link_all(self, items: Iterable[object], signer: Signer | None) -> bytes:
        """The frames of a batch: each payload made by `unlinked()` linked as `link()` does, each
        `CheckpointAt` signed in its place, anything else skipped. One loop with the chain's state
        in locals: the writer runs it for every record."""
        parts: list[bytes] = []
        add = parts.append
        prev, seq = self.prev, self.seq
        sha256 = hashlib.sha256
        for item in items:
            if type(item) is bytes:
                payload = item[:-HASH_SIZE] + prev
                prev = sha256(payload).digest()
                seq += 1
                add(frame(payload))
            elif type(item) is CheckpointAt:
                assert signer is not None, "a checkpoint needs a signer"
                self.prev, self.seq = prev, seq
                add(self.checkpoint(signer, item.at))
                prev, seq = self.prev, self.seq
        self.prev, self.seq = prev, seq
        return b"".join(parts)

    def append(self, record: Record) -> bytes:
        """The frame of `record` as the next record. Sets the record's `seq` and `prev`."""
        return self.link(unlinked(record, self.seq))

    def checkpoint(self, signer: Signer, at: float) -> bytes:
        """A signed checkpoint over everything so far, appended."""
        return self.append(signer.checkpoint(self.seq, self.prev, at))
