"""`pgguard explain`: the decision and masking plan for a statement, as the gateway would make them.

For policy authors, and for CI pipelines that test their policies: the
exit status is 0 when every statement is allowed and 1 when one is refused,
by policy or because masking cannot guarantee its result. The target's
catalog is read with the gateway's own login, as a session would;
`--offline` skips that and takes unqualified functions and operators to be
PostgreSQL's own.

Each column's masking is what lineage decides before the statement runs.
The gateway also masks a column that the server's RowDescription ties to a
sensitive table column, and picks the detectors by the column's type (a
detector has nothing to find in an integer); neither is known here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import trio

from pgguard.config import Config, ConfigError, TargetConfig
from pgguard.masking.lineage import Lineage
from pgguard.masking.plan import Clearance, MaskingRefused, as_shown, plan
from pgguard.masking.session import MaskingConfig, SessionRelations, masking_refusal
from pgguard.policy.catalog import EMPTY, Catalog, read_catalog
from pgguard.policy.guard import Decision, Policy, SessionGuard
from pgguard.relay.upstream import tls_context


@dataclass(frozen=True)
class Shown:
    """How one output column reaches the client."""

    column: str
    shown: str  # "as is", "detectors", "null", or the column's masking function
    sources: tuple[str, ...]  # the hidden table columns it comes from


@dataclass(frozen=True)
class Explained:
    """One statement: what policy found in it, the gateway's decision, and its columns' masking."""

    policy: Decision  # its statement holds the classes, reads and writes
    decision: Decision  # policy's, or masking's refusal
    # One per output column; None where none is planned here (refused, no result, or the
    # session's roles see everything raw: see `masking`).
    columns: tuple[Shown, ...] | None = None
    masking: str = ""  # a line on the masking where `columns` cannot say it


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
    decisions = guard.check_query(sql)
    masking = MaskingConfig(config)
    clearance = masking.clearance(roles)
    if not clearance.active:
        return [Explained(d, d, masking="none: these roles see every column raw") for d in decisions]
    try:
        found = SessionRelations(guard, lambda: catalog, masking.rules).lineages(sql)
    except Exception as exc:  # as in the gateway: what lineage cannot trace is refused
        refusal = masking_refusal(exc)
        return [Explained(d, refusal if d.allowed else d) for d in decisions]
    return [_masked(d, lineage, clearance) for d, lineage in zip(decisions, found)]


def _masked(decision: Decision, lineage: Lineage, clearance: Clearance) -> Explained:
    if not decision.allowed:
        return Explained(decision, decision)
    if lineage.uses is not None:
        return Explained(decision, decision, masking=f"as planned where {lineage.uses} was defined")
    try:
        result = plan(lineage, clearance)
    except MaskingRefused as exc:
        return Explained(decision, masking_refusal(exc))
    scrubber = result.scrubber(clearance)
    unmasked = f"detectors {', '.join(scrubber.names)}" if scrubber is not None else "as is"
    if lineage.columns is None or result.columns is None:  # a shape lineage cannot fix: nothing hidden in it
        return Explained(decision, decision, masking=f"every column: {unmasked}")
    columns = []
    for column, spec in zip(lineage.columns, result.columns, strict=True):
        sources = tuple(map(str, clearance.hidden(column.sources)))
        shown = as_shown(spec)
        columns.append(Shown(column.name, unmasked if shown is None else shown.function, sources))
    return Explained(decision, decision, tuple(columns))


def to_json(explained: list[Explained]) -> list[dict[str, Any]]:
    out = []
    for item in explained:
        st, decision = item.policy.statement, item.decision
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
            "columns": None if item.columns is None else
            [{"column": c.column, "shown": c.shown, "from": list(c.sources)} for c in item.columns],
            "masking": item.masking or None,
        })
    return out


def render(explained: list[Explained]) -> str:
    lines = []
    for item in to_json(explained):
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
        if item["masking"]:
            lines.append(f"  masking:   {item['masking']}")
        for column in item["columns"] or ():
            origin = f" (from {', '.join(column['from'])})" if column["from"] else ""
            lines.append(f"  column {column['column']}: {column['shown']}{origin}")
    return "\n".join(lines)


def dumps(explained: list[Explained]) -> str:
    return json.dumps(to_json(explained), indent=2)
