"""`pgguard explain`: the decision for a statement, as the gateway would make it.

For policy authors, and for CI pipelines that test their policies: the
exit status is 0 when every statement is allowed and 1 when one is refused.
The target's catalog is read with the gateway's own login, as a session
would; `--offline` skips that and takes unqualified functions and operators
to be PostgreSQL's own.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from pgguard.config import Config, ConfigError, TargetConfig
from pgguard.policy.catalog import EMPTY, Catalog, read_catalog
from pgguard.policy.guard import Decision, Policy, SessionGuard
from pgguard.relay.upstream import tls_context


def _target(config: Config, name: str | None) -> TargetConfig:
    if name is None:
        return next(iter(config.targets.values()))
    if name not in config.targets:
        raise ConfigError(f"no target named {name!r}")
    return config.targets[name]


def explain(config: Config, groups: list[str], sql: str, *, target: str | None = None,
            offline: bool = False) -> list[Decision]:
    roles = config.roles_for_groups(groups)
    if not roles:
        raise ConfigError(f"no role is granted to groups {', '.join(groups) or '(none)'}")
    chosen = _target(config, target)
    login = chosen.logins[roles[-1].login]
    catalog: Catalog = EMPTY if offline else trio.run(read_catalog, chosen, login, tls_context(chosen))
    guard = SessionGuard(Policy(config), [role.name for role in roles], login.user, lambda: catalog,
                         assume_builtin=offline)
    return guard.check_query(sql)


def to_json(decisions: list[Decision]) -> list[dict[str, Any]]:
    out = []
    for decision in decisions:
        st = decision.statement
        out.append({
            "statement": st.text if st else None,
            "classes": sorted(st.classes) if st else [],
            "reads": sorted(map(str, st.reads)) if st else [],
            "writes": {str(k): sorted(v) for k, v in st.writes.items()} if st else {},
            "functions": sorted(map(str, st.functions)) if st else [],
            "operators": sorted(map(str, st.operators)) if st else [],
            "allowed": decision.allowed,
            "decision": "refused" if not decision.allowed else "held" if decision.approval else "allowed",
            "rule": decision.rule,
            "message": None if decision.allowed else decision.message,
            "hint": str(decision.approval) if decision.approval else decision.hint,
        })
    return out


def render(decisions: list[Decision]) -> str:
    lines = []
    for item in to_json(decisions):
        lines.append(f"statement: {item['statement']}")
        lines.append(f"  classes:   {', '.join(item['classes']) or '-'}")
        lines.append(f"  reads:     {', '.join(item['reads']) or '-'}")
        writes = ", ".join(f"{name} ({'/'.join(kinds)})" for name, kinds in item["writes"].items())
        lines.append(f"  writes:    {writes or '-'}")
        lines.append(f"  functions: {', '.join(item['functions']) or '-'}")
        lines.append(f"  operators: {', '.join(item['operators']) or '-'}")
        if item["decision"] == "held":
            lines.append(f"  decision:  held for approval (rule {item['rule']}: {item['hint']})")
        elif item["allowed"]:
            lines.append("  decision:  allowed")
        else:
            lines.append(f"  decision:  REFUSED: {item['message']}")
            if item["hint"]:
                lines.append(f"  hint:      {item['hint']}")
    return "\n".join(lines)


def dumps(decisions: list[Decision]) -> str:
    return json.dumps(to_json(decisions), indent=2)
