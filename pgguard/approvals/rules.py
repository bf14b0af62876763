"""A role's `approval` rules: which statements wait for an approver.

Each rule is a table whose conditions must all hold (a rule with `classes`
and `tables` matches a statement of one of those classes that touches one
of those tables):
- `classes`: statement classes, as roles name them in `statements`;
- `tables`: patterns over `schema.name`, as `read` and `write` take them,
  matched against the relations the statement writes (and reads, when the
  rule's `classes` include `read`);
- `kinds`: kinds of write to those tables: insert, update, delete, merge,
  truncate, copy, ddl, or `unfiltered` (an UPDATE or DELETE with no WHERE);
- `approvers`: how many distinct approvers must approve (default 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from pgguard.config import ConfigError, RoleConfig
from pgguard.policy.classify import CLASSES, READ, Name, Statement

KINDS = ("insert", "update", "delete", "merge", "truncate", "copy", "ddl", "unfiltered")
_KEYS = {"classes", "tables", "kinds", "approvers"}


@dataclass(frozen=True)
class ApprovalRule:
    # `roles.NAME.approval[INDEX]`: how decisions, requests and logs name it.
    label: str
    classes: frozenset[str]
    tables: tuple[str, ...]
    kinds: frozenset[str]
    approvers: int

    def __str__(self) -> str:
        parts = []
        if self.classes:
            parts.append(f"classes {', '.join(sorted(self.classes))}")
        if self.tables:
            parts.append(f"tables {', '.join(self.tables)}")
        if self.kinds:
            parts.append(f"kinds {', '.join(sorted(self.kinds))}")
        if self.approvers > 1:
            parts.append(f"{self.approvers} approvers")
        return "; ".join(parts)

    def matches(self, statement: Statement, resolve: Callable[[Name], list[str] | None]) -> bool:
        """`resolve`: the tables a relation may be; None when writing it may write any table."""
        if self.classes and not self.classes & statement.classes:
            return False
        if not self.tables and not self.kinds:
            return True
        touched: list[tuple[Name | None, set[str]]] = [
            (relation, kinds | _implied(kinds) | ({"unfiltered"} if statement.unfiltered else set()))
            for relation, kinds in statement.writes.items()]
        if statement.cascades:
            # TRUNCATE … CASCADE empties tables the statement does not name: any table, for a rule.
            touched.append((None, {"truncate", "delete", "unfiltered"}))
        if READ in self.classes and not self.kinds:
            touched += [(relation, set()) for relation in statement.reads]
        for relation, kinds in touched:
            names = resolve(relation) if relation is not None else None
            if names is None:
                kinds = kinds | _ANY_ROWS  # what a trigger, a rule or a foreign key's action may do
            if self.kinds and not self.kinds & kinds:
                continue
            if self.tables and names is not None and not any(_matches(self.tables, name) for name in names):
                continue
            return True
        return False


# Kinds a write is as well: a TRUNCATE deletes every row; DDL on a table may drop, rewrite (ALTER
# COLUMN … TYPE … USING) or rename it, after which a rule naming it no longer holds writes to it.
_ANY_ROWS = frozenset({"insert", "update", "delete"})
_IMPLIED = {"truncate": frozenset({"delete"}), "ddl": frozenset({"update", "delete"})}


def _implied(kinds: set[str]) -> set[str]:
    return set().union(*(_IMPLIED.get(kind, ()) for kind in kinds))


def _matches(patterns: tuple[str, ...], name: str) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def _strings(rule: dict[str, Any], key: str, where: str, known: tuple[str, ...] | None) -> tuple[str, ...]:
    value = rule.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"[{where}] {key} must be a list of strings")
    if known is not None:
        bad = sorted(set(value) - set(known))
        if bad:
            raise ConfigError(f"[{where}] {key}: unknown {', '.join(bad)} (known: {', '.join(known)})")
    return tuple(value)


def compile_rules(role: RoleConfig) -> tuple[ApprovalRule, ...]:
    """The role's rules; ConfigError naming the rule at fault."""
    raw = role.rules.get("approval", [])
    if not isinstance(raw, list):
        raise ConfigError(f"[roles.{role.name}] approval must be a list of tables")
    rules = []
    for index, rule in enumerate(raw):
        label = f"roles.{role.name}.approval[{index}]"
        if not isinstance(rule, dict):
            raise ConfigError(f"[{label}] must be a table, e.g. {{ classes = [\"ddl\"] }}")
        unknown = sorted(set(rule) - _KEYS)
        if unknown:
            raise ConfigError(f"[{label}]: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})")
        classes = _strings(rule, "classes", label, CLASSES)
        tables = _strings(rule, "tables", label, None)
        kinds = _strings(rule, "kinds", label, KINDS)
        if not (classes or tables or kinds):
            raise ConfigError(f"[{label}] needs classes, tables or kinds")
        approvers = rule.get("approvers", 1)
        if not isinstance(approvers, int) or isinstance(approvers, bool) or not 1 <= approvers <= 5:
            raise ConfigError(f"[{label}] approvers must be a whole number from 1 to 5")
        rules.append(ApprovalRule(label, frozenset(classes), tables, frozenset(kinds), approvers))
    if rules and "*" in role.rules.get("statements", ()):
        # Such a role's statements are relayed without being analysed: nothing could hold them.
        raise ConfigError(f"[roles.{role.name}] approval: a role that may run anything (statements = [\"*\"]) "
                          "is not analysed, so its statements cannot be held")
    return tuple(rules)
