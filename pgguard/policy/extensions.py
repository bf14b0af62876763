"""Extensions whose functions, operators and casts count as PostgreSQL's own.

An extension installed in `public` (citext, hstore, pg_trgm …) puts its operators and functions on
the search path, and then `=` between two texts may be citext's: were they user-defined for
pgguard, nearly every statement would be refused. The functions of the extensions listed here are
written in C (or SQL over PostgreSQL's own functions): they compute their result from their
arguments, run no SQL text, read no table and reach nothing outside the server. So the policy lets
every role call them, as it lets it call `pg_catalog`'s, and masking takes their result to derive
from their arguments alone.

What belongs to an extension comes from the catalog (`pg_depend` entries of type 'e', of objects a
superuser owns, as CREATE EXTENSION makes them; what the extension's owner adds with `ALTER EXTENSION
… ADD` stays its own), never from a name: a function of the same name and arguments in another
schema, or one a user made beside the extension's, stays user-defined (catalog.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pgguard.config import ConfigError

# Checked one by one: C functions over their arguments only, no SQL text, no files, no other servers.
BUILT_IN = frozenset({
    "citext", "hstore", "pg_trgm", "fuzzystrmatch", "unaccent", "ltree", "isn", "cube", "intarray",
    "btree_gin", "btree_gist", "uuid-ossp", "pgcrypto",
})
# Never trusted, not even where the configuration asks: each runs SQL text, reaches outside the
# server, or reads what masking cannot follow.
NEVER = {
    "dblink": "it connects to other servers and runs the SQL text it is given",
    "postgres_fdw": "it reaches other servers",
    "file_fdw": "it reads server files and runs programs",
    "tablefunc": "crosstab() and connectby() run the SQL text they are given",
    "xml2": "xpath_table() runs the SQL text it is given",
    "adminpack": "it writes server files",
    "pageinspect": "it reads any table's raw pages, hidden columns too",
    "pg_buffercache": "it shows which pages of which relations other sessions read",
    "pg_stat_statements": "it shows other sessions' statements",
    "pgstattuple": "it reads relations named as text",
    "pg_visibility": "it reads relations named as text",
    "pg_freespacemap": "it reads relations named as text",
    "pgrowlocks": "it reads relations named as text",
    "pg_prewarm": "it reads relations named as text",
    "amcheck": "it reads relations named as text",
    "pg_surgery": "it changes tables' rows in place",
    "pg_walinspect": "it reads the write-ahead log, every table's changes",
    "lo": "lo_manage() unlinks large objects",
    "plpgsql": "its functions run SQL",
    "plperl": "a procedural language runs any code",
    "plperlu": "a procedural language runs any code",
    "plpython3u": "a procedural language runs any code",
    "pltcl": "a procedural language runs any code",
    "pltclu": "a procedural language runs any code",
}
# Members of a trusted extension that stay user-defined: each keeps its argument where the session
# reads it back (`set_limit(x)` for `show_limit()`, `isn_weak(b)` for `isn_weak()`), as set_config does.
_KEEPING = {"pg_trgm": frozenset({"set_limit"}), "isn": frozenset({"isn_weak"})}
# Languages of members that count as the extension's own code: C and PostgreSQL's internal functions
# compute from their arguments; SQL bodies are followed by masking like any other.
TRUSTED_LANGUAGES = frozenset({"c", "internal", "sql"})
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class TrustedExtensions:
    names: frozenset[str]

    def trusts(self, extension: str, function: str = "") -> bool:
        """Whether `function` (schema.name, or a name), a member of `extension` ("" for none), counts as built in."""
        return extension in self.names and function.rsplit(".", 1)[-1] not in _KEEPING.get(extension, ())

    def trusts_all(self, owners: frozenset[str] | None, name: str) -> bool:
        """Whether every object of a name belongs to a trusted extension (`owners`: catalog.py's members)."""
        return bool(owners) and all(self.trusts(owner, name) for owner in owners or ())


def trusted_extensions(table: dict[str, Any]) -> TrustedExtensions:
    """The [policy] section's `trusted_extensions` (added to the built-in list) and `untrusted_extensions`
    (taken off it)."""
    unknown = sorted(set(table) - {"trusted_extensions", "untrusted_extensions"})
    if unknown:
        raise ConfigError(f"[policy]: unknown key(s) {', '.join(unknown)}")
    added, removed = (_names(table, key) for key in ("trusted_extensions", "untrusted_extensions"))
    for name in sorted(added):
        if name in NEVER:
            raise ConfigError(f"[policy] trusted_extensions: {name} cannot be trusted: {NEVER[name]}")
    for name in sorted(removed - BUILT_IN):
        raise ConfigError(f"[policy] untrusted_extensions: {name} is not on the built-in list"
                          f" ({', '.join(sorted(BUILT_IN))})")
    both = sorted(added & removed)
    if both:
        raise ConfigError(f"[policy]: {', '.join(both)} both trusted and untrusted")
    return TrustedExtensions((BUILT_IN | added) - removed)


def _names(table: dict[str, Any], key: str) -> frozenset[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) and _NAME.fullmatch(item) for item in value):
        raise ConfigError(f"[policy] {key} must be a list of extension names")
    return frozenset(value)
