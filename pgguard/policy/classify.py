"""What a statement does, read off PostgreSQL's own parse tree.

pglast gives the parse tree as JSON (`parse_sql_json`, several times faster
than building its Python AST). A statement's effect is found by walking the
whole tree, not by looking at its first keyword, so a write hidden anywhere
(a data-modifying CTE, EXPLAIN ANALYZE, a PREPARE, a locking clause, a
sequence function) still counts as a write. A node type this module does
not know makes the statement class `other`, which only a role allowed every
class may run: what cannot be classified is refused, never guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pglast import parser

from pgguard.policy.tree import parse_tree

Node = dict[str, Any]

# Statement classes, as roles name them in `statements`.
READ, WRITE, DDL, DCL = "read", "write", "ddl", "dcl"
SESSION, TRANSACTION, MAINTENANCE, PROCEDURAL, ADMIN, OTHER = (
    "session", "transaction", "maintenance", "procedural", "admin", "other")
CLASSES = (READ, WRITE, DDL, DCL, SESSION, TRANSACTION, MAINTENANCE, PROCEDURAL, ADMIN, OTHER)

_FIXED_CLASS = {
    "VariableShowStmt": READ, "FetchStmt": READ, "ClosePortalStmt": SESSION,
    "ListenStmt": SESSION, "UnlistenStmt": SESSION, "DiscardStmt": SESSION,
    "DeallocateStmt": SESSION, "ConstraintsSetStmt": TRANSACTION,
    "VacuumStmt": MAINTENANCE, "ClusterStmt": MAINTENANCE, "ReindexStmt": MAINTENANCE,
    "RefreshMatViewStmt": MAINTENANCE,
    "DoStmt": PROCEDURAL, "CallStmt": PROCEDURAL,
    "GrantStmt": DCL, "GrantRoleStmt": DCL, "CreateRoleStmt": DCL, "AlterRoleStmt": DCL,
    "AlterRoleSetStmt": DCL, "DropRoleStmt": DCL, "AlterDefaultPrivilegesStmt": DCL,
    "ReassignOwnedStmt": DCL, "DropOwnedStmt": DCL,
    "AlterSystemStmt": ADMIN, "LoadStmt": ADMIN, "CheckPointStmt": ADMIN,
    "CreatedbStmt": ADMIN, "DropdbStmt": ADMIN, "AlterDatabaseStmt": ADMIN,
    "AlterDatabaseSetStmt": ADMIN, "AlterDatabaseRefreshCollStmt": ADMIN,
    "CreateTableSpaceStmt": ADMIN, "DropTableSpaceStmt": ADMIN, "AlterTableSpaceOptionsStmt": ADMIN,
    "CreateSubscriptionStmt": ADMIN, "AlterSubscriptionStmt": ADMIN, "DropSubscriptionStmt": ADMIN,
    "CreateEventTrigStmt": ADMIN, "AlterEventTrigStmt": ADMIN, "AlterSystemSetStmt": ADMIN,
    "NotifyStmt": WRITE,
}
_DDL_PREFIXES = ("Create", "Alter", "Drop", "Rename", "Comment", "SecLabel", "Define", "Index",
                 "View", "Rule", "CompositeType", "ImportForeignSchema", "AlterObject")
_DML = ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt")
# A MERGE's WHEN clause actions, as kinds of write to its target.
_MERGE_ACTIONS = {"CMD_INSERT": "insert", "CMD_UPDATE": "update", "CMD_DELETE": "delete"}

# Settings that change who the session is or whether it may write.
IDENTITY_SETTINGS = frozenset({"role", "session_authorization", "session_replication_role"})
READ_ONLY_SETTINGS = frozenset({"default_transaction_read_only", "transaction_read_only"})
# Settings that change how PostgreSQL reads the text of later statements.
LEXICAL_SETTINGS = frozenset({"standard_conforming_strings"})

_CURSOR_OPT_HOLD = 0x20  # DeclareCursorStmt's option bit for WITH HOLD
# ALTER TABLE subcommands that change no trigger, rule, partition, inheritance or column type of the table.
_COLUMN_ALTERATIONS = frozenset({
    "AT_AddColumn", "AT_DropColumn", "AT_ColumnDefault", "AT_DropNotNull", "AT_SetNotNull", "AT_AddConstraint",
    "AT_DropConstraint", "AT_ValidateConstraint", "AT_SetStatistics", "AT_SetStorage", "AT_AddIndex",
    "AT_AddIdentity", "AT_DropIdentity", "AT_SetIdentity", "AT_ChangeOwner", "AT_SetRelOptions",
    "AT_ResetRelOptions", "AT_ClusterOn", "AT_DropCluster",
})
_ACCESS_SHARE_LOCK = 1  # LockStmt's mode for IN ACCESS SHARE MODE (the default, 8, is ACCESS EXCLUSIVE)

# Functions that change state although they are called from a SELECT.
SEQUENCE_WRITERS = frozenset({"nextval", "setval"})
NOTIFIERS = frozenset({"pg_notify"})
# Functions that read a sequence's state: a read of the sequence they name.
SEQUENCE_READERS = frozenset({"pg_sequence_last_value"})


class Unsupported(Exception):
    """The statement cannot be analysed; it is refused."""


@dataclass(frozen=True)
class Name:
    """A possibly schema-qualified name, exactly as written (quotes resolved)."""

    schema: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


@dataclass
class Statement:
    """What one statement does."""

    kind: str  # the parse node's name, e.g. "SelectStmt"
    text: str
    location: int  # byte offset in the query string
    classes: set[str] = field(default_factory=set)
    reads: set[Name] = field(default_factory=set)
    # relation -> kinds of write (insert, update, delete, merge, truncate, lock, copy, ddl, nextval, setval)
    writes: dict[Name, set[str]] = field(default_factory=dict)
    functions: set[Name] = field(default_factory=set)
    operators: set[Name] = field(default_factory=set)
    # SET/RESET: (name, values); values None for RESET. A search_path value
    # is always one list string, as `SHOW search_path` would print it.
    settings: list[tuple[str, list[str] | None]] = field(default_factory=list)
    # Field names that may call a function in attribute notation (`o.f` is f(o)).
    attributes: set[str] = field(default_factory=set)
    # Type names cast to explicitly: a cast or a domain check may run user code.
    casts: set[Name] = field(default_factory=set)
    # True when the statement asks for a read-write transaction.
    read_write: bool = False
    # Unqualified relations its decision takes to be pg_catalog's: set_config(name, …) FROM pg_settings
    # WHERE name = 'x' sets x only if pg_settings is the catalog's view.
    catalog_names: set[Name] = field(default_factory=set)
    # ALTER TABLE that changes nothing a write to the table sets off (no trigger, rule, partition or
    # column type): what it names besides the table may still be reached differently (reach.py).
    alters_columns_only: bool = False
    # Tables DDL names as a foreign key's target or a partition to attach (whose writes it may make reach further).
    refers: set[Name] = field(default_factory=set)
    # UPDATE or DELETE with no WHERE clause (for approval rules).
    unfiltered: bool = False
    # TRUNCATE … CASCADE: it also empties every table that references those it names, unnamed here.
    cascades: bool = False
    # Its DDL creates one of the session's own temporary relations (CREATE TEMP TABLE, VIEW or SEQUENCE,
    # SELECT INTO TEMP), which no other session sees: theirs need not wait for the catalog to be read again.
    temporary: bool = False
    # PREPARE/EXECUTE/DEALLOCATE of a named statement.
    prepares: str | None = None
    executes: str | None = None
    deallocates: str | None = None  # "*" for ALL
    inner: Statement | None = None  # the statement a PREPARE holds
    # DECLARE (WITH HOLD: it outlives its transaction), FETCH or MOVE, and CLOSE of a cursor ("*" for CLOSE ALL).
    declares: str | None = None
    with_hold: bool = False
    fetches: str | None = None
    closes: str | None = None
    # The statement of the text's shape this one was placed from (shapes.py): what it does is that one's.
    template: Statement | None = field(default=None, compare=False, repr=False)

    def write(self, relation: Name, kind: str) -> None:
        self.writes.setdefault(relation, set()).add(kind)

    def placed(self, text: str, location: int) -> Statement:
        """This statement as found at `location` in a text, `text` being its own (a PREPARE's inner one too)."""
        # A shallow copy, as copy.copy makes it but without its generic machinery: this runs per text.
        found = object.__new__(Statement)
        found.__dict__.update(self.__dict__)
        found.text, found.location, found.template = text, location, self.template or self
        if self.inner is not None:
            found.inner = self.inner.placed(text, location)
        return found

    @property
    def verb(self) -> str:
        return self.text.split(None, 1)[0].upper() if self.text.strip() else self.kind


def parse(sql: str) -> list[Statement]:
    """Classify every statement of `sql`; raises Unsupported if it does not parse."""
    try:
        tree = parse_tree(sql)
    except parser.ParseError as exc:
        raise Unsupported(f"the statement does not parse: {exc}") from exc
    spans = [(raw.get("stmt_location", 0), raw.get("stmt_len", 0)) for raw in tree.get("stmts", [])]
    return placed(classify_tree(tree), sql, spans)


def classify_tree(tree: Node) -> list[Statement]:
    """Classify each statement of a parse tree, leaving where each is in its text to `placed`."""
    statements = []
    for raw in tree.get("stmts", []):
        (kind, node), = raw["stmt"].items()
        statements.append(classify_node(kind, node))
    return statements


def classify_node(kind: str, node: Node) -> Statement:
    """Classify one statement's parse node (of a text, or of a function body or a rule's action)."""
    statement = Statement(kind, "", 0)
    _Walker(statement).statement(kind, node)
    return statement


def placed(statements: list[Statement], sql: str, spans: list[tuple[int, int]]) -> list[Statement]:
    """`statements` with the text and byte offset of each in `sql`; `spans` as the parse tree gives them."""
    encoded = sql.encode()
    out = []
    for statement, (location, length) in zip(statements, spans):
        text = encoded[location:location + (length or len(encoded) - location)].decode(errors="replace").strip()
        out.append(statement.placed(text, location))
    return out


def setting(name: str, value: str) -> Statement:
    """A startup-packet setting, classified as the SET that would make it.

    Its value is the setting's text as is (like set_config's), so a search_path
    here is a list string, not one quoted schema name as in `SET search_path = 'a,b'`.
    """
    statement = Statement("VariableSetStmt", f"SET {name} = {value}", 0)
    statement.classes.add(SESSION)
    _Walker(statement).record_setting(name, [value])
    return statement


def pg_true(value: str) -> bool:
    """Whether PostgreSQL's parse_bool reads `value` as true (unique prefixes of true/yes, on, 1)."""
    lowered = value.lower()
    return lowered in ("on", "1") or bool(lowered) and ("true".startswith(lowered) or "yes".startswith(lowered))


def split_identifiers(text: str, separator: str = ",") -> list[str] | None:
    """A list of identifiers as PostgreSQL's SplitIdentifierString reads it; None if malformed.

    Unquoted names are folded to lower case (ASCII only, as PostgreSQL does);
    quoted ones keep their case, with "" standing for one quote. An empty
    quoted name is one too (`SET search_path = '', public` makes `"", public`).
    """
    names: list[str] = []
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos] in _SPACE:
            pos += 1
        if pos < end and text[pos] == '"':
            name, pos = "", pos + 1
            while True:
                close = text.find('"', pos)
                if close < 0:
                    return None  # unterminated quote
                name += text[pos:close]
                pos = close + 1
                if text[pos:pos + 1] != '"':
                    break
                name, pos = name + '"', pos + 1
        else:
            start = pos
            while pos < end and text[pos] != separator and text[pos] not in _SPACE:
                pos += 1
            if pos == start:
                return None if names or pos < end else names
            name = text[start:pos].translate(_ASCII_LOWER)
        names.append(_truncate(name))
        while pos < end and text[pos] in _SPACE:
            pos += 1
        if pos >= end:
            return names
        if text[pos] != separator:
            return None
        pos += 1


_SPACE = " \t\n\r\f\v"  # PostgreSQL's scanner_isspace; anything else is part of a name
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_NAMEDATALEN = 64


def _truncate(name: str) -> str:
    """An identifier cut to PostgreSQL's 63 bytes, on a character boundary."""
    encoded = name.encode()
    if len(encoded) < _NAMEDATALEN:
        return name
    return encoded[:_NAMEDATALEN - 1].decode(errors="ignore")


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _name(items: list[Node]) -> Name:
    parts = [item["String"]["sval"] for item in items if "String" in item]
    if not parts or len(parts) > 3:
        raise Unsupported("unexpected qualified name")
    return Name(parts[-2] if len(parts) >= 2 else None, parts[-1])


def _fields(value: Any, keys: tuple[str, ...]) -> list[Any]:
    """Every value under one of `keys`, anywhere in a parse tree."""
    if isinstance(value, list):
        return [found for item in value for found in _fields(item, keys)]
    if not isinstance(value, dict):
        return []
    return [found for key, child in value.items()
            for found in ([child] if key in keys else []) + _fields(child, keys)]


def _relation(range_var: Node) -> Name:
    return Name(range_var.get("schemaname"), range_var["relname"])


# The statements that create the relation they name; relpersistence "t" is TEMP (or TEMPORARY).
_CREATES = frozenset({"CreateStmt", "ViewStmt", "CreateSeqStmt"})


def _temporary(range_var: Node) -> bool:
    return range_var.get("relpersistence") == "t"


_SET_CONFIG = (Name(None, "set_config"), Name("pg_catalog", "set_config"))
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)*")


def _is_name_column(node: Node) -> bool:
    """Whether `node` is the unqualified column reference `name`."""
    fields = (node.get("ColumnRef") or {}).get("fields") or []
    return len(fields) == 1 and fields[0].get("String", {}).get("sval") == "name"


def _constant(node: Node) -> str | None:
    """The text of a string or number constant, or None if `node` is not one."""
    const = node.get("A_Const")
    if const is None:
        return None
    for key in ("sval", "ival", "fval", "boolval"):
        if key in const:
            value = const[key]
            inner = value.get(key, 0 if key == "ival" else False) if isinstance(value, dict) else value
            return str(inner)
    return None  # NULL


def _option_on(arg: Node | None) -> bool:
    """A boolean option (`EXPLAIN (ANALYZE off)`) as PostgreSQL's defGetBoolean reads it: on unless it is
    surely off (PostgreSQL refuses what it cannot read, and pgguard then errs on the side of on)."""
    if arg is None:
        return True
    (kind, value), = arg.items()
    if kind == "Integer":
        return value.get("ival", 0) != 0
    if kind == "Boolean":
        return bool(value.get("boolval", False))
    if kind == "String":
        return value.get("sval", "").lower() not in ("false", "off")
    return True


def _sequence(function: str, call: Node) -> Name:
    """The sequence a sequence function's first argument names, as regclass reads it; a plain constant only."""
    args = call.get("args", [])
    argument = args[0] if args else {}
    cast = argument.get("TypeCast") or {}
    if cast and _name(cast.get("typeName", {}).get("names", [])) in (Name(None, "regclass"),
                                                                     Name("pg_catalog", "regclass")):
        argument = cast.get("arg") or {}  # 'name'::regclass, as a column default prints it
    sequence = _constant(argument)
    if sequence is None:
        raise Unsupported(f"{function}() of a sequence that is not a constant")
    if sequence.isdigit():
        # regclass reads digits as an OID: the sequence could be in any schema.
        raise Unsupported(f"{function}() of a sequence given by its OID ({sequence}); name it instead")
    parts = split_identifiers(sequence, ".")
    if not parts or len(parts) > 3:
        raise Unsupported(f"{function}() of a sequence name pgguard cannot read: {sequence!r}")
    return Name(parts[-2] if len(parts) > 1 else None, parts[-1])


class _Walker:
    def __init__(self, statement: Statement) -> None:
        self.out = statement
        self.ctes: list[set[str]] = []
        # set_config's first arguments that stand for a setting's name (id of the node -> the name).
        self.setting_names: dict[int, str] = {}

    # -- statements -------------------------------------------------------

    def statement(self, kind: str, node: Node) -> None:
        handler = getattr(self, f"_stmt_{kind}", None)
        if handler is not None:
            handler(node)
            return
        if kind in _FIXED_CLASS:
            self.out.classes.add(_FIXED_CLASS[kind])
        elif kind.startswith(_DDL_PREFIXES):
            self.out.classes.add(DDL)
            self._ddl_targets(kind, node)
        else:
            self.out.classes.add(OTHER)
        self.walk(node)

    def _with(self, node: Node) -> None:
        """Walk a WITH clause and bring its names into scope; the caller pops the scope.

        A CTE's own name, or a later sibling's, is a table inside its body
        unless the WITH is RECURSIVE.
        """
        clause = node.get("withClause") or {}
        ctes = clause.get("ctes", [])
        names = [cte["CommonTableExpr"]["ctename"] for cte in ctes]
        if clause.get("recursive"):
            self.ctes.append(set(names))
            self.walk(ctes)
            return
        visible: set[str] = set()
        self.ctes.append(visible)
        for cte, name in zip(ctes, names):
            self.walk(cte)
            visible.add(name)

    def _stmt_SelectStmt(self, node: Node) -> None:
        self.out.classes.add(READ)
        self._settings_row(node)
        outer_reads, self.out.reads = self.out.reads, set()
        try:
            self._with(node)
            try:
                if node.get("intoClause"):
                    self.out.classes.add(DDL)
                    self.out.write(_relation(node["intoClause"]["rel"]), "ddl")
                    self.out.temporary = _temporary(node["intoClause"]["rel"])
                self.walk({k: v for k, v in node.items() if k not in ("intoClause", "withClause")})
            finally:
                self.ctes.pop()
            if node.get("lockingClause"):
                # FOR UPDATE/SHARE takes row locks: a write on what this
                # SELECT reads, even where another part of the statement reads it too.
                self.out.classes.add(WRITE)
                for relation in self.out.reads:
                    self.out.write(relation, "lock")
        finally:
            self.out.reads = outer_reads | self.out.reads

    def _dml(self, node: Node, kind: str, reads_target: bool) -> None:
        self.out.classes.add(WRITE)
        self._with(node)
        try:
            target = _relation(node["relation"])
            self.out.write(target, kind)
            # RETURNING (returningClause since PostgreSQL 18's tree) and ON CONFLICT read the target.
            if reads_target or node.get("returningClause") or node.get("returningList") or \
                    node.get("onConflictClause"):
                self.out.reads.add(target)
            self.walk({k: v for k, v in node.items() if k not in ("relation", "withClause")})
        finally:
            self.ctes.pop()

    def _stmt_InsertStmt(self, node: Node) -> None:
        self._dml(node, "insert", reads_target=False)
        if (node.get("onConflictClause") or {}).get("action") == "ONCONFLICT_UPDATE":
            self.out.write(_relation(node["relation"]), "update")  # ON CONFLICT DO UPDATE updates rows

    def _stmt_UpdateStmt(self, node: Node) -> None:
        self.out.unfiltered |= "whereClause" not in node
        self._dml(node, "update", reads_target=True)

    def _stmt_DeleteStmt(self, node: Node) -> None:
        self.out.unfiltered |= "whereClause" not in node
        self._dml(node, "delete", reads_target=True)

    def _stmt_MergeStmt(self, node: Node) -> None:
        self._dml(node, "merge", reads_target=True)
        # What its WHEN clauses do to the target, too: a MERGE that deletes is a delete.
        target = _relation(node["relation"])
        for clause in node.get("mergeWhenClauses", []):
            kind = _MERGE_ACTIONS.get(clause["MergeWhenClause"].get("commandType", ""))
            if kind is not None:
                self.out.write(target, kind)

    def _stmt_TruncateStmt(self, node: Node) -> None:
        self.out.classes.add(WRITE)
        self.out.unfiltered = True
        self.out.cascades = node.get("behavior") == "DROP_CASCADE"
        for item in node.get("relations", []):
            self.out.write(_relation(item["RangeVar"]), "truncate")

    def _stmt_LockStmt(self, node: Node) -> None:
        if node.get("mode") == _ACCESS_SHARE_LOCK:
            # What any SELECT takes and holds to the end of its transaction: a read (pg_dump takes it).
            self.out.classes.add(READ)
            self.out.reads.update(_relation(item["RangeVar"]) for item in node.get("relations", []))
            return
        self.out.classes.add(WRITE)
        for item in node.get("relations", []):
            self.out.write(_relation(item["RangeVar"]), "lock")

    def _stmt_CopyStmt(self, node: Node) -> None:
        if node.get("filename") is not None or node.get("is_program"):
            # Server-side files and programs: the database server's OS access.
            self.out.classes.add(ADMIN)
        if "relation" in node:
            relation = _relation(node["relation"])
            if node.get("is_from"):
                self.out.classes.add(WRITE)
                self.out.write(relation, "copy")
            else:
                self.out.classes.add(READ)
                self.out.reads.add(relation)
        self.walk({k: v for k, v in node.items() if k != "relation"})

    def _stmt_ExplainStmt(self, node: Node) -> None:
        (kind, inner), = node["query"].items()
        analyze = any(opt["DefElem"]["defname"] == "analyze" and _option_on(opt["DefElem"].get("arg"))
                      for opt in node.get("options", []))
        if analyze:
            self.statement(kind, inner)  # it runs: it is what it explains
            return
        # Planning only: what it would touch counts as read, but functions the
        # planner may fold still count as calls.
        planned = Statement(kind, self.out.text, self.out.location)
        _Walker(planned).statement(kind, inner)
        self.out.classes.add(READ)
        self.out.reads |= planned.reads | set(planned.writes)
        self.out.functions |= planned.functions
        self.out.operators |= planned.operators
        self.out.attributes |= planned.attributes
        self.out.casts |= planned.casts

    def _stmt_PrepareStmt(self, node: Node) -> None:
        (kind, inner), = node["query"].items()
        self.out.prepares = node["name"]
        held = Statement(kind, self.out.text, self.out.location)
        _Walker(held).statement(kind, inner)
        self.out.inner = held
        # Preparing is harmless, but only statements the role could run may be
        # prepared: EXECUTE is then decided by what was prepared.
        self._absorb(held)

    def _stmt_ExecuteStmt(self, node: Node) -> None:
        self.out.executes = node["name"]
        self.walk(node.get("params", []))

    def _stmt_DeallocateStmt(self, node: Node) -> None:
        self.out.classes.add(SESSION)
        self.out.deallocates = "*" if node.get("isall") else node.get("name")

    def _stmt_DiscardStmt(self, node: Node) -> None:
        self.out.classes.add(SESSION)
        if node.get("target") == "DISCARD_ALL":
            # DEALLOCATE ALL and RESET ALL, among others.
            self.out.deallocates = "*"
            self.out.settings.append(("all", None))

    def _stmt_DeclareCursorStmt(self, node: Node) -> None:
        (kind, inner), = node["query"].items()
        self.out.declares = node.get("portalname")
        self.out.with_hold = bool(node.get("options", 0) & _CURSOR_OPT_HOLD)
        self.statement(kind, inner)

    def _stmt_FetchStmt(self, node: Node) -> None:
        self.out.classes.add(READ)
        self.out.fetches = node.get("portalname")

    def _stmt_ClosePortalStmt(self, node: Node) -> None:
        self.out.classes.add(SESSION)
        self.out.closes = node.get("portalname") or "*"

    def _stmt_TransactionStmt(self, node: Node) -> None:
        if node.get("kind") in ("TRANS_STMT_PREPARE", "TRANS_STMT_COMMIT_PREPARED",
                                "TRANS_STMT_ROLLBACK_PREPARED"):
            self.out.classes.add(ADMIN)  # two-phase commit outlives the session
            return
        self.out.classes.add(TRANSACTION)
        self._transaction_options(node.get("options", []))

    def _transaction_options(self, options: list[Node]) -> None:
        for option in options:
            element = option.get("DefElem", {})
            if element.get("defname") == "transaction_read_only" and \
                    _constant(element.get("arg", {})) in ("0", "False", "false"):
                self.out.read_write = True

    def _stmt_VariableSetStmt(self, node: Node) -> None:
        self.out.classes.add(SESSION)
        kind, name = node.get("kind"), node.get("name", "")
        if kind == "VAR_SET_MULTI":
            self._transaction_options(node.get("args", []))
            return
        if kind in ("VAR_RESET", "VAR_RESET_ALL"):
            name = (name or "all").lower()
            self.out.settings.append((name, None))
            # transaction_read_only goes back to off, not to default_transaction_read_only.
            self.out.read_write |= name == "transaction_read_only"
            return
        values = []
        for arg in node.get("args", []):
            value = _constant(arg)
            if value is None:
                raise Unsupported(f"SET {name} with a value that is not a constant")
            values.append(value)
        if name.lower() == "search_path" and values:
            # Each value of a SET is one schema name exactly as written (PostgreSQL
            # quotes it): SET search_path = 'a,b' names the schema "a,b".
            values = [", ".join(quote_identifier(value) for value in values)]
        self.record_setting(name, values)

    def record_setting(self, name: str, values: list[str]) -> None:
        """A setting made with `values` (empty for DEFAULT), with what it implies."""
        name = name.lower()
        if name == "search_path" and any(split_identifiers(value) is None for value in values):
            raise Unsupported(f"a search_path pgguard cannot read: {values[0]!r}")
        self.out.settings.append((name, values))
        if name in READ_ONLY_SETTINGS and values and not pg_true(values[0]):
            # Anything PostgreSQL would not read as true is taken as off.
            self.out.read_write = True
        elif name == "transaction_read_only" and not values:
            self.out.read_write = True  # its DEFAULT is off, whatever default_transaction_read_only says

    def _ddl_targets(self, kind: str, node: Node) -> None:
        """Relations a DDL statement changes, where the tree names them."""
        if kind == "DropStmt" and node.get("removeType") in (
                "OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_SEQUENCE",
                "OBJECT_INDEX", "OBJECT_FOREIGN_TABLE"):
            for item in node.get("objects", []):
                self.out.write(_name(item["List"]["items"]), "ddl")
        for key in ("relation", "view", "sequence"):
            if isinstance(node.get(key), dict) and "relname" in node[key]:
                self.out.write(_relation(node[key]), "ddl")
                self.out.temporary = kind in _CREATES and _temporary(node[key])
        if kind == "AlterTableStmt":
            subtypes = {cmd.get("AlterTableCmd", {}).get("subtype") for cmd in node.get("cmds", [])}
            self.out.alters_columns_only = subtypes <= _COLUMN_ALTERATIONS
        if kind in ("CreateStmt", "AlterTableStmt"):
            self.out.refers.update(_relation(found) for found in _fields(node, ("pktable", "name"))
                                   if isinstance(found, dict) and "relname" in found)
        if kind == "CreateTableAsStmt":
            into = node["into"]["IntoClause"]["rel"] if "IntoClause" in node["into"] else node["into"]["rel"]
            self.out.write(_relation(into), "ddl")
            self.out.temporary = _temporary(into)

    def _absorb(self, other: Statement) -> None:
        out = self.out
        out.classes |= other.classes
        out.reads |= other.reads
        for relation, kinds in other.writes.items():
            out.writes.setdefault(relation, set()).update(kinds)
        out.functions |= other.functions
        out.operators |= other.operators
        out.attributes |= other.attributes
        out.casts |= other.casts
        out.settings.extend(other.settings)
        out.read_write |= other.read_write
        out.unfiltered |= other.unfiltered

    # -- expressions and everything else ------------------------------------

    def walk(self, value: Any) -> None:
        if isinstance(value, list):
            for item in value:
                if isinstance(item, (dict, list)):
                    self.walk(item)
            return
        if not isinstance(value, dict):
            return
        for key, child in value.items():
            if key == "A_Const" or not isinstance(child, (dict, list)):
                continue  # a constant or a scalar field: nothing below it (shapes.py relies on this)
            if key in _DML or key == "SelectStmt":
                # A statement nested in an expression or a CTE.
                self.statement(key, child)
            elif key == "RangeVar":
                self._range_var(child)
            elif key == "FuncCall":
                self._function(child)
                self.walk(child)
            elif key == "A_Expr":
                self._operator(child)
                self.walk(child)
            elif key == "ColumnRef":
                # `o.f` may be f(o), a function call in attribute notation.
                self._attributes(child.get("fields", [])[1:])
            elif key == "A_Indirection":
                self._attributes(child.get("indirection", []))
                self.walk(child)
            elif key == "TypeCast":
                names = child.get("typeName", {}).get("names", [])
                if names:
                    self.out.casts.add(_name(names))
                self.walk(child)
            elif key in ("RangeFunction", "RangeTableFunc"):
                # A column definition list (`json_to_record(…) AS t(v d)`, XMLTABLE's COLUMNS) casts to its types.
                self.out.casts.update(_name(names) for names in _column_types(child))
                self.walk(child)
            elif key == "SubLink" and child.get("operName"):
                self.out.operators.add(_name(child["operName"]))  # x <op> ANY (SELECT ...)
                self.walk(child)
            elif key == "SortBy" and child.get("useOp"):
                self.out.operators.add(_name(child["useOp"]))  # ORDER BY x USING <op>
                self.walk(child)
            elif key == "CaseExpr" and child.get("arg"):
                self.out.operators.add(Name(None, "="))  # CASE x WHEN y compares with =
                self.walk(child)
            elif key[0].isupper() and key.endswith("Stmt"):
                self.statement(key, child)  # node types are CamelCase; fields are not
            else:
                self.walk(child)

    def _range_var(self, node: Node) -> None:
        name = _relation(node)
        if name.schema is None and any(name.name in scope for scope in self.ctes):
            return  # a CTE, not a relation
        self.out.reads.add(name)

    def _function(self, node: Node) -> None:
        name = _name(node["funcname"])
        self.out.functions.add(name)
        if name.schema in (None, "pg_catalog"):
            if name.name in SEQUENCE_WRITERS:
                self.out.classes.add(WRITE)
                self.out.write(_sequence(name.name, node), name.name)  # "nextval" or "setval"
            elif name.name in SEQUENCE_READERS:
                self.out.reads.add(_sequence(name.name, node))
            elif name.name in NOTIFIERS:
                self.out.classes.add(WRITE)
            elif name.name == "set_config":
                self._set_config(node.get("args", []))

    def _settings_row(self, node: Node) -> None:
        """`SELECT set_config(name, 'v', false) FROM pg_settings WHERE name = 'x'` sets x (pg_dump sends it).

        Only that shape: one FROM item, pg_settings (which must then be the catalog's, see catalog_names),
        filtered on `name = 'x'`, and set_config called on the same `name` right in the select list, where
        `name` refers to the column the WHERE compared. Each row it sets is named x.
        """
        where, items = node.get("whereClause") or {}, node.get("fromClause") or []
        relation = items[0].get("RangeVar") if len(items) == 1 else None
        compared = where.get("A_Expr") or {}
        if relation is None or relation.get("relname") != "pg_settings" or \
                relation.get("schemaname") not in (None, "pg_catalog") or \
                compared.get("kind") != "AEXPR_OP" or _name(compared.get("name", [])) != Name(None, "=") or \
                not _is_name_column(compared.get("lexpr") or {}):
            return
        own = {cte["CommonTableExpr"]["ctename"] for cte in (node.get("withClause") or {}).get("ctes", [])}
        if relation.get("schemaname") is None and any("pg_settings" in scope for scope in (*self.ctes, own)):
            return  # a CTE's `name` may be of a type whose = is looser than text's (char(n) drops trailing blanks)
        setting = _constant(compared.get("rexpr") or {})
        if setting is None or not _SETTING_NAME.fullmatch(setting):
            return  # a name only text's = keeps whole: `name = 'role '` is true of a char(n) 'role'
        for target in node.get("targetList") or []:
            call = target.get("ResTarget", {}).get("val", {}).get("FuncCall") or {}
            args = call.get("args") or []
            if call and _name(call["funcname"]) in _SET_CONFIG and args and _is_name_column(args[0]):
                self.setting_names[id(args[0])] = setting
                self.out.catalog_names.add(Name(relation.get("schemaname"), "pg_settings"))

    def _set_config(self, args: list[Node]) -> None:
        """set_config(name, value, is_local) is a SET, and is judged as one."""
        setting = (_constant(args[0]) or self.setting_names.get(id(args[0]))) if args else None
        if setting is None:
            raise Unsupported("set_config() of a setting that is not a constant")
        setting = setting.lower()
        value = _constant(args[1]) if len(args) > 1 else None
        if value is None and setting in ("search_path", "client_encoding", *LEXICAL_SETTINGS):
            raise Unsupported(f"set_config() of {setting} to a value that is not a constant")
        self.record_setting(setting, [value] if value is not None else [])
        if setting in READ_ONLY_SETTINGS and value is None:
            self.out.read_write = True

    def _operator(self, node: Node) -> None:
        if node.get("kind") in ("AEXPR_BETWEEN", "AEXPR_NOT_BETWEEN", "AEXPR_BETWEEN_SYM",
                                "AEXPR_NOT_BETWEEN_SYM"):
            # A keyword standing for the comparisons it implies.
            self.out.operators.update((Name(None, ">="), Name(None, "<=")))
            return
        name = _name(node.get("name", []))
        self.out.operators.add(name)

    def _attributes(self, fields: list[Node]) -> None:
        for item in fields:
            if "String" in item:
                name = item["String"]["sval"]
                if name in SEQUENCE_WRITERS or name in SEQUENCE_READERS:
                    # `(x).nextval` is nextval(x): a sequence the text does not name.
                    raise Unsupported(f"{name} in attribute notation, of a sequence pgguard cannot tell")
                self.out.attributes.add(name)


def _column_types(value: Any) -> Iterator[list[Node]]:
    """The type names of the column definitions under a FROM item (ROWS FROM's per-function lists too)."""
    if isinstance(value, list):
        for item in value:
            yield from _column_types(item)
    elif isinstance(value, dict):
        for key, child in value.items():
            if key in ("ColumnDef", "RangeTableFuncCol") and child.get("typeName", {}).get("names"):
                yield child["typeName"]["names"]
            elif key not in _DML and key != "SelectStmt":  # a subquery's are its own walk's
                yield from _column_types(child)
