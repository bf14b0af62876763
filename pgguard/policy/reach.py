"""Where a write goes beyond the relations it names: views, rules, foreign-key actions, triggers.

PostgreSQL runs more than the statement. A write to an updatable view writes its base table; a
rule (`ON DELETE TO t DO ALSO INSERT INTO u …`) runs its actions; a foreign key's `ON DELETE
CASCADE`, `SET NULL` or `SET DEFAULT` (and `ON UPDATE …`) writes the referencing table;
`TRUNCATE … CASCADE` empties every table whose foreign keys refer to one it empties; and a
trigger runs its function. A role that may write `x` but not `y` must not change `y` through `x`.

The catalog snapshot turns what the database holds into `Reach`es, one per way a write to a
relation writes others, each with what it writes. The guard walks them, transitively, and checks
each table reached like one the statement names (guard.py, `SessionGuard._written`).

A trigger's writes are those of its function's body, followed as masking lineage follows bodies
(pgguard/masking/bodies.py), into the user-defined functions, operators and casts it calls. Where that
cannot be told (another language, dynamic SQL, a SECURITY DEFINER function without a search_path
of its own, …) the reach says why, and only a role that may write every table may set it off.
PostgreSQL's own functions (pg_catalog's, such as suppress_redundant_updates_trigger) are taken
to write nothing but the row, as a statement's own calls of them are, unless they run SQL text.
Each reach also names the ones it calls, so that the guard refuses a write that sets off a call of
one the session's roles deny (pg_terminate_backend, lo_import, …), as it refuses the call itself:
which are denied is the roles' to say, and a snapshot's reaches serve every role.
Sans-IO: built from the catalog's rows, once per snapshot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fnmatch import fnmatchcase

from pglast import parser

from pgguard.masking.bodies import FOLLOWED_LANGUAGES, Routine, body_of
from pgguard.policy.classify import READ, WRITE, Name, Node, Statement, Unsupported, classify_node
from pgguard.policy.scope import RUNS_SQL_TEXT, SYSTEM_SCHEMAS, qualify

_SYSTEM = frozenset(SYSTEM_SCHEMAS)
# TRUNCATE … CASCADE: what sets off the foreign keys that refer to a table being emptied.
CASCADE = "cascade"
# What a kind of write (classify.py's) sets off in the database. A COPY FROM fires insert triggers;
# a MERGE may insert, update and delete (its WHEN clauses' own kinds come with it).
_EVENTS = {"insert": ("insert",), "copy": ("insert",), "update": ("update",), "delete": ("delete",),
           "merge": ("insert", "update", "delete"), "truncate": ("truncate",), CASCADE: (CASCADE,)}
# pg_trigger.tgtype's event bits, and pg_rewrite.ev_type's events.
_TRIGGER_EVENTS = {4: "insert", 8: "delete", 16: "update", 32: "truncate"}
_RULE_EVENTS = {"2": "update", "3": "insert", "4": "delete"}
_ROW_EVENTS = frozenset({"insert", "update", "delete"})
# A foreign key's action codes (pg_constraint.confdeltype, confupdtype) that write the referencing table.
_ACTIONS = {"c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}
# User-defined functions followed into from a trigger's: no deeper than this, and no more bodies per
# trigger or rule (a body is followed again for each call of it, so calls could multiply).
# What a write evaluates (catalog.py's _EVALUATED): the events that do, and what to call it.
_EVALUATED = {"default": (frozenset({"insert", "update"}), "default of column"),
              "check": (frozenset({"insert", "update"}), "check constraint"),
              "domain": (frozenset({"insert", "update"}), "domain check of column"),
              "policy": (_ROW_EVENTS, "row security policy"),
              "": (_ROW_EVENTS, "expression")}
_MAX_DEPTH = 8
_MAX_BODIES = 64

Writes = tuple[tuple[Name, frozenset[str]], ...]


def events(kinds: frozenset[str] | set[str]) -> frozenset[str]:
    """The events a write of `kinds` sets off: insert, update, delete, truncate, cascade."""
    return frozenset(event for kind in kinds for event in _EVENTS.get(kind, ()))


@dataclass(frozen=True)
class Reach:
    """One way a write to a relation writes other relations."""

    events: frozenset[str]  # the events that set it off
    how: str  # "the trigger audit on public.t (function public.audit())", for a refusal to name
    # What it writes, with the kinds of write; no kinds: those that set it off (a view's base table).
    # None: pgguard cannot tell what it writes, and `how` says why.
    writes: Writes | None
    # PostgreSQL's own functions it calls, by name (those followed before any reason it could not be).
    calls: frozenset[str] = frozenset()
    # Extensions' C functions it calls, taken to write nothing, as (schema.name, extension): only where the
    # session's policy trusts the extension (pgguard/policy/extensions.py); else pgguard cannot tell.
    extension_calls: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def of(cls, fired: frozenset[str], how: str, writes: Writes | str,
           calls: tuple[frozenset[str], frozenset[tuple[str, str]]]) -> Reach:
        """A reach of what was followed: `writes`, or why it could not be (a str); and the built-ins and
        extensions' functions it calls."""
        if isinstance(writes, str):
            return cls(fired, f"{how}, where {writes}", None, *calls)
        return cls(fired, how, writes, *calls)

    def written(self, fired: frozenset[str]) -> list[tuple[Name, frozenset[str]]]:
        return [(name, kinds or fired) for name, kinds in self.writes or ()]

    @property
    def row_writes(self) -> bool:
        """Whether a plain INSERT, UPDATE or DELETE sets it off (not only TRUNCATE … CASCADE), and it may write
        another table (a default that only calls built-ins writes none)."""
        return bool(self.events - {CASCADE}) and (self.writes != () or not (self.calls or self.extension_calls))


class Follower:
    """Builds the reaches of a catalog snapshot; knows its user-defined functions and operators."""

    def __init__(self, functions: dict[str, frozenset[str]], operators: dict[str, frozenset[str]],
                 routines: dict[str, tuple[Routine, ...]], operator_routines: dict[str, tuple[Routine, ...]],
                 casts: dict[str, frozenset[str]]) -> None:
        self._defined = {False: functions, True: operators}
        self._routines = {False: routines, True: operator_routines}
        self._casts = casts  # type name -> user-defined functions a cast to it may run (catalog.py)
        self._followed = 0  # bodies followed for the trigger or rule at hand
        self._builtins: set[str] = set()  # PostgreSQL's own functions they call
        self._extensions: set[tuple[str, str]] = set()  # extensions' C functions they call

    def reaches(self, triggers: list[list[str | None]], rules: list[list[str | None]],
                foreign_keys: list[list[str | None]], views: list[list[str | None]],
                evaluated: list[list[str | None]] | None = None,
                owners: dict[str, str] | None = None) -> dict[str, tuple[Reach, ...]]:
        """Every relation's reaches, from the rows of catalog.py's queries (names printed fully qualified).
        `owners`: sequence -> the table whose column owns it (its default's nextval draws the table's own ids)."""
        found: dict[str, list[Reach]] = {}
        for schema, table, kind, name, expression in evaluated or []:
            qualified = qualify(schema or "", table or "")
            writes = self._expression(expression or "", f"its {_EVALUATED[kind or ''][1]} {name}")
            if not isinstance(writes, str):
                writes = tuple((written, kinds) for written, kinds in writes
                               if not (kinds == {"nextval"} and (owners or {}).get(str(written)) == qualified))
                if not writes and not self._builtins and not self._extensions:
                    continue  # the table's own sequence, or nothing at all
            how = f"the {_EVALUATED[kind or ''][1]} {name} of {qualified}"
            found.setdefault(qualified, []).append(Reach.of(_EVALUATED[kind or ""][0], how, writes, self._calls()))
        for schema, view, definition in views:
            try:
                base = _base(definition or "")
            except ValueError:
                found.setdefault(qualify(schema or "", view or ""), []).append(
                    Reach(_ROW_EVENTS, "the view's definition, which pgguard cannot read", None))
                continue
            if base is not None:
                found.setdefault(qualify(schema or "", view or ""), []).append(
                    Reach(_ROW_EVENTS, f"the view's base relation {base}", ((base, frozenset()),)))
        for schema, table, trigger, tgtype, function_schema, function, language, definer, body, created in triggers:
            qualified = qualify(schema or "", table or "")
            name = qualify(function_schema or "", function or "")
            fired = frozenset(event for bit, event in _TRIGGER_EVENTS.items() if int(tgtype or 0) & bit)
            how = f"the trigger {trigger} on {qualified} (function {name}())"
            writes = self._trigger(created or "", function_schema in _SYSTEM,
                                   Routine(name, language or "", definition=body), definer == "t")
            found.setdefault(qualified, []).append(Reach.of(fired, how, writes, self._calls()))
        for schema, table, rule, event, definition in rules:
            qualified = qualify(schema or "", table or "")
            how = f"the rule {rule} on {qualified}"
            writes = self._rule(definition or "")
            fired = frozenset({_RULE_EVENTS[event]}) if event in _RULE_EVENTS else _ROW_EVENTS
            found.setdefault(qualified, []).append(Reach.of(fired, how, writes, self._calls()))
        for schema, table, referencing_schema, referencing, key, on_delete, on_update in foreign_keys:
            qualified = qualify(schema or "", table or "")
            other = Name(referencing_schema, referencing or "")
            how = f"the foreign key {key} of {qualify(referencing_schema or '', referencing or '')}"
            reaches = found.setdefault(qualified, [])
            reaches.append(Reach(frozenset({CASCADE}), f"{how} (TRUNCATE … CASCADE)",
                                 ((other, frozenset({"truncate", CASCADE})),)))
            for event, action in (("delete", on_delete), ("update", on_update)):
                if action in _ACTIONS:
                    kind = "delete" if (event, action) == ("delete", "c") else "update"
                    reaches.append(Reach(frozenset({event}), f"{how} (ON {event.upper()} {_ACTIONS[action]})",
                                         ((other, frozenset({kind})),)))
        return {relation: tuple(each) for relation, each in found.items()}

    def _calls(self) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
        """The built-ins and extensions' functions that what was just followed calls; and start afresh for the next."""
        calls = frozenset(self._builtins), frozenset(self._extensions)
        self._builtins, self._extensions = set(), set()
        return calls

    def _expression(self, expression: str, what: str) -> Writes | str:
        """What evaluating a default, a CHECK or a policy writes, or why pgguard cannot tell."""
        self._followed, self._builtins, self._extensions = 0, set(), set()
        try:
            select = _parsed(f"SELECT {expression}", "SelectStmt")
        except ValueError:
            return "pgguard cannot read it"
        return self._statements([("SelectStmt", select)], None, (), what)

    def _trigger(self, created: str, builtin: bool, routine: Routine, definer: bool) -> Writes | str:
        """What a trigger's WHEN condition and function write, or why pgguard cannot tell. `created`: its
        CREATE TRIGGER; `builtin`: the function is PostgreSQL's own, which changes only the row."""
        self._followed, self._builtins, self._extensions = 0, set(), set()
        try:
            condition = _condition(_parsed(created, "CreateTrigStmt").get("whenClause"))
        except ValueError:
            return "pgguard cannot read its definition"
        writes = self._statements(condition, None, (), "its WHEN condition")
        if builtin:
            self._builtins.add(routine.name.rsplit(".", 1)[-1])
        if isinstance(writes, str) or builtin:
            return writes
        body = body_of(routine)
        if definer and body.statements is not None and body.search_path is None:
            # It runs as its owner, and "$user" on the caller's search path is then the owner's schema.
            return f"{routine.name}() is SECURITY DEFINER without a search_path of its own"
        followed = self._body(routine, body.search_path, ())
        return followed if isinstance(followed, str) else writes + followed

    def _rule(self, definition: str) -> Writes | str:
        """What a rule's condition and actions write, or why pgguard cannot tell."""
        self._followed, self._builtins, self._extensions = 0, set(), set()
        try:
            rule = _parsed(definition, "RuleStmt")
        except ValueError:
            return "pgguard cannot read its definition"
        actions = [next(iter(action.items())) for action in rule.get("actions", [])]
        return self._statements(_condition(rule.get("whereClause")) + actions, None, (), "its condition or actions")

    def _body(self, routine: Routine, search_path: tuple[str, ...] | None, stack: tuple[str, ...]) -> Writes | str:
        if routine.name in stack:
            return ()  # a recursive call writes what the body being followed writes
        if len(stack) >= _MAX_DEPTH or self._followed >= _MAX_BODIES:
            return f"functions call functions deeper or more often than pgguard follows, at {routine.name}()"
        self._followed += 1
        if routine.extension_code:
            self._extensions.add((routine.name, routine.extension))
            return ()
        body = body_of(routine)
        if body.statements is None:
            why = (f"language {routine.language or 'unknown'}" if routine.language not in FOLLOWED_LANGUAGES
                   else "dynamic SQL, or a search_path pgguard cannot tell")
            return f"pgguard cannot follow the body of {routine.name}() ({why})"
        schemas = body.search_path if body.search_path is not None else search_path
        return self._statements(list(body.statements), schemas, (*stack, routine.name), f"{routine.name}()")

    def _statements(self, statements: list[tuple[str, Node]], schemas: tuple[str, ...] | None,
                    stack: tuple[str, ...], what: str) -> Writes | str:
        """What `statements` write, unqualified names placed in `schemas` (None: the session's search path)."""
        found: list[tuple[Name, frozenset[str]]] = []
        for kind, node in statements:
            try:
                statement = classify_node(kind, node)
            except (Unsupported, KeyError, TypeError, ValueError, RecursionError) as exc:
                return f"{what} runs a statement pgguard cannot analyse ({exc})"
            others = statement.classes - {READ, WRITE}
            if others:
                return f"{what} runs {', '.join(sorted(others))} statements"
            if statement.settings:  # set_config('search_path', …) would move the names that follow
                return f"{what} changes settings ({', '.join(name for name, _ in statement.settings)})"
            for name, kinds in statement.writes.items():
                found.extend((placed, frozenset(kinds)) for placed in _placed(name, schemas))
            called = self._runs(statement, schemas, what)
            if isinstance(called, str):
                return called
            for routine in called:
                writes = self._body(routine, schemas, stack)
                if isinstance(writes, str):
                    return writes
                found.extend(writes)
        return tuple(dict.fromkeys(found))

    def _runs(self, statement: Statement, schemas: tuple[str, ...] | None, what: str) -> list[Routine] | str:
        """The user-defined functions a statement may call, as the statement policy counts calls: functions,
        operators, attribute notation (`(r).f` is f(r)) and casts; or why pgguard cannot tell."""
        calls = [(name, False) for name in sorted(statement.functions, key=str)]
        calls += [(name, True) for name in sorted(statement.operators, key=str)]
        calls += [(Name(None, name), False) for name in sorted(statement.attributes) if name in self._defined[False]]
        found: list[Routine] = []
        for name, operator in calls:
            called = self._called(name, operator, schemas, what)
            if isinstance(called, str):
                return called
            found.extend(called)
        for cast in sorted(statement.casts, key=str):
            for function in sorted(self._casts.get(cast.name, ())):
                found.extend(self._routines[False].get(function, (Routine(function, ""),)))
        return found

    def _called(self, name: Name, operator: bool, path: tuple[str, ...] | None, what: str) -> list[Routine] | str:
        """The user-defined functions a call of `name` may run, or why it is not followed. An unqualified name
        may be any schema's on `path` (a function's own search_path), or of any schema at all (None: the
        session's search path, which the catalog cannot know)."""
        suffix = "" if operator else "()"
        defined, routines = self._defined[operator], self._routines[operator]
        schemas = {name.schema} if name.schema is not None else defined.get(name.name)
        if schemas is None:
            return f"{what} calls {name}{suffix}, which pgguard does not know"
        if name.schema is None and path is not None:
            schemas = schemas & {*path, *_SYSTEM}
        if not operator and schemas & _SYSTEM:
            if any(fnmatchcase(name.name, p) for p in RUNS_SQL_TEXT):
                return f"{what} calls {name.name}(), which runs SQL handed to it as text"
            self._builtins.add(name.name)
        user = sorted(schemas - _SYSTEM)
        found = [routine for schema in user for routine in routines.get(qualify(schema, name.name), ())]
        if user and not found:
            return f"{what} calls {name}{suffix}, which pgguard does not know"
        return found


# DDL that changes no table's reaches, and DDL that changes only those of the relations it names (a table's
# triggers, rules, foreign keys that refer to it, partitions and children; a view's base).
_REACHES_KEPT = frozenset({"IndexStmt", "CommentStmt", "CreateSeqStmt", "AlterSeqStmt", "CreateTableAsStmt",
                           "DropStmt"})
_REACHES_OF_NAMED = frozenset({"CreateStmt", "AlterTableStmt", "CreateTrigStmt", "RuleStmt", "ViewStmt"})


def reaches_changed(statement: Statement) -> set[Name] | None:
    """The relations whose reaches DDL `statement` may change (None: any relation's, as a replaced
    function's body may). A new table reaches nothing unless it is a partition or child, or refers to a
    table (whose foreign keys' actions then reach it): those it names are then counted, itself too. An
    ALTER TABLE that adds a column or a constraint changes the reaches of the tables it refers to only
    (a migration backfills the column it added)."""
    if statement.kind in _REACHES_KEPT:
        return set()
    if statement.kind not in _REACHES_OF_NAMED:
        return None
    if statement.kind == "CreateStmt":  # its parents are among what it reads
        parents = set(statement.reads)
        return statement.refers | parents | (set(statement.writes) if parents else set())
    if statement.kind == "AlterTableStmt" and statement.alters_columns_only:
        return set(statement.refers)
    return statement.refers | set(statement.writes)


def _placed(name: Name, schemas: tuple[str, ...] | None) -> list[Name]:
    """`name` in each schema it may be: a function's own search_path, or the session's (None)."""
    if name.schema is not None or schemas is None:
        return [name]
    return [Name(schema, name.name) for schema in schemas if schema != "pg_temp"]


def _parsed(definition: str, kind: str) -> Node:
    """The parse node of a definition the catalog prints, a statement of `kind`; ValueError if it is not one."""
    try:
        (raw,) = json.loads(parser.parse_sql_json(definition))["stmts"]
        return raw["stmt"][kind]  # type: ignore[no-any-return]
    except (parser.ParseError, KeyError) as exc:
        raise ValueError(f"not a {kind}: {exc}") from exc


def _condition(expression: Node | None) -> list[tuple[str, Node]]:
    """A trigger's WHEN or a rule's WHERE, as the SELECT of its value that classify reads (it may call functions)."""
    return [] if expression is None else [("SelectStmt", {"targetList": [{"ResTarget": {"val": expression}}]})]


def _base(definition: str) -> Name | None:
    """An automatically updatable view's base relation: the one relation of its top-level FROM.
    None for any other view, which PostgreSQL writes only through its triggers or rules; ValueError if
    the definition does not parse."""
    select = _parsed(definition, "SelectStmt")
    items = select.get("fromClause", [])
    if select.get("op", "SETOP_NONE") != "SETOP_NONE" or len(items) != 1 or "RangeVar" not in items[0]:
        return None
    relation = items[0]["RangeVar"]
    return Name(relation.get("schemaname"), relation["relname"])
