"""Revoked tokens and subjects: a JSON file the CLI writes and the gateway watches.

`pgguard token revoke` adds an entry under a lock and replaces the file
atomically (a temporary file, fsync, rename), so the gateway never reads half
a file and two revocations at once both land. The gateway polls the file a
few times a second; when it changes, it reloads it, refuses new logins with
what it names and ends the open sessions that logged in with it.

A `jti` entry revokes that one token. A `sub` entry revokes every token of
that subject issued up to the moment of revocation (`iat <= revoked_at`):
everything the subject held is dead, and a token issued afterwards works. To
keep someone out for good, disable them at the provider, or stop issuing
them service-account tokens.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from pgguard.identity import Identity

log = logging.getLogger("pgguard.identity")

KINDS = ("jti", "sub")
# How often the gateway looks at the file: a revocation takes effect within this.
POLL_INTERVAL = 0.25


@dataclass(frozen=True)
class Revocation:
    kind: str  # one of KINDS
    value: str
    revoked_at: datetime
    reason: str

    def matches(self, identity: Identity) -> bool:
        if self.kind == "jti":
            return identity.jti == self.value
        return identity.subject == self.value and identity.issued_at <= self.revoked_at.timestamp()

    def describe(self) -> str:
        because = f": {self.reason}" if self.reason else ""
        return f"{self.kind} {self.value} revoked at {self.revoked_at.isoformat()}{because}"

    def to_json(self) -> dict[str, str]:
        return {self.kind: self.value, "revoked_at": self.revoked_at.isoformat(), "reason": self.reason}

    @classmethod
    def from_json(cls, item: Any, where: str) -> Revocation:
        kinds = [kind for kind in KINDS if isinstance(item, dict) and kind in item]
        if len(kinds) != 1 or not isinstance(item[kinds[0]], str):
            raise ValueError(f"{where}: expected an object with a string 'jti' or 'sub'")
        try:
            revoked_at = datetime.fromisoformat(item["revoked_at"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: 'revoked_at' must be an ISO 8601 time") from exc
        reason = item.get("reason", "")
        if not isinstance(reason, str):
            raise ValueError(f"{where}: 'reason' must be a string")
        if revoked_at.tzinfo is None:
            revoked_at = revoked_at.replace(tzinfo=UTC)
        return cls(kinds[0], item[kinds[0]], revoked_at, reason)


class RevocationList:
    def __init__(self, entries: Iterable[Revocation] = ()) -> None:
        self.entries: dict[tuple[str, str], Revocation] = {(entry.kind, entry.value): entry for entry in entries}

    def __len__(self) -> int:
        return len(self.entries)

    def match(self, identity: Identity) -> Revocation | None:
        """The entry that revokes `identity`'s token, if any."""
        for key in (("jti", identity.jti), ("sub", identity.subject)):
            entry = self.entries.get(key)  # type: ignore[arg-type]
            if entry is not None and entry.matches(identity):
                return entry
        return None


def load(path: Path) -> RevocationList:
    """The list in `path`; a missing file is an empty list, a malformed one raises ValueError."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return RevocationList()
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from exc
    items = document.get("revoked") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected an object with a 'revoked' list")
    return RevocationList(Revocation.from_json(item, f"{path}: revoked[{index}]") for index, item in enumerate(items))


def revoke(path: Path, kind: str, value: str, reason: str = "") -> tuple[Revocation, bool]:
    """Add a revocation to the file; returns it and whether it is new (False: already there)."""
    if kind not in KINDS or not value:
        raise ValueError(f"revoke by one of {', '.join(KINDS)}, with a value")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        revocations = load(path)
        existing = revocations.entries.get((kind, value))
        if existing is not None:
            return existing, False
        entry = Revocation(kind, value, datetime.now(UTC).replace(microsecond=0), reason)
        items = [item.to_json() for item in revocations.entries.values()] + [entry.to_json()]
        _replace(path, json.dumps({"revoked": items}, indent=2) + "\n")
        return entry, True


def _replace(path: Path, text: str) -> None:
    """Write `path` so that a reader sees the old file or the new one, never a mix."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fchmod(stream.fileno(), mode)
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is replaced or edited."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class RevocationFile:
    """The revocation file as the gateway sees it: loaded at start, then watched."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = _signature(path)
        # A malformed file stops the gateway from starting: it must not run
        # with revoked tokens let back in.
        self.current = load(path)

    async def changes(self) -> AsyncIterator[RevocationList]:
        """The list after every change to the file.

        A file that cannot be read or parsed while the gateway runs is logged
        and skipped: the last good list stays in force.
        """
        while True:
            await trio.sleep(POLL_INTERVAL)
            signature = _signature(self.path)
            if signature == self._seen:
                continue
            self._seen = signature
            try:
                self.current = await trio.to_thread.run_sync(load, self.path)
            except (OSError, ValueError) as exc:
                log.error("revocation file unusable, keeping the previous list: %s", exc)
                continue
            yield self.current
