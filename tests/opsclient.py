"""Helpers for the operations tests: the admin API of a test gateway, its metrics, its session logs.

The admin listener starts just after the gateway's, so the first request
retries a refused connection for a moment.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgguard.audit.verify import read_records, verify
from pgguard.config import load
from pgguard.identity.tokens import load_signing_key

if TYPE_CHECKING:
    from conftest import RunningGateway

_SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


def admin_url(gateway: RunningGateway) -> str:
    listen = load(gateway.config_path).gateway.admin_listen
    assert listen is not None
    return f"http://{listen}"


def request(gateway: RunningGateway, path: str, *, method: str = "GET", token: str | None = None,
            timeout: float = 10) -> tuple[int, str]:
    """Status and body of one admin request (errors included)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    req = urllib.request.Request(admin_url(gateway) + path, method=method, headers=headers,
                                 data=b"" if method == "POST" else None)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def request_json(gateway: RunningGateway, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    status, body = request(gateway, path, **kwargs)
    return status, json.loads(body)


def metrics(gateway: RunningGateway) -> dict[str, float]:
    """Every sample of /metrics, keyed by name and labels as written: 'pgguard_logins_total{outcome="ok"}'."""
    status, body = request(gateway, "/metrics")
    assert status == 200, body
    samples = {}
    for line in body.splitlines():
        if line.startswith("#") or not line:
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        samples[match[1] + (match[2] or "")] = float(match[3])
    return samples


def deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What changed between two scrapes, and by how much."""
    return {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}


def session_logs(gateway: RunningGateway) -> Path:
    return load(gateway.config_path).gateway.session_dir


def find_log(gateway: RunningGateway, application: str, timeout: float = 15) -> list[dict[str, Any]]:
    """The records of the session that set `application_name`, once its log has a close record;
    the log must verify with no problem."""
    deadline = time.monotonic() + timeout
    problems: object = None
    while True:
        for path in session_logs(gateway).glob("*.pgglog"):
            records = [entry.record for entry in read_records(path)]
            if records and records[0].get("application_name") == application and \
                    any(record["type"] == "close" for record in records):
                key = load(gateway.config_path).identity.signing_keys[0]
                report = verify(path, {key.kid: load_signing_key(key).public_key()})
                if report.ok:
                    return records
                problems = report.problems
        if time.monotonic() > deadline:
            raise AssertionError(f"no closed, verified session log for {application}: {problems}")
        time.sleep(0.05)
