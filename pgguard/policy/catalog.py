"""What exists in a target database, as far as name resolution needs it.

Whether an unqualified `lower(x)` is PostgreSQL's or a user-defined
function, or whether `customers` could be a system catalog, depends on what
the database holds. The gateway reads that once per target with its own
login and keeps it as a `Catalog` snapshot: schemas, the system relations,
and which schemas define each function and operator name. It is read again
after DDL passes through the gateway and at least every `MAX_AGE` seconds.
A name the snapshot does not know is treated as unknown, and refused where
that matters. A stale snapshot is mostly stricter, not looser; the exception
is a function created outside the gateway that shadows a known name (a
built-in on a changed search_path, an attribute-notation call), which goes
unseen until the next refresh (docs/policy.md, "Known limits").

For masking it also reads every relation's columns, views' definitions, and
user-defined functions (and the functions behind user-defined operators)
with the definitions of those in SQL and PL/pgSQL, whose bodies masking
lineage follows. For the write check it reads what a write may reach beyond
the relations it names: views' base relations, triggers with their
functions, rules, and foreign keys (reach.py).
"""

from __future__ import annotations

import itertools
import logging
import ssl
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from functools import cached_property

import trio

from pgguard.config import Login, TargetConfig
from pgguard.errors import GatewayError, fatal
from pgguard.masking.bodies import FOLLOWED_LANGUAGES, Routine
from pgguard.masking.values import TEXT
from pgguard.policy.extensions import TRUSTED_LANGUAGES
from pgguard.policy.reach import Follower, Reach
from pgguard.policy.scope import qualify
from pgguard.relay.streams import PeerClosed, receive_frames
from pgguard.relay.upstream import Upstream, connect
from pgguard.wire import backend, frontend
from pgguard.wire.framing import ProtocolViolation

log = logging.getLogger("pgguard.catalog")

MAX_AGE = 60.0
SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})

# `checked`: the functions each type's input may call through domain checks (those a check calls, and those
# of the operators it uses): a domain's own, and its base domain's, an array's element's, a row type's
# columns', a range's subtype's (`'(1,x)'::holder` and json_populate_record(h, …) run the check of
# holder.v's domain).
_QUERY = """\
WITH RECURSIVE checked (type, proc) AS (
  SELECT k.contypid, d.refobjid FROM pg_catalog.pg_constraint k
    JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass
     AND d.objid = k.oid AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
   WHERE k.contypid <> 0
  UNION ALL
  SELECT k.contypid, o.oprcode FROM pg_catalog.pg_constraint k
    JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass
     AND d.objid = k.oid AND d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass
    JOIN pg_catalog.pg_operator o ON o.oid = d.refobjid
   WHERE k.contypid <> 0
  UNION
  SELECT up.type, c.proc FROM checked c JOIN (
      SELECT oid AS type, typbasetype AS part FROM pg_catalog.pg_type WHERE typtype = 'd'
      UNION ALL SELECT oid, typelem FROM pg_catalog.pg_type WHERE typelem <> 0
      UNION ALL SELECT r.reltype, a.atttypid FROM pg_catalog.pg_attribute a
        JOIN pg_catalog.pg_class r ON r.oid = a.attrelid WHERE a.attnum > 0 AND NOT a.attisdropped
      UNION ALL SELECT rngtypid, rngsubtype FROM pg_catalog.pg_range) up ON up.part = c.type)
SELECT 'f', n.nspname, p.proname FROM pg_catalog.pg_proc p
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
UNION ALL
SELECT 'o', n.nspname, o.oprname FROM pg_catalog.pg_operator o
  JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
UNION ALL
SELECT 's', nspname, '' FROM pg_catalog.pg_namespace
UNION ALL
SELECT 'r', 'pg_catalog', relname FROM pg_catalog.pg_class
  WHERE relnamespace = 'pg_catalog'::pg_catalog.regnamespace
UNION ALL
SELECT 'c', n.nspname OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) p.proname, t.typname
  FROM pg_catalog.pg_cast c JOIN pg_catalog.pg_proc p ON p.oid = c.castfunc
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
  JOIN pg_catalog.pg_type t ON t.oid = c.casttarget
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT CASE WHEN d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass THEN 'x' ELSE 'y' END, e.extname,
       COALESCE(p.proname, o.oprname)
  FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
  LEFT JOIN pg_catalog.pg_proc p ON d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND p.oid = d.objid
  LEFT JOIN pg_catalog.pg_operator o ON d.classid = 'pg_catalog.pg_operator'::pg_catalog.regclass AND o.oid = d.objid
  WHERE d.deptype = 'e' AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
    AND COALESCE(p.pronamespace, o.oprnamespace) IN ('pg_catalog'::pg_catalog.regnamespace,
                                                     'information_schema'::pg_catalog.regnamespace)
UNION ALL
SELECT CASE WHEN t.typtype = 'c' THEN 'w' ELSE 'c' END,
       n.nspname OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) p.proname, t.typname
  FROM checked c JOIN pg_catalog.pg_type t ON t.oid = c.type
  JOIN pg_catalog.pg_proc p ON p.oid = c.proc
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"""


@dataclass(frozen=True)
class Catalog:
    schemas: frozenset[str]
    system_relations: frozenset[str]
    # name -> schemas defining a function (or operator) of that name
    functions: dict[str, frozenset[str]]
    operators: dict[str, frozenset[str]]
    loaded_at: float = field(default_factory=time.monotonic)
    # type name -> user-defined functions (schema.name) that a cast to it may
    # run: cast functions, and functions a domain's CHECK constraints call
    casts: dict[str, frozenset[str]] = field(default_factory=dict)
    # User-defined functions that building a row of some row type from text may run: its columns' domain
    # checks (json_populate_record(h, …), hstore's populate_record(h, …), whatever h's type).
    row_checks: frozenset[str] = frozenset()
    # The extensions of the functions ("f") and operators ("o") in pg_catalog and information_schema, by name,
    # that belong to one (plpgsql's and adminpack's, or any a superuser installed there): not PostgreSQL's own.
    system_members: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    # For masking: every relation's columns in order ("schema.name" -> columns),
    # table column by RowDescription's (table OID, attribute number), and the
    # definitions of views and materialized views.
    relation_columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    attributes: dict[tuple[int, int], tuple[str, str]] = field(default_factory=dict)
    views: dict[str, str] = field(default_factory=dict)
    # Each table column's type OID (a domain's base type, as RowDescription
    # reports it), for COPY, whose data comes without RowDescription.
    column_types: dict[tuple[str, str], int] = field(default_factory=dict)
    # User-defined functions' overloads by schema.name, and user-defined
    # operators' functions by the operator's schema.name.
    routines: dict[str, tuple[Routine, ...]] = field(default_factory=dict)
    operator_routines: dict[str, tuple[Routine, ...]] = field(default_factory=dict)
    # Every table a read or write of a table reaches through inheritance or partitioning
    # ("schema.name" -> its children, their children, …), which may be in other schemas.
    descendants: dict[str, frozenset[str]] = field(default_factory=dict)
    # How a write to a relation writes others ("schema.name" -> its reaches): an updatable view's
    # base relation, rules, triggers, foreign keys that refer to it (reach.py).
    reaches: dict[str, tuple[Reach, ...]] = field(default_factory=dict)
    # Sequences a table's column owns (serial and identity columns): sequence -> the table.
    sequence_owners: dict[str, str] = field(default_factory=dict)
    # The extensions of every user-defined function and operator of each name, by kind ("f" or "o") and
    # schema.name; "" for one that belongs to none, or whose code is not the extension's own (a member in
    # another language than C, internal or SQL; an operator whose function is of another extension).
    members: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    # Types whose values are text's on the wire, both formats (citext): their input, output, receive and send
    # functions are PostgreSQL's own for text. Masking treats them as text.
    text_types: frozenset[int] = frozenset()
    # One more for each reading whose contents differ from the reading before (versioned()); 0: none read.
    version: int = 0
    # A session of the gateway ran DDL since this snapshot was read: what a name is, and what a view
    # reads, may have changed (a view over pg_stat_activity.query in place of one over another column).
    behind: bool = False

    @cached_property
    def writes_further(self) -> frozenset[str]:
        """Relations an INSERT, UPDATE, DELETE or TRUNCATE of which may write other tables (for approval
        rules, which take such a write to write any table)."""
        return frozenset(relation for relation, reaches in self.reaches.items()
                         if any(reach.row_writes for reach in reaches))

    def with_reaches(self, triggers: list[list[str | None]], rules: list[list[str | None]],
                     foreign_keys: list[list[str | None]], views: list[list[str | None]],
                     evaluated: list[list[str | None]] | None = None) -> Catalog:
        follower = Follower(self.functions, self.operators, self.routines, self.operator_routines, self.casts)
        reaches = follower.reaches(triggers, rules, foreign_keys, views, evaluated or [], self.sequence_owners)
        return replace(self, reaches=reaches)

    def with_inheritance(self, rows: list[list[str | None]]) -> Catalog:
        children: dict[str, set[str]] = defaultdict(set)
        for parent_schema, parent, child_schema, child in rows:
            children[qualify(parent_schema or "", parent or "")].add(qualify(child_schema or "", child or ""))
        descendants: dict[str, frozenset[str]] = {}
        for parent in children:
            found: set[str] = set()
            pending = list(children[parent])
            while pending:
                child = pending.pop()
                if child not in found:
                    found.add(child)
                    pending.extend(children.get(child, ()))
            descendants[parent] = frozenset(found)
        return replace(self, descendants=descendants)

    def with_routines(self, rows: list[list[str | None]]) -> Catalog:
        """From _ROUTINES' rows; each may end with the extensions of the object and of its function."""
        found: dict[str, dict[str, list[Routine]]] = {"f": defaultdict(list), "o": defaultdict(list)}
        members: dict[tuple[str, str], set[str]] = defaultdict(set)
        for kind, schema, name, function_schema, function, language, returns_set, definition, *owners in rows:
            qualified = qualify(schema or "", name or "")
            routines = found[kind or "f"][qualified]
            member, function_member = (owners + ["", ""])[:2]
            own_code = language in TRUSTED_LANGUAGES and function_member == member
            members[(kind or "f", qualified)].add(
                member or "" if own_code or (kind == "o" and function_schema in SYSTEM_SCHEMAS) else "")
            if function_schema not in SYSTEM_SCHEMAS:  # an operator of PostgreSQL's own function reads nothing
                routines.append(Routine(qualify(function_schema or "", function or ""), language or "",
                                        returns_set == "t", definition, function_member or ""))
        return replace(self, routines={k: tuple(v) for k, v in found["f"].items()},
                       operator_routines={k: tuple(v) for k, v in found["o"].items()},
                       members={k: frozenset(v) for k, v in members.items()})

    def with_text_types(self, rows: list[list[str | None]]) -> Catalog:
        """Text-like types (_TEXT_TYPES), and the table columns of them as text for COPY (column_types)."""
        found = frozenset(int(oid or 0) for oid, in rows)
        types = {column: TEXT if oid in found else oid for column, oid in self.column_types.items()}
        return replace(self, text_types=found, column_types=types)

    def with_relations(self, rows: list[list[str | None]]) -> Catalog:
        columns: dict[str, list[str]] = defaultdict(list)
        attributes: dict[tuple[int, int], tuple[str, str]] = {}
        views: dict[str, str] = {}
        types: dict[tuple[str, str], int] = {}
        for oid, schema, relation, attnum, column, definition, type_oid in rows:
            qualified = f"{schema}.{relation}"
            columns[qualified].append(column or "")
            attributes[(int(oid or 0), int(attnum or 0))] = (qualified, column or "")
            types[(qualified, column or "")] = int(type_oid or 0)
            if definition:
                views[qualified] = definition
        return replace(self, relation_columns={k: tuple(v) for k, v in columns.items()},
                       attributes=attributes, views=views, column_types=types)

    @classmethod
    def from_rows(cls, rows: list[tuple[str, str, str]]) -> Catalog:
        functions: dict[str, set[str]] = defaultdict(set)
        operators: dict[str, set[str]] = defaultdict(set)
        casts: dict[str, set[str]] = defaultdict(set)
        row_checks: set[str] = set()
        system_members: dict[tuple[str, str], set[str]] = defaultdict(set)
        schemas: set[str] = set()
        relations: set[str] = set()
        for kind, schema, name in rows:
            if kind == "f":
                functions[name].add(schema)
            elif kind == "o":
                operators[name].add(schema)
            elif kind == "s":
                schemas.add(schema)
            elif kind in ("x", "y"):
                system_members[("f" if kind == "x" else "o", name)].add(schema)  # here `schema` is the extension
            elif kind in ("c", "w"):
                casts[name].add(schema)  # here `schema` is the function's qualified name
                if kind == "w":
                    row_checks.add(schema)
            else:
                relations.add(name)
        return cls(frozenset(schemas), frozenset(relations),
                   {k: frozenset(v) for k, v in functions.items()},
                   {k: frozenset(v) for k, v in operators.items()},
                   casts={k: frozenset(v) for k, v in casts.items()}, row_checks=frozenset(row_checks),
                   system_members={k: frozenset(v) for k, v in system_members.items()})


EMPTY = Catalog(frozenset(SYSTEM_SCHEMAS), frozenset(), {}, {})


_RELATIONS = """\
SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname,
       CASE WHEN c.relkind IN ('v', 'm') AND a.attnum = 1 THEN pg_catalog.pg_get_viewdef(c.oid) END,
       CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f', 'S')
ORDER BY c.oid, a.attnum"""

# Types whose input, output, receive and send functions are PostgreSQL's own for text (citext's are).
_TEXT_TYPES = """\
SELECT t.oid FROM pg_catalog.pg_type t
  JOIN pg_catalog.pg_proc i ON i.oid = t.typinput JOIN pg_catalog.pg_proc o ON o.oid = t.typoutput
  JOIN pg_catalog.pg_proc r ON r.oid = t.typreceive JOIN pg_catalog.pg_proc s ON s.oid = t.typsend
  JOIN pg_catalog.pg_language l ON l.lanname = 'internal'
WHERE t.typnamespace <> 'pg_catalog'::pg_catalog.regnamespace AND t.typtype = 'b'
  AND (i.prosrc, o.prosrc, r.prosrc, s.prosrc) = ('textin', 'textout', 'textrecv', 'textsend')
  AND (i.prolang, o.prolang, r.prolang, s.prolang) = (l.oid, l.oid, l.oid, l.oid)"""

_INHERITANCE = """\
SELECT pn.nspname, p.relname, cn.nspname, c.relname FROM pg_catalog.pg_inherits i
  JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
  JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
  JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
  JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'f')"""

# What a write may reach beyond the relations it names (reach.py). Read with an empty search_path,
# so that PostgreSQL prints every name in view definitions and rules with its schema.
_NO_SEARCH_PATH = "SET search_path = ''"

_VIEWS = """\
SELECT n.nspname, c.relname, pg_catalog.pg_get_viewdef(c.oid) FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'v'"""

# Every trigger but those PostgreSQL makes for foreign keys (their actions are read below), disabled
# ones too (ALTER TABLE … ENABLE TRIGGER outside the gateway shows only at the next read).
_TRIGGERS = f"""\
SELECT n.nspname, c.relname, t.tgname, t.tgtype, pn.nspname, p.proname, l.lanname, p.prosecdef,
       CASE WHEN l.lanname IN ({', '.join(f"'{lang}'" for lang in FOLLOWED_LANGUAGES)})
            THEN pg_catalog.pg_get_functiondef(p.oid) END,
       pg_catalog.pg_get_triggerdef(t.oid)
FROM pg_catalog.pg_trigger t
  JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
  JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
  JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE NOT t.tgisinternal"""

_RULES = """\
SELECT n.nspname, c.relname, r.rulename, r.ev_type, pg_catalog.pg_get_ruledef(r.oid)
FROM pg_catalog.pg_rewrite r
  JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE r.ev_type <> '1'"""

# Every foreign key, by the table it refers to: TRUNCATE … CASCADE follows all of them, and
# ON DELETE/ON UPDATE actions other than NO ACTION and RESTRICT write the referencing table.
_FOREIGN_KEYS = """\
SELECT fn.nspname, f.relname, n.nspname, c.relname, k.conname, k.confdeltype, k.confupdtype
FROM pg_catalog.pg_constraint k
  JOIN pg_catalog.pg_class f ON f.oid = k.confrelid
  JOIN pg_catalog.pg_namespace fn ON fn.oid = f.relnamespace
  JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE k.contype = 'f'"""

# What a write evaluates besides triggers: column defaults, CHECK constraints, the CHECK constraints of the
# domains its columns are of (arrays of them, domains over them), and row security policies (reach.py).
_EVALUATED = """\
WITH RECURSIVE domains(relid, attname, typid) AS (
  SELECT a.attrelid, a.attname, e.oid FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
    JOIN pg_catalog.pg_type e ON e.oid = CASE WHEN t.typelem <> 0 AND t.typlen = -1 THEN t.typelem ELSE t.oid END
  WHERE a.attnum > 0 AND NOT a.attisdropped AND e.typtype = 'd'
  UNION
  SELECT d.relid, d.attname, t.typbasetype FROM domains d JOIN pg_catalog.pg_type t ON t.oid = d.typid
    JOIN pg_catalog.pg_type b ON b.oid = t.typbasetype WHERE b.typtype = 'd')
SELECT n.nspname, c.relname, 'default', a.attname, pg_catalog.pg_get_expr(x.adbin, x.adrelid)
FROM pg_catalog.pg_attrdef x JOIN pg_catalog.pg_attribute a ON a.attrelid = x.adrelid AND a.attnum = x.adnum
  JOIN pg_catalog.pg_class c ON c.oid = x.adrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
UNION ALL
SELECT n.nspname, c.relname, 'check', k.conname, pg_catalog.pg_get_expr(k.conbin, k.conrelid)
FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE k.contype = 'c'
UNION ALL
SELECT n.nspname, c.relname, 'domain', d.attname OPERATOR(pg_catalog.||) ' (' OPERATOR(pg_catalog.||) k.conname
       OPERATOR(pg_catalog.||) ')', pg_catalog.pg_get_expr(k.conbin, 0)
FROM domains d JOIN pg_catalog.pg_constraint k ON k.contypid = d.typid AND k.contype = 'c'
  JOIN pg_catalog.pg_class c ON c.oid = d.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
UNION ALL
SELECT n.nspname, c.relname, 'policy', p.polname, pg_catalog.pg_get_expr(e.expr, p.polrelid)
FROM pg_catalog.pg_policy p CROSS JOIN LATERAL (VALUES (p.polqual), (p.polwithcheck)) e(expr)
  JOIN pg_catalog.pg_class c ON c.oid = p.polrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE e.expr IS NOT NULL"""

_OWNED_SEQUENCES = """\
SELECT sn.nspname, s.relname, tn.nspname, t.relname FROM pg_catalog.pg_depend d
  JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
  JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
  JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
  JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype IN ('a', 'i')"""

# Definitions only for the languages lineage follows (and not for aggregates,
# which pg_get_functiondef refuses): the others are taken to read anything.
# The extension of each object and of its function, where a superuser owns it: an extension's script run by
# CREATE EXTENSION makes its objects so (a trusted one's too, as the bootstrap superuser), while what its
# owner adds with ALTER EXTENSION … ADD stays the owner's.
_ROUTINES = f"""\
SELECT k.kind, n.nspname, k.name, pn.nspname, p.proname, l.lanname, p.proretset,
       CASE WHEN p.prokind IN ('f', 'p') AND l.lanname IN ({', '.join(f"'{lang}'" for lang in FOLLOWED_LANGUAGES)})
            THEN pg_catalog.pg_get_functiondef(p.oid) END,
       (SELECT e.extname FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
         WHERE d.classid = k.class AND d.objid = k.object AND d.deptype = 'e'
           AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
           AND (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid = k.owner)),
       (SELECT e.extname FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
         WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid AND d.deptype = 'e'
           AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
           AND (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid = p.proowner))
FROM (SELECT 'f' AS kind, oid AS proc, pronamespace AS namespace, proname::pg_catalog.text AS name,
             'pg_catalog.pg_proc'::pg_catalog.regclass AS class, oid AS object, proowner AS owner
        FROM pg_catalog.pg_proc
      UNION ALL
      SELECT 'o', oprcode, oprnamespace, oprname::pg_catalog.text, 'pg_catalog.pg_operator'::pg_catalog.regclass, oid,
             oprowner
        FROM pg_catalog.pg_operator) k
  JOIN pg_catalog.pg_namespace n ON n.oid = k.namespace
  JOIN pg_catalog.pg_proc p ON p.oid = k.proc
  JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
  JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"""


class CatalogUnavailable(Exception):
    """No snapshot could be read: the target refused or dropped the gateway's connection, or did not answer."""

    def __init__(self, reason: str, refused: GatewayError | None = None) -> None:
        super().__init__(reason)
        # The target's own refusal of the connection (unreachable, TLS, login), as a session's would get.
        self.refused = refused


# What ends a catalog read from outside: the target's refusal or error (an administrator's
# pg_terminate_backend, a restart), a closed or reset connection (a crash), a bad message, a timeout.
_READ_FAILURES = (GatewayError, OSError, RuntimeError, PeerClosed, trio.BrokenResourceError,
                  trio.ClosedResourceError, ProtocolViolation, trio.TooSlowError)


async def read_catalog(target: TargetConfig, login: Login, context: ssl.SSLContext | None) -> Catalog:
    """Run the catalog queries over a connection of the gateway's own."""
    started = time.monotonic()  # the snapshot shows what was committed before this
    upstream = await connect(target, login, {"application_name": "pgguard catalog"}, context)
    try:
        names = await _rows(upstream, _QUERY)
        relations = await _rows(upstream, _RELATIONS)
        text_types = await _rows(upstream, _TEXT_TYPES)
        routines = await _rows(upstream, _ROUTINES)
        inheritance = await _rows(upstream, _INHERITANCE)
        owned = await _rows(upstream, _OWNED_SEQUENCES)
        await _rows(upstream, _NO_SEARCH_PATH)  # last: the queries above print names as masking reads them
        reached = [await _rows(upstream, sql) for sql in (_TRIGGERS, _RULES, _FOREIGN_KEYS, _VIEWS, _EVALUATED)]
    finally:
        upstream.stream.close()
    catalog = Catalog.from_rows([(kind or "", schema or "", name or "") for kind, schema, name in names])
    catalog = catalog.with_relations(relations).with_text_types(text_types).with_routines(routines)
    catalog = catalog.with_inheritance(inheritance)
    catalog = replace(catalog, loaded_at=started, sequence_owners={qualify(s_schema or "", s_name or ""): qualify(t_schema or "", t_name or "")
                                                for s_schema, s_name, t_schema, t_name in owned})
    return catalog.with_reaches(*reached)


_SEARCH_PATH = ("SELECT pg_catalog.encode(pg_catalog.convert_to(pg_catalog.current_setting('search_path'), 'UTF8'),"
                " 'hex')")


async def session_search_path(upstream: Upstream) -> str:
    """The search path a session's upstream backend starts with, asked before the client's first statement:
    the defaults of its login and database, and the startup packet's, are the server's to combine.

    Asked in hex of UTF-8, as the catalog's names are read: the startup packet may set a client_encoding
    in which a schema's name would read as another's (`"Ã©"` in LATIN1 is the bytes of `é` in UTF-8)."""
    try:
        (value,), = await _rows(upstream, _SEARCH_PATH)
        return bytes.fromhex(value or "").decode()
    except (RuntimeError, ValueError) as exc:
        raise fatal("42501", f"pgguard: cannot read the session's search_path: {exc}") from exc


async def _rows(upstream: Upstream, sql: str) -> list[list[str | None]]:
    """A query's rows as text."""
    await upstream.stream.send_all(frontend.Query(sql).encode())
    rows: list[list[str | None]] = []
    while True:
        for frame in await receive_frames(upstream.stream, upstream.framer):
            message = backend.decode_backend(frame)
            if isinstance(message, backend.DataRow):
                rows.append([None if value is None else value.decode() for value in message.values])
            elif isinstance(message, backend.ErrorResponse):
                raise RuntimeError(f"catalog query failed: {message.message}")
            elif isinstance(message, backend.ReadyForQuery):
                return rows


_versions = itertools.count(1)


def versioned(new: Catalog, old: Catalog | None) -> Catalog:
    """`new`, numbered as `old` if the database's objects did not change in between, else anew: a session
    decides its prepared statements again once the objects they may reach changed (SessionGuard.stale)."""
    if old is not None and replace(new, loaded_at=old.loaded_at, version=old.version, behind=old.behind) == old:
        return replace(new, version=old.version)
    return replace(new, version=next(_versions))


class Catalogs:
    """The current snapshot of every target, read on first use and refreshed."""

    def __init__(self) -> None:
        self._current: dict[str, Catalog] = {}
        self._stale: set[str] = set()
        # When each target's last read failed, and why.
        self._failed: dict[str, tuple[float, CatalogUnavailable]] = {}
        # When a session of the gateway last ran DDL, or ended a transaction that did, by target.
        self._changed: dict[str, float] = {}
        self._sources: dict[str, tuple[TargetConfig, Login, ssl.SSLContext | None]] = {}
        self._lock = trio.Lock()

    def current(self, target: str) -> Catalog:
        return self._current.get(target, EMPTY)

    def mark_stale(self, target: str, changed: bool = False) -> None:
        """Have the snapshot read again; `changed`: DDL ran, so until then the current one is `behind`."""
        self._stale.add(target)
        if changed:
            self._changed[target] = time.monotonic()
            current = self._current.get(target)
            if current is not None:
                self._current[target] = replace(current, behind=True)

    def _fresh(self, name: str) -> Catalog | None:
        catalog = self._current.get(name)
        if catalog is None or name in self._stale or time.monotonic() - catalog.loaded_at > MAX_AGE:
            return None
        return catalog

    async def ensure(self, target: TargetConfig, login: Login, context: ssl.SSLContext | None) -> Catalog:
        """A snapshot no older than MAX_AGE and not marked stale; read it if need be.

        No read takes longer than the target's `catalog_timeout`. When a read fails, the last
        snapshot stands (a stale one is mostly stricter), and a caller that waited for that read
        does not start another; with no snapshot at all, CatalogUnavailable says why.
        """
        self._sources[target.name] = (target, login, context)
        asked = time.monotonic()
        async with self._lock:
            fresh = self._fresh(target.name)
            if fresh is not None:
                return fresh
            last = self._current.get(target.name)
            failed = self._failed.get(target.name)
            if failed is not None and failed[0] >= asked:  # the read this caller waited for failed
                if last is None:
                    raise failed[1]
                return last
            self._stale.discard(target.name)
            try:
                catalog = await _read_within(target, login, context)
            except CatalogUnavailable as exc:
                self._failed[target.name] = (time.monotonic(), exc)
                log.warning("catalog of %s not refreshed: %s", target.name, exc)
                if last is None:
                    raise
                return last
            if self._changed.get(target.name, -1.0) >= catalog.loaded_at:  # DDL ran while it was read
                catalog = replace(catalog, behind=True)
            self._current[target.name] = catalog = versioned(catalog, last)
            return catalog

    async def keep_fresh(self) -> None:
        """Re-read snapshots marked stale (after DDL) or too old, for long sessions' sake."""
        while True:
            await trio.sleep(1)
            for name, source in list(self._sources.items()):
                if self._fresh(name) is None:
                    try:
                        await self.ensure(*source)
                    except CatalogUnavailable:
                        pass  # logged; tried again in a second, and logins are refused meanwhile
                    except Exception:
                        # A bug here must not end the gateway: sessions keep the last snapshot.
                        log.exception("catalog of %s not refreshed", name)


async def _read_within(target: TargetConfig, login: Login, context: ssl.SSLContext | None) -> Catalog:
    """read_catalog(), its failures as CatalogUnavailable, in `catalog_timeout` at most."""
    with trio.move_on_after(target.catalog_timeout):
        try:
            return await read_catalog(target, login, context)
        except _READ_FAILURES as exc:
            raise CatalogUnavailable(_why(exc), exc if isinstance(exc, GatewayError) else None) from exc
    raise CatalogUnavailable(f"no answer within {target.catalog_timeout:g} s")


def _why(failure: Exception) -> str:
    if isinstance(failure, GatewayError):
        return failure.message
    if isinstance(failure, trio.TooSlowError):
        return "the target did not answer the gateway's login in time"
    return str(failure) or "the target closed the connection"
