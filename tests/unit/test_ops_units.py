"""The operations modules without a running gateway: the new [gateway] keys, what a reload
keeps and refuses, the metrics' text format, and JSON log lines."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from pgguard.admin.metrics import Histogram, Metrics, render
from pgguard.config import ConfigError, load
from pgguard.logging_json import SESSION_ID, JsonFormatter, SessionIdFilter
from pgguard.reload import prepare
from rawclient import set_keys
from test_config import demo_config, refusal  # noqa: F401  (a fixture, and its helper)


def test_operations_keys_have_defaults_and_are_read(demo_config: Path) -> None:  # noqa: F811
    gateway = load(demo_config).gateway
    assert (gateway.idle_timeout, gateway.shutdown_grace) == (0.0, 30.0)
    assert (gateway.log_format, gateway.admin_groups) == ("text", ())
    demo_config.write_text(set_keys(demo_config.read_text(), "gateway", {
        "idle_timeout": 600, "shutdown_grace": 5, "log_format": "json",
        "admin_groups": ["dba", "sre"]}))
    gateway = load(demo_config).gateway
    assert (gateway.idle_timeout, gateway.shutdown_grace) == (600.0, 5.0)
    assert (gateway.log_format, gateway.admin_groups) == ("json", ("dba", "sre"))


@pytest.mark.parametrize(("values", "named"), [
    ({"log_format": "xml"}, "log_format must be one of text, json"),
    ({"admin_groups": [""]}, "admin_groups must be a list of names"),
    ({"idle_timeout": -1}, "idle_timeout must not be negative"),
    ({"shutdown_grace": "soon"}, "shutdown_grace must be a int or float"),
])
def test_operations_keys_are_checked(demo_config: Path, values: dict, named: str) -> None:  # noqa: F811
    assert named in refusal(demo_config, "gateway", values)


def test_a_reload_takes_roles_and_limits_and_keeps_what_needs_a_restart(demo_config: Path) -> None:  # noqa: F811
    running = load(demo_config)
    text = set_keys(demo_config.read_text(), "gateway", {"listen": ["127.0.0.1:1"], "idle_timeout": 60})
    text = set_keys(text, "roles.analysts", {"read": ["public.customers"]})
    text = set_keys(text, "targets.demo", {"port": 1})
    demo_config.write_text(text.replace('issuer = "pgguard-demo"', 'issuer = "elsewhere"'))
    reloaded = prepare(running)
    assert reloaded.ignored == ("[gateway] listen", "[identity]", "[targets]")
    config = reloaded.config
    assert config.gateway.listen == running.gateway.listen and config.gateway.idle_timeout == 60
    assert config.targets == running.targets and config.identity == running.identity
    assert config.raw["targets"] == running.raw["targets"]
    assert reloaded.policy.scopes["analysts"].read == ("public.customers",)


def test_a_reload_refuses_a_role_whose_login_the_running_targets_lack(demo_config: Path) -> None:  # noqa: F811
    running = load(demo_config)
    text = demo_config.read_text()
    # A new login and a role using it: valid on its own, but targets only change on restart.
    text = text.replace("[masking.columns]", '[targets.demo.logins.auditor]\nuser = "auditor"\n\n[masking.columns]')
    demo_config.write_text(set_keys(text, "roles.analysts", {"login": "auditor"}))
    with pytest.raises(ConfigError, match=r"\[roles\.analysts\] login 'auditor' is not defined for the running"):
        prepare(running)


def test_histogram_buckets_are_cumulative() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value)
    assert list(histogram.cumulative()) == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert (histogram.count, histogram.sum) == (4, 3.65)


def test_metrics_text_has_a_help_and_type_for_each_family_and_one_sample_a_line() -> None:
    metrics = Metrics()
    metrics.logins["ok"] = 3
    metrics.statements, metrics.statements_refused = 10, 4
    text = render(metrics, connections=5, sessions=3, live_bytes_in=7, live_bytes_out=8, live_masked_rows=1,
                  max_connections=100, held_requests=2)
    lines = text.splitlines()
    assert 'pgguard_logins_total{outcome="ok"} 3' in lines
    assert 'pgguard_statements_total{decision="allowed"} 6' in lines
    assert 'pgguard_statements_total{decision="refused"} 4' in lines
    assert "pgguard_held_requests 2" in lines and "pgguard_connections 5" in lines
    types = [line for line in lines if line.startswith("# TYPE")]
    helps = [line for line in lines if line.startswith("# HELP")]
    assert len(types) == len(helps) == len({line.split()[2] for line in types})
    assert text.endswith("\n")


def test_json_log_lines_carry_the_session_id() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("pgguard.session", logging.INFO, __file__, 1, "session %d ended", (7,), None)
    assert "session_id" not in json.loads(formatter.format(record))
    token = SESSION_ID.set("20261122T100000Z-abc")
    try:
        record.session_id = SESSION_ID.get()
    finally:
        SESSION_ID.reset(token)
    entry = json.loads(formatter.format(record))
    assert entry["message"] == "session 7 ended" and entry["session_id"] == "20261122T100000Z-abc"
    assert entry["level"] == "info" and entry["logger"] == "pgguard.session" and entry["time"].endswith("Z")


def test_a_line_that_names_its_session_keeps_it_and_others_get_the_tasks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SessionIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("pgguard.test-ops-units")
    logger.addHandler(handler)
    logger.propagate = False
    token = SESSION_ID.set("task-session")
    try:
        logger.warning("from the task")
        logger.warning("about a pipe", extra={"session_id": "pipe-session"})
    finally:
        SESSION_ID.reset(token)
        logger.removeHandler(handler)
    assert [json.loads(line)["session_id"] for line in stream.getvalue().splitlines()] == \
        ["task-session", "pipe-session"]
