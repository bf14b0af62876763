"""The session log: a tamper-evident record of every session (docs/session-log.md).

- `records`: the record types of format 1, their limits and their encoding;
- `chain`: framing, the hash chain and signed checkpoints, without I/O;
- `writer`: the trio task that writes one session's log, failing closed; retention;
- `verify`: reading logs, and verifying one.
"""
