"""The gateway's session logs: where they go, how they are written and signed, how long they stay."""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path

import trio

from pgguard.audit.chain import Signer
from pgguard.audit.recorder import SessionRecorder
from pgguard.audit.records import Limits, Record
from pgguard.audit.writer import LogOptions, SessionLogWriter, prune
from pgguard.config import Config, ConfigError
from pgguard.masking.detectors import Scrubber

log = logging.getLogger("pgguard.audit")

# How often the gateway prunes, at most: a retention of days needs no finer grain.
_PRUNE_EVERY = 3600.0


def new_session_id() -> str:
    """Sorts by start time (UTC, to the second), and is unique: 48 random bits after it."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(6)


class SessionLogs:
    def __init__(self, config: Config) -> None:
        audit = config.audit
        self.enabled = audit.enabled
        self.directory: Path = config.gateway.session_dir
        self.retention = audit.retention_seconds
        self.options = LogOptions(fsync=audit.fsync,  # type: ignore[arg-type]  # checked by config.load
                                  checkpoint_records=audit.checkpoint_records,
                                  checkpoint_seconds=audit.checkpoint_seconds,
                                  reserve_bytes=audit.reserve_bytes)
        self.limits = Limits(max_rows=audit.max_rows, max_cell_bytes=audit.max_cell_bytes,
                             max_values_bytes=audit.max_values_bytes, max_text_bytes=audit.max_text_bytes)
        self.parameter_scrubber = Scrubber(audit.parameter_detectors) if audit.parameter_detectors else None
        self.signer: Signer | None = None
        if self.enabled:
            if not config.identity.signing_keys:
                raise ConfigError("[audit] session logs are signed with the first of [identity] signing_keys; "
                                  "configure one, or set [audit] enabled = false")
            self.signer = Signer.load(config.identity.signing_keys[0])

    async def open(self, header: Record) -> tuple[SessionLogWriter, SessionRecorder]:
        """A new log that starts with `header`: its writer, whose `run` the session starts, and
        the recorder the relay feeds. OSError when the file cannot be created: the session must
        not start."""
        assert self.signer is not None
        writer = await SessionLogWriter.open(self.directory, header, self.signer, self.options)
        return writer, SessionRecorder(writer, self.limits, self.parameter_scrubber)

    def prune(self) -> list[Path]:
        """Removes the logs of finished sessions older than the retention; none without one."""
        if self.retention is None or not self.directory.is_dir():
            return []
        return prune(self.directory, self.retention)

    async def keep_pruned(self) -> None:
        """Prunes now and then, for as long as the gateway runs."""
        if self.retention is None:
            return
        while True:
            try:
                removed = await trio.to_thread.run_sync(self.prune)
            except OSError as error:
                log.error("pruning session logs in %s failed: %s", self.directory, error)
            else:
                if removed:
                    log.info("pruned %d session logs older than %d s", len(removed), self.retention)
            await trio.sleep(min(_PRUNE_EVERY, self.retention / 10))

