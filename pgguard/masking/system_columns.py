"""Columns of PostgreSQL's own views that an analysed session never reads raw, whatever [masking] says.

pgguard maps many identities onto one upstream login, and PostgreSQL shows
every backend of a login the statement texts of the others: analyst Alice
reads analyst Bob's `WHERE email = 'bob@…'` in `pg_stat_activity.query`, and
what he filtered on. `pg_stat_statements.query` keeps such texts too (with
constants replaced, but not all of them). And `pg_subscription.subconninfo`
holds connection strings with their passwords, which PostgreSQL itself shows
only to superusers.

These columns are hidden from every session whose roles may not run
everything (`statements = ["*"]`), as if [masking.columns] named them with
the function `null`, and strictly: whatever the role's `strict_inference`, a
statement that filters, joins, sorts or computes on one is refused, since
that reveals the texts one condition at a time. `pg_stat_activity` and the
other views of pg_catalog over `pg_stat_get_activity()` are not expanded by
lineage: their own columns are the sources (only a superuser can redefine
them). A `pg_stat_statements` view, which
lives in whatever schema the extension was installed in, is expanded like
any other view, and its `query` column is hidden on top of that. The
functions that return the texts by other routes are denied by the policy
(policy/scope.py: `pg_stat_get_activity`, `pg_stat_get_backend_activity`),
and where a view or a function's body calls them, out of the policy's sight,
lineage takes what they return to come from `pg_stat_activity.query`.
`pg_stat_statements()` is an extension's, and refused unless a role lists it.
"""

from __future__ import annotations

# Where the texts that pg_stat_get_activity() and pg_stat_get_backend_activity() return are hidden as coming from.
STATEMENT_TEXTS = ("pg_catalog.pg_stat_activity", "query")

# Relation (schema-qualified, or bare: in whichever schema the extension was installed) -> its hidden columns.
_HIDDEN = {
    "pg_catalog.pg_stat_activity": frozenset({"query"}),
    "pg_catalog.pg_subscription": frozenset({"subconninfo"}),
}
_HIDDEN_ANYWHERE = {
    "pg_stat_statements": frozenset({"query"}),
}


def hidden_columns(relation: str) -> frozenset[str]:
    """The columns of `relation` ("schema.name") that analysed sessions never read raw."""
    found = _HIDDEN.get(relation)
    if found is not None:
        return found
    return _HIDDEN_ANYWHERE.get(relation.rsplit(".", 1)[-1], frozenset())


# pg_catalog's views over pg_stat_get_activity(), whose other columns hold no statement text.
_OVER_ACTIVITY = frozenset({"pg_catalog.pg_stat_ssl", "pg_catalog.pg_stat_gssapi", "pg_catalog.pg_stat_replication"})


def opaque(relation: str) -> bool:
    """Whether lineage takes the relation's own columns as the sources, rather than its definition's: the views
    of pg_catalog over the functions that return statement texts, which lineage would take to return them."""
    return relation in _HIDDEN or relation in _OVER_ACTIVITY


def is_hidden(relation: str, column: str) -> bool:
    return column in hidden_columns(relation)
