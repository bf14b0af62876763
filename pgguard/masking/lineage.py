"""Column lineage: which table columns each output column of a query derives from.

Masking by output column name is defeated by one alias; masking by lineage
is not. This walks pglast's JSON parse tree of a query and follows every
value to the table columns it comes from, through aliases, expressions,
casts, CASE, subqueries, CTEs (recursive too), set operations, LATERAL,
joins, `*` and `t.*` expansion, and whole-row references (`t`,
`row_to_json(t)`), and into the bodies of user-defined functions
(pgguard/masking/bodies.py): a call returns whatever its body reads. It also collects the columns a query only filters,
groups, joins, sorts, compares or counts rows by, which reveal values by
inference, and, for INSERT, UPDATE and MERGE, what each written column
receives.

It is sans-IO: relations' columns and views' definitions come from the
caller. Where lineage cannot be established (a relation whose columns are
unknown, a function returning rows) the result says so in `uncertain`, and
the caller refuses the query if it touches a sensitive column at all. A
function whose body cannot be followed (dynamic SQL, a language other than
SQL and PL/pgSQL, calls nested too deeply) is taken to read every sensitive
column.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from pglast import parser

from pgguard.masking.bodies import Routine, body_of
from pgguard.masking.encodings import ENCODING_NAMES, cleaned
from pgguard.masking.system_columns import STATEMENT_TEXTS, hidden_columns, opaque
from pgguard.policy.scope import QUERY_TEXT_FUNCTIONS, RUNS_SQL_TEXT, STATISTICS_RELATIONS, matches
from pgguard.policy.tree import parse_tree

Node = dict[str, Any]

# Aggregates whose result reveals nothing of the values they count.
_COUNTING = frozenset({"count"})
# Set-returning functions: in a target list, how many rows they return can
# reveal their arguments (`generate_series(1, ascii(ssn))`), whatever the
# values in those rows become.
_SET_RETURNING = frozenset({
    "generate_series", "generate_subscripts", "unnest", "regexp_matches", "regexp_split_to_table",
    "string_to_table", "json_array_elements", "json_array_elements_text", "jsonb_array_elements",
    "jsonb_array_elements_text", "json_each", "json_each_text", "jsonb_each", "jsonb_each_text",
    "json_object_keys", "jsonb_object_keys", "jsonb_path_query", "json_populate_recordset",
    "jsonb_populate_recordset", "json_to_recordset", "jsonb_to_recordset", "ts_stat", "ts_debug",
})
# Built-ins that keep their arguments where the session reads them back as
# they are: a setting (SHOW, current_setting, the ParameterStatus of
# application_name), a notification to the listeners, a sequence's value.
_KEEPING = frozenset({"set_config", "pg_notify", "setval"})
# Built-ins through which a value may pass for strict roles (docs/masking.md, "Strict inference"): for
# every type they take, with these numbers of arguments, they cannot fail, take time linear in the
# value's size, and return one value per call or group. Each is PostgreSQL's own only where no
# user-defined function shares its name.
TOTAL_FUNCTIONS: dict[str, range] = {
    "lower": range(1, 2), "upper": range(1, 2), "md5": range(1, 2),
    "length": range(1, 2), "char_length": range(1, 2), "character_length": range(1, 2),
    "octet_length": range(1, 2),
    # With one argument only: trimming the characters given makes what is left as long as the value's run of
    # them, which a sort's spill (pg_stat_database.temp_bytes) measures: `ltrim(ssn, '4')` tests the digits.
    "btrim": range(1, 2), "ltrim": range(1, 2), "rtrim": range(1, 2),
    "concat": range(1, 101), "concat_ws": range(1, 101),
    "string_agg": range(2, 3),
}
# Total functions that take a hidden column's own value only, cast or not, never one computed from it:
# - concat, concat_ws and string_agg, whose result is as long as their arguments together, or a group's:
#   nested (`concat(y, y, …)` of a subquery's `concat(x, x, …)`) or over many rows, they would multiply
#   the length of what a total function made of it until the server fails on a value of more than 1 GB;
# - lower and upper, whose result depends on the collation: `upper(email COLLATE "tr-x-icu")` makes each
#   `i` an `İ`, a byte longer, and a sort's spill of many copies (pg_stat_database.temp_bytes) counts them.
#   The column's own collation is the database's choice; one given in the statement is not.
_OWN_VALUE_ONLY = frozenset({"concat", "concat_ws", "string_agg", "lower", "upper"})
# Casts that cannot fail: to text, whose output functions every type has and which never fail. Not to an
# array of text, which parses the value. Not with a length limit (`varchar(n)`, `char(n)`, `name`'s 63 bytes,
# `"char"`'s one): the size of what a cut keeps, for n = 1, 2 …, tells where the value's non-ASCII
# characters are, and a sort's spill measures it (pg_stat_database.temp_bytes).
_TOTAL_CASTS = frozenset({"text", "varchar", "bpchar"})
# Nodes that hand values on without working on them.
_PASSING = frozenset({"List", "CollateClause", "RowExpr", "NamedArgExpr", "ResTarget", "MultiAssignRef", "SortBy",
                      "WindowDef", "GroupingSet"})
# What other nodes do with a value, for refusals.
_DOING = {"BoolExpr": "AND, OR or NOT", "NullTest": "IS NULL", "BooleanTest": "IS TRUE, FALSE or UNKNOWN",
          "CoalesceExpr": "COALESCE", "MinMaxExpr": "GREATEST or LEAST", "A_ArrayExpr": "ARRAY[…]",
          "A_Expr": "BETWEEN", "A_Indices": "a subscript"}
_OPERATOR_KINDS = {"AEXPR_DISTINCT": "IS DISTINCT FROM", "AEXPR_NOT_DISTINCT": "IS NOT DISTINCT FROM",
                   "AEXPR_NULLIF": "NULLIF", "AEXPR_IN": "IN", "AEXPR_LIKE": "LIKE", "AEXPR_ILIKE": "ILIKE",
                   "AEXPR_SIMILAR": "SIMILAR TO"}
_MAX_VIEW_DEPTH = 8
# A_Expr kinds named by a keyword, not an operator: every other kind calls the operator it names.
_BETWEEN = frozenset({"AEXPR_BETWEEN", "AEXPR_NOT_BETWEEN", "AEXPR_BETWEEN_SYM", "AEXPR_NOT_BETWEEN_SYM"})
# Calls followed into bodies: how deep, and how many bodies per statement.
_MAX_CALL_DEPTH = 8
_MAX_BODIES = 64
_CURSOR_OPT_HOLD = 0x20
# Columns every table has, none of which holds a value of a user column.
_SYSTEM_COLUMNS = frozenset({"ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"})


@dataclass(frozen=True)
class SourceColumn:
    relation: str  # schema.table
    column: str

    def __str__(self) -> str:
        return f"{self.relation}.{self.column}"


@dataclass(frozen=True)
class OutputColumn:
    name: str
    sources: frozenset[SourceColumn]
    # The value is one source column's value, unchanged but for casts.
    direct: bool


@dataclass
class Lineage:
    columns: list[OutputColumn] | None  # None: the output's shape is unknown
    filters: set[SourceColumn] = field(default_factory=set)
    touched: set[SourceColumn] = field(default_factory=set)
    uncertain: list[str] = field(default_factory=list)
    # Names whose rows come later (DECLARE, PREPARE) or come from earlier
    # ones (FETCH, EXECUTE): the caller pairs them up.
    defines: str | None = None
    uses: str | None = None
    # Which names: "S" prepared statements (PREPARE, EXECUTE; shared with the
    # protocol's Parse), "P" portals (DECLARE, FETCH; shared with Bind's).
    namespace: str = ""
    holdable: bool = False  # DECLARE ... WITH HOLD: the cursor outlives its transaction
    # A relation the catalog does not know (created since it was read): what
    # comes from it may be anything, a view over a sensitive table included.
    unresolved: bool = False
    # INSERT, UPDATE, MERGE: for each column written, the columns it names
    # (more than one through a view; None if unknown) and what the value written derives from.
    written: list[tuple[frozenset[SourceColumn] | None, frozenset[SourceColumn]]] = field(default_factory=list)
    # What the values written into a column derive from where they are not one column's value unchanged:
    # a mask made for the column's values shows other parts of them (`'x@' || replace(email, '@', '.')`).
    derived_writes: set[SourceColumn] = field(default_factory=set)
    # COPY: its CopyStmt (options, direction). Rows go out as CopyData, with
    # no RowDescription to give their types: a value cast, or read through a
    # view (which may cast it), is not direct there.
    copy: Node | None = None
    # INSERT, UPDATE, DELETE, MERGE: every column of the rows it changes, which its errors may
    # quote whole (`Failing row contains (…)`) or in part (`Key (email)=(…) already exists`).
    changed: set[SourceColumn] = field(default_factory=set)
    # CREATE TABLE ... AS EXECUTE: the prepared statement whose rows go into a new table.
    stores: str | None = None
    # User-defined functions called, and the columns each may read (to name them in refusals).
    functions: dict[str, set[SourceColumn]] = field(default_factory=dict)
    # Columns whose values something other than a total function (see TOTAL_FUNCTIONS) worked on, and
    # the first such thing for each: a cast that can fail, an operator, a CASE condition, a call. Whether
    # it fails, how long it takes or how many rows it makes depends on the value, which the client sees
    # (`1 / (CASE WHEN ssn LIKE '4%' THEN 0 ELSE 1 END)`): strict roles are refused it on hidden columns.
    computed: dict[SourceColumn, str] = field(default_factory=dict)
    # The client_encoding values the statement sets (SET, SET NAMES, set_config(); None where not a
    # constant): the server fails to send a row with a character the encoding cannot represent, hidden
    # values too, so a client encoding is an oracle on them (see masking/results.py).
    client_encodings: list[str | None] = field(default_factory=list)


class Relations:
    """What lineage needs to know of the database; the gateway's catalog provides it."""

    def resolve(self, schema: str | None, name: str) -> str | None:
        """The schema-qualified relation a name refers to, or None if unknown or ambiguous."""
        raise NotImplementedError

    def columns(self, relation: str) -> list[str] | None:
        """The relation's columns in order, or None if unknown."""
        raise NotImplementedError

    def view_definition(self, relation: str) -> str | None:
        """The SELECT of a view or materialized view, or None for a table."""
        raise NotImplementedError

    def functions(self, schema: str | None, name: str, operator: bool = False) -> list[Routine] | None:
        """The user-defined functions (or operators' functions) a name may call; [] if only built-ins, None if unknown."""
        raise NotImplementedError

    def sensitive(self) -> frozenset[SourceColumn]:
        """Every sensitive column: what a function whose body cannot be followed may read."""
        raise NotImplementedError

    def trusted(self, routine: Routine) -> bool:
        """Whether a function is of an extension trusted to compute from its arguments alone
        (pgguard/policy/extensions.py)."""
        return False


def lineage(sql: str, relations: Relations) -> Lineage:
    """The lineage of the last statement of `sql`."""
    found = lineages(sql, relations)
    return found[-1] if found else Lineage([])


def lineages(sql: str, relations: Relations) -> list[Lineage]:
    """The lineage of every statement of `sql`, in order."""
    return lineages_of(parse_tree(sql), relations)


def erased_lineages(tree: Node, relations: Relations) -> list[Lineage] | None:
    """`lineages_of` an erased tree (pgguard/policy/shapes.py); None where a lineage keeps its
    statement's tree for later (COPY's options), which the erased one cannot stand for."""
    found = lineages_of(tree, relations)
    return None if any(lineage.copy is not None for lineage in found) else found


def lineages_of(tree: Node, relations: Relations) -> list[Lineage]:
    """The lineage of every statement of a parse tree, in order."""
    out = []
    for raw in tree.get("stmts", []):
        (kind, node), = raw["stmt"].items()
        out.append(_Analyzer(relations).statement(kind, node))
    return out


@dataclass
class _Relation:
    """An item in a FROM clause, as a query sees it."""

    name: str | None
    columns: list[OutputColumn] | None
    # For relations of unknown shape (functions in FROM): what any column derives from.
    fallback: frozenset[SourceColumn] = frozenset()
    # Columns a USING or NATURAL join merged: `t.x` still names this one, a bare `x` or `*` the merged one.
    merged: frozenset[str] = frozenset()
    # A table or view without an alias: its schema, which `schema.table.column` names it by too.
    schema: str | None = None

    @property
    def visible(self) -> list[OutputColumn] | None:
        """The columns a bare name or `*` sees."""
        return None if self.columns is None else [c for c in self.columns if c.name not in self.merged]


@dataclass
class _Scope:
    relations: list[_Relation]
    ctes: dict[str, _Relation]
    outer: _Scope | None = None


@dataclass
class _Calls:
    """The function bodies followed for one statement."""

    stack: list[str] = field(default_factory=list)  # the functions being followed, outermost first
    followed: int = 0


class _Analyzer:
    def __init__(self, relations: Relations, depth: int = 0, calls: _Calls | None = None,
                 in_body: bool = False) -> None:
        self.relations = relations
        self.depth = depth
        self.calls = calls or _Calls()
        # In a function's body, a name that is no column is a parameter or a
        # variable: its value comes from the arguments or from what the body
        # read, both of which the call's value derives from anyway.
        self.in_body = in_body
        self.result = Lineage([])

    # -- statements ---------------------------------------------------------------

    def statement(self, kind: str, node: Node) -> Lineage:
        if kind == "SelectStmt":
            self.result.columns = self.select(node, None)
            if node.get("intoClause"):  # SELECT ... INTO: a new table, no rows
                self._store(self.result.columns)
                self.result.columns = None
        elif kind == "CreateTableAsStmt":
            (inner_kind, inner), = node["query"].items()
            if inner_kind == "ExecuteStmt":
                self.result.stores = inner.get("name")
            elif node.get("objtype") != "OBJECT_MATVIEW":
                # A materialized view is read through its definition, masked;
                # a table made of the rows is read as a table of its own.
                self._store(self.statement(inner_kind, inner).columns)
            self.result.columns = None
        elif (kind == "ViewStmt" and _temporary(node["view"])
              or kind == "RuleStmt" and node.get("event") == "CMD_SELECT"):
            # A temporary view is its session's own, in no catalog snapshot, and PostgreSQL finds it before
            # any table of the same name: nothing would mask what it reads. (An ON SELECT rule makes a table,
            # perhaps a temporary one, a view.) What it reads goes out as into a new table.
            for query in [node["query"]] if kind == "ViewStmt" else node.get("actions", []):
                (inner_kind, inner), = query.items()
                self._store(self.statement(inner_kind, inner).columns)
            self.result.columns = None
        elif kind in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            self.result.columns = self._returning(node)
        elif kind == "ExplainStmt":
            (inner_kind, inner), = node["query"].items()
            self.statement(inner_kind, inner)
            # A plan shows the query's own text and estimates, never row values.
            self.result.columns = [OutputColumn("QUERY PLAN", frozenset(), False)]
            if any(option.get("DefElem", {}).get("defname") == "analyze" for option in node.get("options", [])):
                # The run's sort, hash and disk sizes: those of what it computed from hidden values too
                # (`ltrim(email, 'a…z.')` sorted on disk takes as much room as the letters it left).
                self._computed(self.result.touched | self.result.filters, "EXPLAIN ANALYZE, which shows sizes")
        elif kind in ("DeclareCursorStmt", "PrepareStmt"):
            (inner_kind, inner), = node["query"].items()
            self.statement(inner_kind, inner)
            self.result.defines = node.get("portalname") or node.get("name")
            self.result.namespace = "P" if kind == "DeclareCursorStmt" else "S"
            self.result.holdable = bool(node.get("options", 0) & _CURSOR_OPT_HOLD)
        elif kind in ("FetchStmt", "ExecuteStmt"):
            self.result.columns = None
            self.result.uses = node.get("portalname") or node.get("name")
            self.result.namespace = "P" if kind == "FetchStmt" else "S"
        elif kind == "CopyStmt":
            self.result.copy = node
            self._copy(node)
        elif kind == "CallStmt":
            # A procedure's OUT and INOUT arguments come back as a row, which holds whatever its body read.
            self.result.columns = None
            self._sources({"FuncCall": node.get("funccall", {})}, _Scope([], {}))
        elif kind == "VariableSetStmt":
            self.result.columns = None
            if node.get("name") == "client_encoding" and node.get("kind") == "VAR_SET_VALUE":
                self.result.client_encodings.extend(_string(arg) for arg in node.get("args", []))
        elif kind == "DoStmt":
            # An anonymous code block is not followed: it may read, RAISE or return as a notice anything.
            self.result.columns = None
            self.result.touched |= self.relations.sensitive()
        else:
            # SHOW, utility statements: rows, if any, come from no table.
            self.result.columns = None
        return self.result

    def _returning(self, node: Node) -> list[OutputColumn]:
        ctes = self._ctes(node, None)
        scope = _Scope([], ctes)
        target = self._range_var(node["relation"], scope)
        scope.relations.append(target)
        # Through a view, the failing row is the whole row of the table under it.
        tables = {source.relation for column in target.columns or [] for source in column.sources}
        self.result.changed.update(source for source in self.relations.sensitive() if source.relation in tables)
        if "sourceRelation" in node:  # MERGE ... USING
            scope.relations.extend(self._from_item(node["sourceRelation"], scope))
        for key in ("fromClause", "usingClause"):
            for item in node.get(key, []):
                scope.relations.extend(self._from_item(item, scope))
        for key in ("whereClause", "targetList", "joinCondition"):
            if key in node:
                self._filter(node[key], scope)
        self._writes(node, target, _Scope([], ctes), scope)
        returning = (node.get("returningClause") or {}).get("exprs") or node.get("returningList", [])
        return self._targets(returning, scope)

    def _store(self, columns: list[OutputColumn] | None) -> None:
        """Rows that go into a new table (SELECT INTO, CREATE TABLE AS), whose columns nothing masks."""
        found = set().union(*(c.sources for c in columns)) if columns is not None else set(self.result.touched)
        self.result.written.append((None, frozenset(found)))

    def _writes(self, node: Node, target: _Relation, outside: _Scope, scope: _Scope) -> None:
        """What each written column receives: values copied out of a hidden column stay readable there."""
        def column(name: str | None) -> frozenset[SourceColumn] | None:
            for candidate in target.columns or []:
                if candidate.name == name:
                    return candidate.sources
            return None

        def write(name: str | None, found: set[SourceColumn] | frozenset[SourceColumn], direct: bool) -> None:
            self.result.written.append((column(name), frozenset(found)))
            if not direct:
                self.result.derived_writes.update(found)

        def assign(targets: list[Node], seen: _Scope) -> None:
            for item in targets:
                res = item.get("ResTarget", {})
                value = res.get("val", {})
                if "MultiAssignRef" in value:
                    value = value["MultiAssignRef"].get("source")
                found, direct = self._sources(value, seen)
                write(res.get("name"), found, direct)

        # INSERT … ON CONFLICT DO UPDATE reads the row it could not insert as `excluded`.
        excluded = _Relation("excluded", [OutputColumn(c.name, frozenset(), False) for c in target.columns or []])
        if "selectStmt" in node:  # INSERT: its rows, by position into the columns listed or all of them
            (_, query), = node["selectStmt"].items()
            rows = self.select(query, outside)
            names = [item["ResTarget"]["name"] for item in node.get("cols", [])] or \
                [c.name for c in target.columns or []]
            if rows is None or target.columns is None or len(rows) > len(names):
                everything = frozenset().union(*(c.sources for c in rows or []), self.result.touched)
                self.result.written.append((None, everything))
                excluded = _Relation("excluded", None, everything)
            else:
                inserted = dict(zip(names, rows))
                for name, row in inserted.items():
                    write(name, row.sources, row.direct)
                excluded = _Relation("excluded", [replace(inserted[c.name], name=c.name) if c.name in inserted else c
                                                  for c in excluded.columns or []])
        if node.get("onConflictClause"):
            conflict = node["onConflictClause"]
            seen = _Scope(scope.relations + [excluded], scope.ctes, scope.outer)
            self._filter(conflict.get("whereClause"), seen)
            assign(conflict.get("targetList", []), seen)
        assign(node.get("targetList", []), scope)  # UPDATE ... SET
        for clause in node.get("mergeWhenClauses", []):
            when = clause.get("MergeWhenClause", {})
            self._filter(when.get("condition"), scope)
            values = when.get("values")
            if values:
                names = [item["ResTarget"].get("name") for item in when.get("targetList", [])] or \
                    [c.name for c in target.columns or []]
                for index, value in enumerate(values):
                    found, direct = self._sources(value, scope)
                    write(names[index] if index < len(names) else None, found, direct)
            else:
                assign(when.get("targetList", []), scope)

    def _copy(self, node: Node) -> None:
        if "query" in node:
            (kind, inner), = node["query"].items()
            self.statement(kind, inner)
            return
        scope = _Scope([], {})
        relation = self._range_var(node["relation"], scope)
        columns = relation.columns
        attlist = [item["String"]["sval"] for item in node.get("attlist", [])]
        if attlist and columns is not None:
            by_name = {column.name: column for column in columns}
            columns = [by_name[name] for name in attlist if name in by_name]
        self.result.columns = columns

    # -- SELECT -------------------------------------------------------------------

    def select(self, node: Node, outer: _Scope | None) -> list[OutputColumn] | None:
        op = node.get("op", "SETOP_NONE")
        ctes = self._ctes(node, outer)
        if op != "SETOP_NONE":
            scope = _Scope([], ctes, outer)
            left = self.select(node["larg"], scope)
            right = self.select(node["rarg"], scope)
            merged = _union(left, right)
            if not (op == "SETOP_UNION" and node.get("all")):
                # UNION, INTERSECT and EXCEPT compare rows: whether a guessed
                # value comes out once or not at all reveals it.
                for column in merged or []:
                    self.result.filters |= column.sources
            self._by_output(node, merged, scope)
            return merged
        if "valuesLists" in node:
            scope = _Scope([], ctes, outer)
            rows = [self._targets([{"ResTarget": {"val": value}} for value in row["List"]["items"]], scope)
                    for row in node["valuesLists"]]
            merged: list[OutputColumn] | None = rows[0] if rows else []
            for row in rows[1:]:
                merged = _union(merged, row)
            # PostgreSQL names VALUES' columns column1, column2 …, whatever they hold.
            return _rename(merged, [f"column{index}" for index in range(1, len(merged or []) + 1)])
        scope = _Scope([], ctes, outer)
        for item in node.get("fromClause", []):
            scope.relations.extend(self._from_item(item, scope))
        for key in ("whereClause", "havingClause", "windowClause", "lockingClause"):
            self._filter(node.get(key), scope)
        targets = self._targets(node.get("targetList", []), scope)
        self._by_output(node, targets, scope)
        return targets

    def _by_output(self, node: Node, targets: list[OutputColumn] | None, scope: _Scope) -> None:
        """ORDER BY, GROUP BY, DISTINCT [ON], LIMIT and OFFSET: filters, which may name output columns.

        `ORDER BY 2` and `GROUP BY 1` mean the second and first output
        columns, and a bare name in ORDER BY is an output column's before an
        input column's; plain DISTINCT compares every output column.
        """
        by_name = {column.name: column for column in targets or []}
        for key in ("groupClause", "sortClause", "distinctClause"):
            for expression in _grouped(node.get(key) or []):
                if key == "distinctClause" and not expression:
                    for column in targets or []:  # plain DISTINCT
                        self.result.filters |= column.sources
                    continue
                position = _integer(expression)
                if position is not None:
                    if targets is None or not 0 < position <= len(targets):
                        self.result.uncertain.append(f"{key} refers to an output column pgguard cannot follow")
                        continue
                    self.result.filters |= targets[position - 1].sources
                    continue
                name = _bare_name(expression)
                if name is not None and name in by_name and (key != "groupClause" or not self._resolves(name, scope)):
                    self.result.filters |= by_name[name].sources
                    continue
                self._filter(expression, scope)
        for key in ("limitCount", "limitOffset"):
            self._filter(node.get(key), scope)

    def _resolves(self, name: str, scope: _Scope) -> bool:
        """Whether a bare column name is an input column of the scope (GROUP BY prefers those)."""
        return any(relation.visible is None or any(c.name == name for c in relation.visible)
                   for relation in scope.relations)

    def _ctes(self, node: Node, outer: _Scope | None) -> dict[str, _Relation]:
        clause = node.get("withClause") or {}
        visible: dict[str, _Relation] = dict(outer.ctes) if outer else {}
        items = clause.get("ctes", [])
        if clause.get("recursive"):
            # WITH RECURSIVE: an item sees every other, later ones too; PostgreSQL plans them in
            # the order they refer to each other.
            ordered = _by_reference(items)
            if ordered is None:
                self.result.uncertain.append("WITH RECURSIVE items refer to each other in a circle")
            items = ordered or items
        for item in items:
            cte = item["CommonTableExpr"]
            name = cte["ctename"]
            (kind, query), = cte["ctequery"].items()
            scope = _Scope([], visible, outer)
            aliases = [alias["String"]["sval"] for alias in cte.get("aliascolnames", [])]
            if kind != "SelectStmt":
                columns = self._data_modifying(kind, query)
            elif clause.get("recursive") and query.get("op", "SETOP_NONE") != "SETOP_NONE":
                # The recursive term first sees the CTE as the non-recursive term;
                # each pass folds in what one more step of recursion adds (a value
                # may move a column further at every step), until nothing changes.
                # Sources only grow, so this ends.
                columns = self.select(query["larg"], scope)
                while True:
                    visible[name] = _Relation(name, _rename(columns, aliases))
                    again = self.select(query, scope)
                    if again == columns:
                        break
                    columns = again
            else:
                columns = self.select(query, scope)
            visible[name] = _Relation(name, self._search_and_cycle(cte, _rename(columns, aliases)))
        return visible

    def _search_and_cycle(self, cte: Node, columns: list[OutputColumn] | None) -> list[OutputColumn] | None:
        """A recursive CTE's SEARCH and CYCLE clauses: the columns they add after its own, in PostgreSQL's
        order (the sequence, the cycle mark, the path), each derived from the columns it names.

        CYCLE compares each new row's columns with those of the rows before it and ends the recursion where
        they are equal: how many rows come out tells whether a value equals what the recursion made of it
        (`upper(s)` equals s unless s holds a lower case letter). That is a filter."""
        search, cycle = cte.get("search_clause"), cte.get("cycle_clause")
        if columns is None or not (search or cycle):
            return columns
        by_name = {column.name: column.sources for column in columns}

        def named(items: list[Node]) -> frozenset[SourceColumn]:
            found: set[SourceColumn] = set()
            for item in items:
                name = item["String"]["sval"]
                if name not in by_name:  # PostgreSQL refuses it; pgguard cannot place it
                    self.result.uncertain.append(f"column {name} of a SEARCH or CYCLE clause cannot be resolved")
                found |= by_name.get(name, set())
            return frozenset(found)

        added = list(columns)
        if search:
            added.append(OutputColumn(search["search_seq_column"], named(search.get("search_col_list", [])), False))
        if cycle:
            compared = named(cycle.get("cycle_col_list", []))
            self.result.filters |= compared
            added.append(OutputColumn(cycle["cycle_mark_column"], compared, False))
            added.append(OutputColumn(cycle["cycle_path_column"], compared, False))
        return added

    def _data_modifying(self, kind: str, node: Node) -> list[OutputColumn] | None:
        """A data-modifying statement in a CTE: its RETURNING list, its sets shared with ours."""
        inner = _Analyzer(self.relations, self.depth, self.calls, self.in_body)
        inner.result = Lineage([], self.result.filters, self.result.touched, self.result.uncertain,
                               written=self.result.written, changed=self.result.changed,
                               derived_writes=self.result.derived_writes,
                               functions=self.result.functions, computed=self.result.computed,
                               client_encodings=self.result.client_encodings)
        columns = inner.statement(kind, node).columns
        self.result.unresolved |= inner.result.unresolved
        return columns

    # -- FROM ---------------------------------------------------------------------

    def _from_item(self, item: Node, scope: _Scope) -> list[_Relation]:
        (kind, node), = item.items()
        if kind == "RangeVar":
            return [self._range_var(node, scope)]
        if kind == "RangeSubselect":
            (_, query), = node["subquery"].items()
            inner_scope = scope if node.get("lateral") else _Scope([], scope.ctes, scope.outer)
            columns = self.select(query, inner_scope)
            alias = node.get("alias", {})
            return [_Relation(alias.get("aliasname"), _rename(columns, _column_aliases(alias)))]
        if kind == "RangeTableSample":  # `customers TABLESAMPLE SYSTEM (10)`: some of the table's rows
            self._filter([node.get("args"), node.get("repeatable")], scope)
            return self._from_item(node["relation"], scope)
        if kind == "JoinExpr":
            left = self._from_item(node["larg"], scope)
            # A LATERAL item on the right sees the left side's columns.
            right = self._from_item(node["rarg"], _Scope(scope.relations + left, scope.ctes, scope.outer))
            relations = self._merge(node, left, right)
            joined = _Scope(scope.relations + relations, scope.ctes, scope.outer)
            self._filter(node.get("quals"), joined)
            if "alias" in node:
                columns = _concat(relation.visible for relation in relations)
                fallback = frozenset().union(*(relation.fallback for relation in relations))
                return [_Relation(node["alias"]["aliasname"], _rename(columns, _column_aliases(node["alias"])),
                                  fallback)]
            return relations
        # RangeFunction, RangeTableFunc, JSON_TABLE …: rows from a function.
        sources = frozenset(self._sources(node, scope)[0])
        if sources:
            called = [".".join(p["String"]["sval"] for p in item["List"]["items"][0]["FuncCall"]["funcname"])
                      for item in node.get("functions", []) if "FuncCall" in item["List"]["items"][0]]
            named = f" ({', '.join(called)})" if called else ""
            self.result.uncertain.append(f"a function in FROM{named} returns rows derived from columns")
        alias = node.get("alias", {})
        return [_Relation(alias.get("aliasname"), None, sources)]

    def _merge(self, node: Node, left: list[_Relation], right: list[_Relation]) -> list[_Relation]:
        """A join's relations; for USING and NATURAL, the merged columns first, as PostgreSQL orders them.

        Each merged column compares both sides' and is the left side's value (the right side's in a
        RIGHT JOIN, either in a FULL JOIN). A bare name and `*` see the merged column; `t.x` still
        names t's own. `JOIN … USING (x) AS u` names the merged columns u.
        """
        left_columns = _concat(r.visible for r in left)
        right_columns = _concat(r.visible for r in right)
        names = [using["String"]["sval"] for using in node.get("usingClause", [])]
        if node.get("isNatural"):
            if left_columns is None or right_columns is None:
                self.result.uncertain.append("a natural join over a relation whose columns are unknown")
                for relation in left + right:
                    self.result.filters |= relation.fallback
                return left + right
            names = [c.name for c in left_columns if c.name in {r.name for r in right_columns}]
        if not names:
            return left + right
        unknown = frozenset().union(*(r.fallback for r in left + right if r.columns is None))
        kind = node.get("jointype")
        merged = []
        for name in names:
            pair = [next((c for c in side or [] if c.name == name), None) for side in (left_columns, right_columns)]
            found = [c for c in pair if c is not None]
            sources = frozenset().union(*(c.sources for c in found))
            if len(found) < 2:
                # A side of unknown shape holds it (or the statement fails): it may be anything there.
                self.result.uncertain.append(f"join column {name} may come from a relation of unknown shape")
                sources |= unknown
            self.result.filters |= sources
            value = pair[1] if kind == "JOIN_RIGHT" else pair[0] if kind != "JOIN_FULL" else None
            merged.append(OutputColumn(name, sources, False) if value is None or len(found) < 2 else value)
        using_alias = (node.get("join_using_alias") or {}).get("aliasname")
        hide = frozenset(names)
        return [_Relation(using_alias, merged)] + [
            replace(r, merged=r.merged | hide) for r in left + right]

    def _range_var(self, node: Node, scope: _Scope) -> _Relation:
        """A table, view or CTE in FROM, its columns renamed by the alias's column list, if any:
        `customers AS t(a, b, x)` makes x the third column, whatever its name."""
        relation = self._named_relation(node, scope)
        alias = node.get("alias", {})
        # `public.customers c`: only c names it.
        return replace(relation, columns=_rename(relation.columns, _column_aliases(alias)),
                       schema=None if alias else relation.schema)

    def _named_relation(self, node: Node, scope: _Scope) -> _Relation:
        schema, name = node.get("schemaname"), node["relname"]
        alias = node.get("alias", {}).get("aliasname") or name
        if schema is None:
            cte = _find_cte(scope, name)
            if cte is not None:
                return _Relation(alias, cte.columns, cte.fallback)
        qualified = self.relations.resolve(schema, name)
        if qualified is None:
            self.result.uncertain.append(f"relation {name} cannot be resolved")
            self.result.unresolved = True
            return _Relation(alias, None)
        in_schema = qualified.split(".")[0]
        view = self.relations.view_definition(qualified)
        if view is not None and not opaque(qualified):
            return _Relation(alias, _with_hidden(qualified, self._view(qualified, view)), schema=in_schema)
        columns = self.relations.columns(qualified)
        if columns is None:
            self.result.uncertain.append(f"the columns of {qualified} are unknown")
            return _Relation(alias, None, schema=in_schema)
        if qualified in STATISTICS_RELATIONS:
            # Sampled values of every column, sensitive ones among them.
            everything = self.relations.sensitive()
            return _Relation(alias, [OutputColumn(column, everything, False) for column in columns], schema=in_schema)
        return _Relation(alias, [OutputColumn(column, frozenset({SourceColumn(qualified, column)}), True)
                                 for column in columns], schema=in_schema)

    def _view(self, qualified: str, definition: str) -> list[OutputColumn] | None:
        if self.depth >= _MAX_VIEW_DEPTH:
            self.result.uncertain.append(f"views nest too deeply at {qualified}")
            return None
        inner = lineage_of_view(definition, self.relations, self.depth + 1, self.calls)
        self.result.touched |= inner.touched
        self.result.filters |= inner.filters
        for column, doing in inner.computed.items():
            self.result.computed.setdefault(column, doing)
        self.result.uncertain.extend(inner.uncertain)
        self.result.unresolved |= inner.unresolved
        self.result.client_encodings.extend(inner.client_encodings)
        _merge_functions(self.result.functions, inner.functions)
        names = self.relations.columns(qualified)
        columns = _rename(inner.columns, names or [])
        if columns is not None and self.result.copy is not None:
            columns = [OutputColumn(column.name, column.sources, False) for column in columns]
        return columns

    # -- expressions --------------------------------------------------------------

    def _targets(self, targets: list[Node], scope: _Scope) -> list[OutputColumn] | None:
        out: list[OutputColumn] = []
        for target in targets:
            res = target["ResTarget"]
            value = res.get("val", {})
            star = _star(value)
            if star is not None:
                expanded = self._expand(star, scope)
                if expanded is None:
                    return None
                out.extend(expanded)
                continue
            sources, direct = self._sources(value, scope)
            out.append(OutputColumn(res.get("name") or _figure_name(value), frozenset(sources), direct))
        return out

    def _expand(self, qualifier: list[str], scope: _Scope) -> list[OutputColumn] | None:
        """`*` (qualifier []) or `t.*` (["t"], or ["schema", "t"]): the columns of every relation in
        scope, or of the nearest t, an outer query's too (`(SELECT row_to_json(c.*))`)."""
        relations = scope.relations
        if qualifier:
            current: _Scope | None = scope
            while current is not None and not any(_named(r, qualifier) for r in current.relations):
                current = current.outer
            if current is None:
                self._unplaced(f"{'.'.join(qualifier)}.*", scope)
                return None
            relations = [r for r in current.relations if _named(r, qualifier)]
        columns = _concat(r.columns if qualifier else r.visible for r in relations)
        if columns is None:
            self.result.uncertain.append("* over a relation whose columns are unknown")
            self.result.touched |= {s for r in relations for s in r.fallback}
        else:
            for column in columns:
                self.result.touched |= column.sources
        return columns

    def _filter(self, node: Any, scope: _Scope) -> None:
        if node:
            sources, _ = self._sources(node, scope)
            self.result.filters |= sources

    def _sources(self, node: Any, scope: _Scope) -> tuple[set[SourceColumn], bool]:
        """What a value derives from, and whether it is one column's value unchanged."""
        if isinstance(node, list):
            found: set[SourceColumn] = set()
            for item in node:
                found |= self._sources(item, scope)[0]
            return found, False
        if not isinstance(node, dict) or "A_Const" in node:  # a constant derives from nothing (shapes.py relies on it)
            return set(), False
        if "ColumnRef" in node:
            return self._column_ref(node["ColumnRef"], scope)
        if "TypeCast" in node:
            found, direct = self._sources(node["TypeCast"].get("arg"), scope)
            type_name = node["TypeCast"].get("typeName", {})
            if not _total_cast(type_name):
                self._computed(found, f"a cast to {_type_label(type_name)}")
            elif not direct:
                # A row's text quotes a field that holds a space, a comma or a parenthesis and doubles its
                # quotes and backslashes: its length counts them, as a sort's spill measures (temp_bytes).
                self._computed(found, f"a cast to {_type_label(type_name)} of a value computed from it")
            return found, direct and self.result.copy is None and not _cuts(type_name)
        if "SelectStmt" in node:
            columns = self.select(node["SelectStmt"], scope)
            found = set().union(*(c.sources for c in columns)) if columns else set()
            return found, False
        if "SubLink" in node:
            return self._sub_link(node["SubLink"], scope)
        if "FuncCall" in node:
            call = node["FuncCall"]
            names = [part["String"]["sval"] for part in call["funcname"]]
            name = names[-1]
            # PostgreSQL's count, not a user-defined count(text) that returns its argument.
            schema = names[-2] if len(names) > 1 else None
            counting = name in _COUNTING and schema in (None, "pg_catalog") and \
                self.relations.functions(schema, name) == []
            args: set[SourceColumn] = set()
            computed: set[SourceColumn] = set()  # arguments that are not a column's own value
            for arg in call.get("args", []):
                found, direct = self._sources(arg, scope)
                args |= found
                if not direct:
                    computed |= found
                if counting and not direct:
                    # count(col) reveals only how many values are not NULL; a count
                    # of an expression (`count(CASE WHEN ssn LIKE '1%' THEN 1 END)`,
                    # `count(NULLIF(ssn, 'guess'))`) tests the values.
                    self.result.filters |= found
            if call.get("agg_distinct"):
                # `count(DISTINCT ssn)` over two rows is 1 if their values are equal.
                self.result.filters |= args
            total = name in TOTAL_FUNCTIONS and len(call.get("args", [])) in TOTAL_FUNCTIONS[name] and \
                schema in (None, "pg_catalog") and self.relations.functions(schema, name) == []
            if not (counting or total):
                self._computed(args, f"{'.'.join(names)}()")
            elif name in _OWN_VALUE_ONLY:
                self._computed(computed, f"{name}() of a value computed from it")
            if call.get("agg_within_group"):
                # `mode() WITHIN GROUP (ORDER BY ssn)`: the values sorted are the aggregate's input.
                args |= self._sources(call.get("agg_order"), scope)[0]
            self._filter(call.get("agg_order"), scope)
            self._filter(call.get("agg_filter"), scope)
            self._filter(call.get("over"), scope)
            if name in _SET_RETURNING:
                self.result.filters |= args
            if name in _KEEPING and schema in (None, "pg_catalog") and args:
                self.result.written.append((None, frozenset(args)))
            if name == "set_config" and schema in (None, "pg_catalog"):
                self._set_config(call.get("args", []))
            return (set() if counting else args) | self._call(names, args), False
        if "A_Expr" in node and node["A_Expr"].get("kind") not in _BETWEEN:
            operands, _ = self._sources([node["A_Expr"].get("lexpr"), node["A_Expr"].get("rexpr")], scope)
            names = [part["String"]["sval"] for part in node["A_Expr"].get("name", [])]
            kind = node["A_Expr"].get("kind")
            self._computed(operands, _OPERATOR_KINDS.get(kind) or f"operator {'.'.join(names)}")
            return operands | self._call(names, operands, operator=True), False
        if "A_Indirection" in node:
            # `(row).f` selects a field, or calls a user-defined f(row) in attribute notation.
            indirection = node["A_Indirection"]
            found, _ = self._sources(indirection.get("arg"), scope)
            found |= self._sources(indirection.get("indirection"), scope)[0]
            if any("A_Indices" in part for part in indirection.get("indirection", [])):
                self._computed(found, "a subscript")
            for part in indirection.get("indirection", []):
                if "String" in part and self.relations.functions(None, part["String"]["sval"]):
                    self._computed(found, f"{part['String']['sval']}()")  # as in f(row); or a field, taken as f
                    found |= self._call([part["String"]["sval"]], found)
            return found, False
        if "CaseExpr" in node:
            # Which branch runs is a test of the value, whatever each branch holds (`THEN 1/0`).
            case = node["CaseExpr"]
            whens = [when.get("CaseWhen", {}) for when in case.get("args", [])]
            tested, _ = self._sources([case.get("arg"), *(when.get("expr") for when in whens)], scope)
            self._computed(tested, "a CASE condition")
            chosen, _ = self._sources([case.get("defresult"), *(when.get("result") for when in whens)], scope)
            return tested | chosen, False
        found = set()
        for key, child in node.items():
            if isinstance(child, (dict, list)):
                found |= self._sources(child, scope)[0]
        kind = next(iter(node)) if len(node) == 1 else ""
        if kind[:1].isupper() and kind not in _PASSING:  # a node (its fields are named in lower case)
            self._computed(found, _DOING.get(kind, kind))
        return found, False

    def _set_config(self, args: list[Node]) -> None:
        """set_config(name, value, …) of client_encoding. A name that is not a constant is pg_settings' `name`
        filtered on a constant (pg_dump's shape), or the policy refuses the call; whatever it names, a value
        that names an encoding may set client_encoding, and one that does not cannot."""
        setting = _string(args[0]) if args else None
        value = _string(args[1]) if len(args) > 1 else None
        if setting is not None and setting.lower() == "client_encoding":
            self.result.client_encodings.append(value)
        elif setting is None and value is not None and cleaned(value) in ENCODING_NAMES:
            self.result.client_encodings.append(value)

    def _computed(self, found: Iterable[SourceColumn], doing: str) -> None:
        """Values of `found` go through `doing`, which can fail, run long or make rows by them."""
        for column in found:
            self.result.computed.setdefault(column, doing)

    def _call(self, names: list[str], args: set[SourceColumn], operator: bool = False) -> set[SourceColumn]:
        """What a call may return beyond its arguments: whatever the bodies of the user-defined functions it may run read."""
        schema = names[-2] if len(names) > 1 else None
        if not operator and schema in (None, "pg_catalog") and matches(RUNS_SQL_TEXT, names[-1]):
            routines: list[Routine] | None = [Routine(names[-1], "")]  # SQL from a string: anything
        else:
            routines = self.relations.functions(schema, names[-1], operator)
        if routines is None:  # unknown: whatever it is, it cannot be followed
            routines = [Routine(".".join(names), "")]
        found: set[SourceColumn] = set()
        if not operator and schema in (None, "pg_catalog") and names[-1] in QUERY_TEXT_FUNCTIONS:
            # PostgreSQL's own, returning other sessions' statement texts: in a view or a function's body,
            # where the policy does not see it, they are hidden as pg_stat_activity's are (system_columns.py).
            found.add(SourceColumn(*STATEMENT_TEXTS))
        for routine in routines:
            read = self._routine(routine)
            # What the body does with what it reads, pgguard does not follow (`IF ssn LIKE '4%' THEN RAISE`).
            self._computed(read, f"{routine.name}()")
            if routine.returns_set:  # how many rows it returns reveals what its body read
                self.result.filters |= read | args
            self.result.functions.setdefault(routine.name, set()).update(read)
            found |= read
        self.result.touched |= found
        return found

    def _routine(self, routine: Routine) -> set[SourceColumn]:
        """Every column a user-defined function's body may read."""
        if routine.name in self.calls.stack:
            # A recursive call reads what the body being followed reads, already counted.
            return set()
        if routine.extension_code and self.relations.trusted(routine):
            return set()  # a trusted extension's C function: its result derives from its arguments alone
        body = body_of(routine)
        if body.statements is None or len(self.calls.stack) >= _MAX_CALL_DEPTH \
                or self.calls.followed >= _MAX_BODIES:
            return set(self.relations.sensitive())
        self.calls.followed += 1
        relations = self.relations if body.search_path is None else _PathRelations(self.relations, body.search_path)
        inner = _Analyzer(relations, self.depth, self.calls, in_body=True)
        inner.result.written = self.result.written  # what the body writes is written by this statement
        inner.result.changed = self.result.changed
        inner.result.derived_writes = self.result.derived_writes
        inner.result.client_encodings = self.result.client_encodings
        self.calls.stack.append(routine.name)
        try:
            read: set[SourceColumn] = set()
            for kind, node in body.statements:
                columns = inner.statement(kind, node).columns
                read.update(*(column.sources for column in columns or []))
        finally:
            self.calls.stack.pop()
        _merge_functions(self.result.functions, inner.result.functions)
        if inner.result.uncertain or inner.result.unresolved:
            return set(self.relations.sensitive())
        return read | inner.result.touched | inner.result.filters

    def _sub_link(self, link: Node, scope: _Scope) -> tuple[set[SourceColumn], bool]:
        (_, query), = link["subselect"].items()
        columns = self.select(query, scope)
        inner = set().union(*(c.sources for c in columns)) if columns else set()
        tested, _ = self._sources(link.get("testexpr"), scope)
        kind = link.get("subLinkType")
        if kind == "EXISTS_SUBLINK":
            self.result.filters |= inner
            return set(), False
        if kind == "ARRAY_SUBLINK":
            # It fails on arrays of different dimensions, as ARRAY[…] does.
            self._computed(inner, "ARRAY(…)")
        if kind in ("EXPR_SUBLINK", "ARRAY_SUBLINK"):
            return inner, False
        # IN / ANY / ALL: a boolean that reveals membership.
        self.result.filters |= inner | tested
        return tested | inner, False

    def _column_ref(self, ref: Node, scope: _Scope) -> tuple[set[SourceColumn], bool]:
        fields = [f["String"]["sval"] if "String" in f else "*" for f in ref["fields"]]
        if fields[-1] == "*":
            columns = self._expand(fields[:-1], scope)
            if columns is None:
                return set(), False
            return set().union(*(c.sources for c in columns)), False
        *qualifier, column = fields
        found = self._qualified(qualifier, column, scope) if qualifier else self._unqualified(column, scope)
        if found is not None:
            self.result.touched |= found[0]
            return found
        if self.in_body or column in _SYSTEM_COLUMNS:
            return set(), False
        return set(self._unplaced(f"column {'.'.join(fields)}", scope)), False

    def _unplaced(self, what: str, scope: _Scope) -> frozenset[SourceColumn]:
        """A name lineage cannot place. PostgreSQL found it where pgguard did not (or the statement fails
        there): it may be any column within reach, so it counts as all of them, and the statement is
        refused if one of them is hidden (fail closed)."""
        self.result.uncertain.append(f"{what} cannot be resolved")
        reach = _within_reach(scope)
        self.result.touched |= reach
        return reach

    def _qualified(self, qualifier: list[str], column: str, scope: _Scope) -> tuple[set[SourceColumn], bool] | None:
        """`t.column`: a column of the nearest relation named t, or a function in attribute notation.

        `s.t.column` names only a table or view t of schema s without an alias, never a subquery or
        CTE called t, which PostgreSQL passes over for an outer query's s.t."""
        current: _Scope | None = scope
        while current is not None:
            for relation in current.relations:
                if not _named(relation, qualifier):
                    continue
                if relation.columns is None:
                    return set(relation.fallback), False
                for candidate in relation.columns:
                    if candidate.name == column:
                        return set(candidate.sources), candidate.direct
                if self.relations.functions(None, column):
                    # `t.f` with no column f is f(t), a function in attribute notation.
                    row = set().union(*(c.sources for c in relation.columns))
                    self._computed(row, f"{column}()")
                    return row | self._call([column], row), False
            current = current.outer
        return None

    def _unqualified(self, column: str, scope: _Scope) -> tuple[set[SourceColumn], bool] | None:
        """A bare name, as PostgreSQL resolves it: a column of the nearest query level that has one, and
        only if no level has one, a whole row (`SELECT c FROM customers c`, row_to_json(c)).

        So `(SELECT phone FROM (SELECT 1) AS phone)` is the outer query's phone column, not a row."""
        # Rows of functions named like the column, whose own columns are unknown: what it may be instead.
        maybe: set[SourceColumn] = set()
        shadowed = False
        current: _Scope | None = scope
        while current is not None:
            for relation in current.relations:
                for candidate in relation.visible or []:
                    if candidate.name == column:
                        return set(candidate.sources) | maybe, candidate.direct and not shadowed
            unknown = [r for r in current.relations if r.columns is None]
            if any(r.name != column for r in unknown):
                self.result.uncertain.append(f"column {column} may come from a relation of unknown shape")
                return maybe.union(*(r.fallback for r in unknown)), False
            # `generate_series(1, 3) AS x`: x is its column or its row, or, if it has no column x, an
            # outer query's column x.
            maybe = maybe.union(*(r.fallback for r in unknown))
            shadowed = shadowed or bool(unknown)
            current = current.outer
        current = scope
        while current is not None:
            for relation in current.relations:
                if relation.name == column:
                    return set().union(*(c.sources for c in relation.columns or []), relation.fallback, maybe), False
            current = current.outer
        return None


class _PathRelations(Relations):
    """Names in the body of a function with its own search_path, which PostgreSQL resolves against that path."""

    def __init__(self, relations: Relations, search_path: tuple[str, ...]) -> None:
        self.relations = relations
        # pg_catalog is searched first unless the path places it.
        self.path = search_path if "pg_catalog" in search_path else ("pg_catalog", *search_path)

    def resolve(self, schema: str | None, name: str) -> str | None:
        if schema is not None:
            return self.relations.resolve(schema, name)
        return next((f"{s}.{name}" for s in self.path if self.relations.columns(f"{s}.{name}") is not None), None)

    def columns(self, relation: str) -> list[str] | None:
        return self.relations.columns(relation)

    def view_definition(self, relation: str) -> str | None:
        return self.relations.view_definition(relation)

    def functions(self, schema: str | None, name: str, operator: bool = False) -> list[Routine] | None:
        if schema is not None:
            return self.relations.functions(schema, name, operator)
        # PostgreSQL picks among every schema on the path by argument types: any of them.
        found = [self.relations.functions(s, name, operator) for s in self.path]
        known = [routines for routines in found if routines is not None]
        return [routine for routines in known for routine in routines] if known else None

    def sensitive(self) -> frozenset[SourceColumn]:
        return self.relations.sensitive()

    def trusted(self, routine: Routine) -> bool:
        return self.relations.trusted(routine)


def lineage_of_view(definition: str, relations: Relations, depth: int, calls: _Calls | None = None) -> Lineage:
    tree = json.loads(parser.parse_sql_json(definition))
    (kind, node), = tree["stmts"][0]["stmt"].items()
    return _Analyzer(relations, depth, calls).statement(kind, node)


def _temporary(relation: Node) -> bool:
    """Whether a RangeVar names a temporary relation: TEMPORARY, or in pg_temp."""
    schema = relation.get("schemaname") or ""
    return relation.get("relpersistence") == "t" or schema == "pg_temp" or schema.startswith("pg_temp_")


def _with_hidden(qualified: str, columns: list[OutputColumn] | None) -> list[OutputColumn] | None:
    """A view's columns, those PostgreSQL's own query texts are in (system_columns.py) also from themselves."""
    hidden = hidden_columns(qualified)
    if not hidden or columns is None:
        return columns
    return [OutputColumn(column.name, column.sources | {SourceColumn(qualified, column.name)}, False)
            if column.name in hidden else column for column in columns]


def _merge_functions(into: dict[str, set[SourceColumn]], found: dict[str, set[SourceColumn]]) -> None:
    for name, columns in found.items():
        into.setdefault(name, set()).update(columns)


def _by_reference(items: list[Node]) -> list[Node] | None:
    """WITH items ordered so that each comes after the siblings it names in FROM; None if they
    name each other in a circle (which PostgreSQL refuses, or a name is shadowed inside)."""
    named = [(item["CommonTableExpr"]["ctename"], item) for item in items]
    names = {name for name, _ in named}
    needs = {name: _relation_names(item["CommonTableExpr"]["ctequery"]) & (names - {name}) for name, item in named}
    ordered: list[Node] = []
    done: set[str] = set()
    while len(ordered) < len(items):
        ready = [(name, item) for name, item in named if name not in done and needs[name] <= done]
        if not ready:
            return None
        ordered.extend(item for _, item in ready)
        done |= {name for name, _ in ready}
    return ordered


def _relation_names(node: Any) -> set[str]:
    """Every relation named without a schema anywhere in a parse tree."""
    if isinstance(node, list):
        return set().union(*(_relation_names(item) for item in node))
    if not isinstance(node, dict):
        return set()
    found = {node["relname"]} if "relname" in node and "schemaname" not in node else set()
    return found.union(*(_relation_names(child) for child in node.values() if isinstance(child, (dict, list))))


def _find_cte(scope: _Scope | None, name: str) -> _Relation | None:
    while scope is not None:
        if name in scope.ctes:
            return scope.ctes[name]
        scope = scope.outer
    return None


def _grouped(items: list[Any]) -> Iterable[Any]:
    """The expressions of a GROUP BY, ORDER BY or DISTINCT list, inside ROLLUP, CUBE and GROUPING SETS too."""
    for item in items:
        if isinstance(item, dict) and "SortBy" in item:
            yield item["SortBy"].get("node")
        elif isinstance(item, dict) and "GroupingSet" in item:
            yield from _grouped(item["GroupingSet"].get("content", []))
        else:
            yield item


def _string(node: Any) -> str | None:
    """The value of a string constant (`'LATIN1'`), else None."""
    if isinstance(node, dict) and "A_Const" in node and "sval" in node["A_Const"]:
        return str(node["A_Const"]["sval"].get("sval", ""))
    return None


def _integer(node: Any) -> int | None:
    """The value of an integer constant (`ORDER BY 2`), else None."""
    if isinstance(node, dict) and "A_Const" in node and "ival" in node["A_Const"]:
        return int(node["A_Const"]["ival"].get("ival", 0))
    return None


def _bare_name(node: Any) -> str | None:
    """The name in an unqualified column reference (`ORDER BY s`), else None."""
    fields = node.get("ColumnRef", {}).get("fields", []) if isinstance(node, dict) else []
    if len(fields) == 1 and "String" in fields[0]:
        return fields[0]["String"]["sval"]
    return None


def _star(value: Node) -> list[str] | None:
    """For a target `*` or `t.*`: its qualifier, [] or ["t"] (or ["schema", "t"]); None for anything else."""
    ref = value.get("ColumnRef")
    if not ref or "A_Star" not in ref["fields"][-1]:
        return None
    return [field["String"]["sval"] for field in ref["fields"][:-1]]


def _named(relation: _Relation, qualifier: list[str]) -> bool:
    """Whether `t` or `schema.t` names the relation: `schema.t` only a table or view without an alias."""
    return relation.name == qualifier[-1] and (len(qualifier) < 2 or relation.schema == qualifier[-2])


def _figure_name(value: Node) -> str:
    """The column name PostgreSQL gives an unnamed target (FigureColname): a subquery's columns are
    found by these names, so `SELECT q."?column?" FROM (SELECT CASE … END, ssn || '') q` is the second."""
    return _figured(value)[0] or "?column?"


# Expressions named like the function they stand for.
_NAMED_LIKE_CALLS = {"A_ArrayExpr": "array", "RowExpr": "row", "CoalesceExpr": "coalesce",
                     "GroupingFunc": "grouping", "XmlSerialize": "xmlserialize"}


def _figured(value: Any) -> tuple[str | None, int]:
    """FigureColnameInternal: a name and how strong it is (2 a column's or function's, 1 a type's or `case`)."""
    if not isinstance(value, dict) or len(value) != 1:
        return None, 0
    (kind, node), = value.items()
    if kind == "ColumnRef":
        names = [f["String"]["sval"] for f in node["fields"] if "String" in f]
        return (names[-1], 2) if names else (None, 0)
    if kind == "A_Indirection":
        names = [f["String"]["sval"] for f in node.get("indirection", []) if "String" in f]
        return (names[-1], 2) if names else _figured(node.get("arg"))
    if kind == "FuncCall":
        return node["funcname"][-1]["String"]["sval"], 2
    if kind == "A_Expr":
        return ("nullif", 2) if node.get("kind") == "AEXPR_NULLIF" else (None, 0)
    if kind in ("TypeCast", "CaseExpr"):
        name, strength = _figured(node.get("arg" if kind == "TypeCast" else "defresult"))
        if strength > 1:
            return name, strength
        return (node["typeName"]["names"][-1]["String"]["sval"] if kind == "TypeCast" else "case"), 1
    if kind == "CollateClause":
        return _figured(node.get("arg"))
    if kind == "SubLink":
        link = node.get("subLinkType")
        if link in ("EXISTS_SUBLINK", "ARRAY_SUBLINK"):
            return link.split("_")[0].lower(), 2
        if link == "EXPR_SUBLINK":
            return _first_column_name(node["subselect"]["SelectStmt"]), 2
        return None, 0
    if kind in _NAMED_LIKE_CALLS:
        return _NAMED_LIKE_CALLS[kind], 2
    if kind == "MinMaxExpr":
        return ("greatest" if node.get("op") == "IS_GREATEST" else "least"), 2
    if kind == "SQLValueFunction":  # SVFOP_CURRENT_TIMESTAMP_N: current_timestamp
        return node["op"].removeprefix("SVFOP_").removesuffix("_N").lower(), 2
    if kind == "XmlExpr" and node.get("op") != "IS_DOCUMENT":
        return node["op"].removeprefix("IS_").lower(), 2
    return None, 0


def _first_column_name(select: Node) -> str:
    """The name of a query's first column: a set operation's leftmost query's, VALUES' column1."""
    while select.get("op", "SETOP_NONE") != "SETOP_NONE":
        select = select["larg"]
    if "valuesLists" in select:
        return "column1"
    first = select.get("targetList", [{}])[0].get("ResTarget", {})
    return first.get("name") or _figure_name(first.get("val", {}))


def _within_reach(scope: _Scope) -> frozenset[SourceColumn]:
    """What every column of every relation a name in `scope` could refer to derives from."""
    found: set[SourceColumn] = set()
    current: _Scope | None = scope
    while current is not None:
        for relation in current.relations:
            found |= relation.fallback
            for column in relation.columns or []:
                found |= column.sources
        current = current.outer
    return frozenset(found)


def _cuts(type_name: Node) -> bool:
    """Whether a cast to the type may cut or round the value: `varchar(4)`, `char`, `numeric(3)`, `name`.

    A cut value is no longer the column's: `card_number::varchar(8)` masked as a card keeps its
    last four digits, which are the card's fifth to eighth.
    """
    names = [part["String"]["sval"] for part in type_name.get("names", [])]
    return bool(type_name.get("typmods")) or names[-1:] in (["name"], ["char"])


def _total_cast(type_name: Node) -> bool:
    """Whether a cast to the type cannot fail and keeps the whole value: to one of PostgreSQL's text types
    without a length, not an array of them."""
    names = [part["String"]["sval"] for part in type_name.get("names", [])]
    return bool(names) and names[-1] in _TOTAL_CASTS and names[:-1] in ([], ["pg_catalog"]) and \
        not type_name.get("arrayBounds") and not _cuts(type_name)


def _type_label(type_name: Node) -> str:
    """The type as a refusal names it: `varchar(4)`, `bpchar(1)` (`char`), `"char"`, `text[]`."""
    names = [part["String"]["sval"] for part in type_name.get("names", [])]
    label = ".".join('"char"' if name == "char" else name for name in names if name != "pg_catalog")
    typmods = [_typmod_label(mod) for mod in type_name.get("typmods", [])]
    return label + (f"({', '.join(typmods)})" if typmods else "") + ("[]" if type_name.get("arrayBounds") else "")


def _typmod_label(mod: Node) -> str:
    const = mod.get("A_Const", {})
    return str(const["ival"].get("ival", 0)) if "ival" in const else "…"  # the parse tree leaves out a zero


def _column_aliases(alias: Node) -> list[str]:
    """The column names of an alias, `t(a, b)`: the first columns, in order."""
    return [name["String"]["sval"] for name in alias.get("colnames", [])]


def _rename(columns: list[OutputColumn] | None, names: list[str]) -> list[OutputColumn] | None:
    if columns is None or not names:
        return columns
    return [OutputColumn(names[i], c.sources, c.direct) if i < len(names) else c for i, c in enumerate(columns)]


def _concat(parts: Iterable[list[OutputColumn] | None]) -> list[OutputColumn] | None:
    out: list[OutputColumn] = []
    for part in parts:
        if part is None:
            return None
        out.extend(part)
    return out


def _union(left: list[OutputColumn] | None, right: list[OutputColumn] | None) -> list[OutputColumn] | None:
    """A set operation's columns: named by the left side, deriving from both."""
    if left is None or right is None or len(left) != len(right):
        return None
    return [OutputColumn(a.name, a.sources | b.sources, a.direct and b.direct and a.sources == b.sources)
            for a, b in zip(left, right)]
