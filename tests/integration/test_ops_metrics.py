"""/metrics counts exactly what clients did, and /healthz and /readyz say what they should."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg

from helpers import unique_name
from opsclient import deltas, find_log, metrics, request, request_json
from rawclient import config_edit, login_as, login_error
from pgguard.wire import backend, frontend

if TYPE_CHECKING:
    from conftest import RunningGateway

STATEMENTS = {
    "SELECT 1": "allowed",
    "SELECT email FROM customers ORDER BY id LIMIT 5": "allowed",  # email is masked for analysts
    "INSERT INTO customers (id) VALUES (-1)": "refused",  # analysts write nothing
    "SELECT count(*) FROM orders": "allowed",
}


def test_metrics_count_what_the_clients_did(gateway_factory: Callable[..., RunningGateway]) -> None:
    gateway = gateway_factory()
    before = metrics(gateway)
    assert before["pgguard_sessions"] == 0
    with login_as(gateway, "analyst") as conn:
        sent = 0
        for sql, decision in STATEMENTS.items():
            said, ready = conn.query(sql)
            assert ready.status == "I"
            refused = [m for m in said if isinstance(m, backend.ErrorResponse)]
            assert bool(refused) == (decision == "refused"), said
            sent += len(frontend.Query(sql).encode())
        during = metrics(gateway)
    error = login_error(gateway, "analyst", token="not-a-token")
    assert error.code == "28P01"
    changed = deltas(before, during)
    assert during["pgguard_sessions"] == 1 and during["pgguard_connections"] == 1
    assert changed.pop("pgguard_sessions") == 1 and changed.pop("pgguard_connections") == 1
    assert changed.pop("pgguard_client_bytes_received_total") == sent
    assert changed.pop("pgguard_client_bytes_sent_total") > 0
    latency_buckets = {name: changed.pop(name) for name in list(changed)
                       if name.startswith("pgguard_request_duration_seconds_bucket")}
    assert latency_buckets['pgguard_request_duration_seconds_bucket{le="+Inf"}'] == len(STATEMENTS)
    assert changed.pop("pgguard_request_duration_seconds_sum") > 0
    assert changed == {
        "pgguard_connections_total": 1,
        'pgguard_logins_total{outcome="ok"}': 1,
        'pgguard_statements_total{decision="allowed"}': 3,
        'pgguard_statements_total{decision="refused"}': 1,
        "pgguard_request_duration_seconds_count": len(STATEMENTS),
        "pgguard_masked_rows_total": 5,
    }
    after = metrics(gateway)
    assert after['pgguard_logins_total{outcome="refused"}'] - before['pgguard_logins_total{outcome="refused"}'] == 1
    assert after["pgguard_connections_total"] - before["pgguard_connections_total"] == 2
    # Counted once the session is over too, not lost with it.
    assert after["pgguard_masked_rows_total"] - before["pgguard_masked_rows_total"] == 5
    assert after["pgguard_client_bytes_received_total"] - before["pgguard_client_bytes_received_total"] >= sent


def test_metrics_is_the_prometheus_text_format(gateway: RunningGateway) -> None:
    status, body = request(gateway, "/metrics")
    assert status == 200
    families = [line.split()[2] for line in body.splitlines() if line.startswith("# TYPE")]
    for family in ("pgguard_connections", "pgguard_logins_total", "pgguard_statements_total",
                   "pgguard_request_duration_seconds", "pgguard_client_bytes_received_total",
                   "pgguard_masked_rows_total", "pgguard_held_requests"):
        assert family in families, body
    samples = metrics(gateway)
    assert samples["pgguard_held_requests"] == 0
    assert samples["pgguard_connections_max"] == 1000


def test_healthz_and_readyz(gateway: RunningGateway) -> None:
    assert request_json(gateway, "/healthz") == (200, {"status": "ok"})
    status, body = request_json(gateway, "/readyz")
    assert (status, body["status"], body["problems"]) == (200, "ready", {}), body


def test_readyz_reports_an_unreachable_target(gateway_factory: Callable[..., RunningGateway]) -> None:
    from pgguard.demo.cluster import free_port

    closed_port = free_port()
    gateway = gateway_factory(config_edit({"targets.demo": {"port": closed_port}}))
    assert request_json(gateway, "/healthz")[0] == 200
    status, body = request_json(gateway, "/readyz")
    assert status == 503, body
    assert body["status"] == "not ready"
    assert f"127.0.0.1:{closed_port} unreachable" in body["problems"]["target demo"]


def test_json_logs_carry_the_session_id_on_every_line_of_the_session(
        gateway_factory: Callable[..., RunningGateway]) -> None:
    gateway = gateway_factory(config_edit({"gateway": {"log_format": "json"}}))
    application = unique_name("jsonlog")
    with psycopg.connect(gateway.dsn("analyst", application_name=application), autocommit=True) as conn:
        conn.execute("SELECT 1")
    session_id = find_log(gateway, application)[0]["session_id"]
    entries = [json.loads(line) for line in gateway.log_text().splitlines()]  # every line is JSON
    of_session = [entry for entry in entries if entry.get("session_id") == session_id]
    messages = [entry["message"] for entry in of_session]
    assert any(message.startswith("login: alice") for message in messages), messages
    assert any(" ended: client terminated" in message for message in messages), messages
    assert all(entry.get("session_id") for entry in entries if entry["logger"] == "pgguard.session")
