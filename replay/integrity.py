"""Whether a log can be trusted: the verifier's report, read with what the reader knows
about the file (is a gateway still writing it?), and the public keys to verify with.

A log that a gateway is still writing has no close record yet, may end in a torn frame and
has records after its last checkpoint: that is what a live session looks like, and it is
reported as such, not as a failure. Once no gateway holds the log, the same end means the
session was cut short (a crash, or someone truncating the file), and it is a failure.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pgguard.audit.verify import Problem, Report, public_keys_from_jwks, verify
from pgguard.config import load
from pgguard.identity.tokens import TokenService

from replay.catalog import is_live

# Seconds in which a new log may still lack its header: its gateway has created it (and taken
# its lock) and not yet written the first record.
CREATING = 2.0

PublicKeys = Mapping[str, Ed25519PublicKey]

# Exit statuses of `verify`.
INTACT = 0
TAMPERED = 1  # a record is damaged, altered, removed, reordered or signed by an unknown key
INCOMPLETE = 3  # no record is bad, but the log ends early and no gateway is writing it


def public_keys(jwks: str | None, config: Path | None) -> dict[str, Ed25519PublicKey]:
    """The gateway's public keys: from a JWKS (a file, or the admin listener's
    /.well-known/jwks.json URL), and from a pgguard.toml's signing keys."""
    keys: dict[str, Ed25519PublicKey] = {}
    if jwks:
        if jwks.startswith(("http://", "https://")):
            with urllib.request.urlopen(jwks, timeout=10) as response:  # noqa: S310 (the user's own URL)
                document = json.load(response)
        else:
            document = json.loads(Path(jwks).read_text())
        keys.update(public_keys_from_jwks(document))
    if config is not None:
        keys.update(public_keys_from_jwks(TokenService(load(config).identity).jwks()))
    return keys


@dataclass(frozen=True)
class Verdict:
    report: Report
    live: bool

    @property
    def problems(self) -> list[Problem]:
        return self.report.problems

    @property
    def status(self) -> int:
        if self.report.error is not None:
            return TAMPERED
        if self.report.ok or self.live:
            return INTACT
        return INCOMPLETE

    @property
    def name(self) -> str:
        """One word for the verdict: intact, live, incomplete or failed."""
        if self.status == INTACT:
            return "intact" if self.report.ok else "live"
        return "failed" if self.status == TAMPERED else "incomplete"

    @property
    def summary(self) -> str:
        report = self.report
        if report.error is not None:
            return (f"FAILED at record {report.error.index} (byte {report.error.offset}): {report.error.kind}; "
                    f"records 0 to {report.error.index - 1} verify, nothing from record {report.error.index} on "
                    "is trusted" if report.error.index else f"FAILED at record 0: {report.error.kind}")
        if report.ok:
            return f"intact: {report.records} records, all signed, closed"
        if self.live:
            return (f"intact so far, still being written: {report.records} records verify, "
                    f"{report.signed} of them signed")
        return (f"INCOMPLETE: {report.records} records verify, {report.signed} of them signed; the log ends "
                "early and no gateway is writing it")


def check(path: Path, keys: PublicKeys) -> Verdict:
    report = verify(path, keys)
    live = report.error is None and not report.closed and _being_written(path, report.records)
    return Verdict(report, live)


def _being_written(path: Path, records: int) -> bool:
    """Whether a gateway holds the log. A log without its header is probed only once it is
    CREATING seconds old: a probe any sooner could take the lock at the instant its gateway does
    (and fail that session). Until then it counts as being written."""
    if records:
        return is_live(path)
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return False
    return 0 <= age < CREATING or (age >= CREATING and is_live(path))

