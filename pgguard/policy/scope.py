"""What each role may do, compiled from its `[roles.NAME]` table.

Patterns are shell-style (`public.*`, `public.orders`, `*`) over
`schema.name`, matched case-sensitively against names as PostgreSQL resolves
them (quoted identifiers keep their case). A caller with several roles gets
the union of their grants: each thing a statement needs must be granted by
some role.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from pgguard.approvals.rules import ApprovalRule, compile_rules
from pgguard.config import ConfigError, RoleConfig
from pgguard.policy.classify import CLASSES, READ, SESSION, TRANSACTION, WRITE

DEFAULT_STATEMENTS = (READ, WRITE, SESSION, TRANSACTION)

# System catalogs are readable by every role, as they are in PostgreSQL, so
# that psql's \d and ORM reflection work; except those that hold values
# (GUARDED_SYSTEM_RELATIONS).
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")
STATISTICS_RELATIONS = (
    "pg_catalog.pg_statistic", "pg_catalog.pg_statistic_ext_data", "pg_catalog.pg_stats",
    "pg_catalog.pg_stats_ext", "pg_catalog.pg_stats_ext_exprs",
)
# System relations that hold data or secrets rather than describe objects, which a role reads only
# where a pattern lets it: sampled column values, the last value of every sequence the login may
# read, the contents of large objects, the server's configuration files (whose functions are
# denied), and password hashes and user mappings' options with their passwords. (pg_subscription's
# connection strings are hidden by column instead, masking/system_columns.py, so that \dRs and pg_dump work.)
GUARDED_SYSTEM_RELATIONS = STATISTICS_RELATIONS + (
    "pg_catalog.pg_sequences", "pg_catalog.pg_largeobject",
    "pg_catalog.pg_file_settings", "pg_catalog.pg_hba_file_rules", "pg_catalog.pg_ident_file_mappings",
    "pg_catalog.pg_authid", "pg_catalog.pg_shadow", "pg_catalog.pg_user_mapping",
)

# What returns other backends' statement texts, which PostgreSQL shows to every backend of the same
# login, and pgguard maps many identities onto one login: read pg_stat_activity instead, whose query
# column masking hides (masking/system_columns.py).
QUERY_TEXT_FUNCTIONS = ("pg_stat_get_activity", "pg_stat_get_backend_activity")

# Built-in functions that run SQL handed to them as text, or read relations or
# cursors named by a value, out of the gateway's sight (and, inside a function
# body, out of masking lineage's).
RUNS_SQL_TEXT = (
    "dblink*", "query_to_xml*", "table_to_xml*", "cursor_to_xml*", "schema_to_xml*", "database_to_xml*",
    "ts_stat", "ts_rewrite",
)

# Advisory locks: a lock an analyst holds can stall the jobs and migrations that wait for it, so they are
# denied by default; but migration tools take one, so a role may lift the denial by listing them in
# allow_functions as `pg_catalog.NAME`. (The unlock functions release only the session's own locks.)
ADVISORY_LOCKS = frozenset({
    f"{prefix}{lock}{shared}" for prefix in ("pg_", "pg_try_") for lock in ("advisory_lock", "advisory_xact_lock")
    for shared in ("", "_shared")
})

# Built-in functions no role may call unless it allows every statement
# class: server files, large objects, other connections, backend signalling,
# configuration, advisory locks (unless lifted, above), replication and WAL
# control, and SQL run from a string. (set_config is judged as the SET it makes.)
DENIED_FUNCTIONS = RUNS_SQL_TEXT + (
    # (and their `_old` twins, which PostgreSQL keeps callable for adminpack 1.0)
    "pg_read_file*", "pg_read_binary_file*", "pg_ls_*", "pg_stat_file", "pg_logdir_ls",
    "pg_hba_file_rules", "pg_ident_file_mappings", "pg_show_all_file_settings",
    "pg_file_*", "lo_*", "loread", "lowrite",
    "pg_cancel_backend", "pg_terminate_backend", "pg_signal_backend",
    "pg_reload_conf", "pg_rotate_logfile*", "pg_advisory_lock*", "pg_advisory_xact_lock*", "pg_try_advisory_*",
    "pg_switch_wal", "pg_create_restore_point", "pg_backup_*", "pg_start_backup", "pg_stop_backup",
    "pg_promote", "pg_wal_replay_*", "pg_logical_*", "pg_replication_*", "pg_create_*_replication_slot",
    "pg_drop_replication_slot", "pg_copy_*_replication_slot", "pg_stat_reset*",
    "pg_log_backend_memory_contexts", "pg_import_system_collations", "binary_upgrade_*",
    "pg_nextoid", "pg_current_logfile", *QUERY_TEXT_FUNCTIONS,
    # What only initdb and CREATE EXTENSION scripts call: it changes the system catalogs.
    "pg_stop_making_pinned_objects", "pg_extension_config_dump",
    # Index maintenance callable from a SELECT.
    "brin_summarize_*", "brin_desummarize_range", "gin_clean_pending_list",
)

_KNOWN_KEYS = {
    "read", "write", "statements", "allow_functions", "deny_functions",
    # Enforced by other parts of pgguard; accepted here.
    "unmasked", "detectors", "strict_inference", "approval",
}


@dataclass(frozen=True)
class Scope:
    role: str
    read: tuple[str, ...]
    write: tuple[str, ...]
    statements: frozenset[str]
    allow_functions: tuple[str, ...]
    deny_functions: tuple[str, ...]
    # What of its statements waits for an approver (docs/approvals.md).
    approval: tuple[ApprovalRule, ...] = ()

    @property
    def unrestricted(self) -> bool:
        return self.statements == frozenset(CLASSES)

    def may_read(self, qualified: str) -> bool:
        if matches(self.read, qualified):
            return True
        schema = qualified.split(".", 1)[0]
        return schema in SYSTEM_SCHEMAS and qualified not in GUARDED_SYSTEM_RELATIONS

    def may_write(self, qualified: str) -> bool:
        return matches(self.write, qualified)

    @property
    def writes_anything(self) -> bool:
        return bool(self.write)

    @property
    def writes_everywhere(self) -> bool:
        """May write every table: what a write that reaches further than pgguard can follow needs."""
        return any(pattern in ("*", "*.*") for pattern in self.write)

    def function_denied(self, name: str) -> bool:
        return not self.unrestricted and (
            matches(DENIED_FUNCTIONS, name) or matches(self.deny_functions, name))

    def lifts_denial(self, name: str) -> bool:
        """Whether the role lists this advisory lock function in allow_functions (as pg_catalog.NAME)."""
        # Only a pattern that names pg_catalog: `*` or `*.*`, meant for user-defined functions, lifts nothing.
        return name in ADVISORY_LOCKS and not matches(self.deny_functions, name) and \
            matches(tuple(p for p in self.allow_functions if p.startswith("pg_catalog.")), f"pg_catalog.{name}")

    def function_allowed(self, qualified: str) -> bool:
        return self.unrestricted or matches(self.allow_functions, qualified)


def qualify(schema: str, name: str) -> str:
    """`schema.name` as patterns see it.

    A part holding a dot or a double quote is quoted, so that `public.*`
    cannot match table `t` of a schema named "public.x".
    """
    return ".".join(part if "." not in part and '"' not in part else '"' + part.replace('"', '""') + '"'
                    for part in (schema, name))


def matches(patterns: tuple[str, ...], name: str) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def _strings(rules: dict[str, Any], key: str, where: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    value = rules.get(key, list(default))
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"[{where}] {key} must be a list of strings")
    return tuple(value)


def compile_scope(role: RoleConfig) -> Scope:
    where = f"roles.{role.name}"
    unknown = sorted(set(role.rules) - _KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"[{where}]: unknown key(s) {', '.join(unknown)}")
    statements = _strings(role.rules, "statements", where, DEFAULT_STATEMENTS)
    if "*" in statements:
        classes = frozenset(CLASSES)
    else:
        bad = sorted(set(statements) - set(CLASSES))
        if bad:
            raise ConfigError(f"[{where}] statements: unknown class(es) {', '.join(bad)}"
                              f" (known: {', '.join(CLASSES)}, or *)")
        classes = frozenset(statements)
    allow_functions = _strings(role.rules, "allow_functions", where)
    for pattern in allow_functions:
        if pattern.startswith("pg_catalog.") and \
                not any(fnmatchcase(f"pg_catalog.{name}", pattern) for name in ADVISORY_LOCKS):
            raise ConfigError(f"[{where}] allow_functions: {pattern} names no advisory lock function; built-in"
                              " functions are allowed unless denied, and of the denied only the advisory locks"
                              f" ({', '.join(sorted(ADVISORY_LOCKS))}) can be allowed")
    return Scope(
        role=role.name,
        read=_strings(role.rules, "read", where),
        write=_strings(role.rules, "write", where),
        statements=classes,
        allow_functions=allow_functions,
        deny_functions=_strings(role.rules, "deny_functions", where),
        approval=compile_rules(role),
    )
