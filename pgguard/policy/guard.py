"""Deciding each statement of a session against its roles' scopes.

`Policy` holds what every session shares: the compiled scopes and a cache
of classifications (a classification depends on the text alone), keyed by
shape where it reads no constant (shapes.py), else by exact text. `SessionGuard` holds
what one session has done that changes later decisions: the search paths it
may be using, and the statements it has prepared (names.py), each with the
generation of the configuration it was decided under, so that a reload
reaches statements prepared before it.

Names resolve conservatively. An unqualified relation is checked in every
schema the session's search path could resolve it to, and the search path
is the union of every value the session has set (a SET rolled back or made
LOCAL cannot widen anything this way).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from pgguard.approvals.rules import ApprovalRule
from pgguard.config import Config
from pgguard.policy.catalog import SYSTEM_SCHEMAS, Catalog
from pgguard.policy.classify import (DDL, IDENTITY_SETTINGS, LEXICAL_SETTINGS, OTHER, WRITE, Name, Statement,
                                     Unsupported, classify_tree, parse, pg_true, placed, setting,
                                     split_identifiers)
from pgguard.policy.extensions import NEVER, trusted_extensions
from pgguard.policy.names import ALL, Named, ServerNames, Requests
from pgguard.policy.reach import CASCADE, Reach, events, reaches_changed
from pgguard.policy.scope import (ADVISORY_LOCKS, GUARDED_SYSTEM_RELATIONS, QUERY_TEXT_FUNCTIONS, Scope, compile_scope,
                                  qualify)
from pgguard.policy.shapes import Key, shape_of, shared

DEFAULT_SEARCH_PATH = ('"$user"', "public")
_SETTINGS_VIEW = qualify("pg_catalog", "pg_settings")
_CACHE_SIZE = 4096
# Seconds before a name the catalog did not know has it read again.
_ASK_AGAIN = 5.0
# EXECUTE of a statement that is itself an EXECUTE: followed no further than this.
_MAX_INDIRECTION = 4
# Allowed decisions a session keeps; all are dropped when there are more.
_DECISIONS_KEPT = 256
# Functions and operators that build a row of their first argument's type from text, and so run the
# domain checks of its columns whatever the statement names (hstore's populate_record() and #=).
_ROW_BUILDERS = frozenset({"populate_record", "json_populate_record", "jsonb_populate_record",
                           "json_populate_recordset", "jsonb_populate_recordset"})
_ROW_BUILDING_OPERATORS = frozenset({"#="})
# What the unnamed portal may be while the session has not been out of a transaction since a reload.
_PORTAL_BEFORE_RELOAD = Named(None, None, -1)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    statement: Statement | None
    rule: str = ""
    reason: str = ""
    hint: str | None = None
    # Allowed, but only once an approver approves it: every rule that holds it (a grant of one
    # leaves the others holding it).
    approvals: tuple[ApprovalRule, ...] = ()

    def about(self, statement: Statement) -> Decision:
        """This decision, for another statement of the same shape (cheaper than dataclasses.replace)."""
        return Decision(self.allowed, statement, self.rule, self.reason, self.hint, self.approvals)

    @property
    def approval(self) -> ApprovalRule | None:
        """The rule that holds the statement: of those that match, the one that needs the most approvers."""
        return max(self.approvals, key=lambda rule: rule.approvers) if self.approvals else None

    @property
    def message(self) -> str:
        what = self.statement.verb if self.statement else "statement"
        return f"pgguard: {what} refused: {self.reason}" + (f" (rule {self.rule})" if self.rule else "")


class Policy:
    def __init__(self, config: Config) -> None:
        self.scopes = {name: compile_scope(role) for name, role in config.roles.items()}
        # Extensions whose functions, operators and casts count as PostgreSQL's own (extensions.py).
        self.extensions = trusted_extensions(config.raw.get("policy", {}))
        # Statements by exact text, and by shape (shapes.py) where the classification reads no constant.
        self._parsed: OrderedDict[str, list[Statement]] = OrderedDict()
        self._shapes: OrderedDict[bytes, list[Statement]] = OrderedDict()

    def unrestricted(self, roles: Iterable[str]) -> bool:
        """True when one of `roles` may run every class of statement: nothing to check."""
        return any(self.scopes[name].unrestricted for name in roles)

    def classify(self, sql: str) -> list[Statement]:
        try:
            return self._classify(sql)
        except RecursionError:
            # A tree nested deeper than Python reads (PostgreSQL's own limit is deeper): refused, not a crash.
            raise Unsupported("the statement nests too deeply for pgguard to analyse") from None

    def _classify(self, sql: str) -> list[Statement]:
        cached = self._parsed.get(sql)
        if cached is not None:
            self._parsed.move_to_end(sql)
            return cached
        shape = shape_of(sql)
        if shape is not None:
            template = _recall(self._shapes, shape.key, lambda: shared(shape, classify_tree) or _NOT_SHARED)
            if template is not _NOT_SHARED:
                return placed(template, sql, shape.spans(len(template)))
        return _recall(self._parsed, sql, lambda: parse(sql))


_NOT_SHARED: list[Statement] = []  # a shape whose statements are classified text by text


def _recall(cache: OrderedDict[Key, list[Statement]], key: Key, make: Callable[[], list[Statement]]) -> list[Statement]:
    """cache[key], made and kept if missing; the least recently used entries go first."""
    found = cache.get(key)
    if found is not None:
        cache.move_to_end(key)
        return found
    found = cache[key] = make()
    if len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return found


def startup_settings(params: dict[str, str]) -> list[tuple[str, str]]:
    """The settings a startup packet makes: its parameters and its `options`.

    `options` may only hold `-c name=value` and `--name=value`, as libpq
    writes them; any other server switch is refused.
    """
    settings = [(name.lower(), value) for name, value in params.items()
                if name not in ("user", "database", "options", "replication", "application_name",
                                "client_encoding")]
    words, word, escaped = [], "", False
    for char in params.get("options", ""):
        if escaped:
            word, escaped = word + char, False
        elif char == "\\":
            escaped = True
        elif char in " \t\n\v\f\r":  # C's isspace, where PostgreSQL splits: any other is part of a word
            if word:
                words.append(word)
            word = ""
        else:
            word += char
    if escaped:
        # PostgreSQL would join what follows (the gateway's own options) to this word.
        raise Unsupported("startup options end in a backslash")
    if word:
        words.append(word)
    items = iter(words)
    for item in items:
        if item == "-c":
            item = "--" + next(items, "")
        elif item.startswith("-c"):
            item = "--" + item[2:]
        name, sep, value = item[2:].partition("=")
        if not item.startswith("--") or not sep or not name:
            raise Unsupported(f"startup option {item!r} is not supported (use -c name=value)")
        settings.append((name.replace("-", "_").lower(), value))
    return settings


def parse_search_path(values: Iterable[str]) -> tuple[str, ...]:
    """Schemas of search_path list strings, read as PostgreSQL reads them.

    Unquoted names fold to lower case, quoted ones keep their case and commas;
    "$user" stays as is; an empty name, which no schema has, is left out. A value
    that is not a valid list adds nothing (PostgreSQL refuses it; classify refuses
    it first).
    """
    schemas: list[str] = []
    for value in values:
        schemas.extend(schema for schema in split_identifiers(value) or () if schema)
    return tuple(schemas)


def _guarded_hint(qualified: str) -> str | None:
    """Why a system relation is not readable, for those that only named roles may read."""
    if qualified not in GUARDED_SYSTEM_RELATIONS:
        return None
    return (f"{qualified} holds values or secrets, not only descriptions of objects: only roles whose read"
            " patterns name it may read it (docs/policy.md, Relations and names)")


def _denial_hint(name: str) -> str | None:
    """How to allow a denied function, for those a role may allow, or what to use instead."""
    if name in QUERY_TEXT_FUNCTIONS:
        return ("it returns other sessions' statement texts: read pg_stat_activity instead, whose query column"
                " pgguard hides (docs/policy.md, Other sessions' statement texts)")
    if name not in ADVISORY_LOCKS:
        return None
    return (f'advisory locks are denied unless a role lists them: allow_functions = ["pg_catalog.{name}"]'
            " (docs/policy.md, Functions and operators)")


class SessionGuard:
    def __init__(self, policy: Policy, roles: list[str], login_user: str, catalog: Callable[[], Catalog],
                 search_path: tuple[str, ...] = DEFAULT_SEARCH_PATH, *, assume_builtin: bool = False,
                 on_ddl: Callable[[], None] = lambda: None, on_unknown: Callable[[], None] | None = None) -> None:
        self._take(policy, roles)
        self.login_user = login_user
        # The target's current snapshot, which a refresh may replace mid-session.
        self._catalog = catalog
        self.search_paths: set[tuple[str, ...]] = {parse_search_path(search_path)}
        # What RESET, RESET ALL, DISCARD ALL and SET … TO DEFAULT return search_path to: the path the server
        # started the session with (started()), as list strings.
        self.reset_path: tuple[str, ...] = search_path
        # What the server may hold under each prepared-statement and cursor name, and
        # the configuration generation (one more per reload) it was decided under.
        self.requests = Requests()
        self.prepared = ServerNames(self.requests)
        # Cursors (DECLARE) and named portals (Bind), by name, with what each runs.
        self.portals = ServerNames(self.requests)
        self.generation = 0
        # The generation when the session was last out of any transaction, so that no unnamed
        # portal of an earlier one exists; until it catches up after a reload, the unnamed portal
        # as bound since (before, it may have been bound before the reload).
        self._unnamed_known = 0
        self._unnamed: ServerNames | None = None
        # The expanded search paths and the set of their schemas, recomputed only when they or
        # the catalog change (search_paths only grows, so its size tells).
        self._path_key: tuple[int, frozenset[str]] | None = None
        self._paths: list[tuple[str, ...]] = []
        self._path_schema_set: set[str] = set()
        # Without a catalog (pgguard explain --offline), unqualified functions
        # and operators are taken to be PostgreSQL's own.
        self.assume_builtin = assume_builtin
        # Told when DDL is let through, so the catalog snapshot is re-read.
        self.on_ddl = on_ddl
        # Told of a name the catalog does not know, so that it is read again (on_ddl, unless given).
        self.on_unknown = on_unknown or on_ddl
        # DDL of this session that no snapshot may show yet: True while its transaction may be open (a read
        # by another connection cannot see it), then when it ended, until a snapshot read after that.
        self._ddl_open = False
        self._ddl_ended: float | None = None
        # The tables whose reaches that DDL may have changed; None: any table's.
        self._ddl_changed: set[str] | None = set()
        self._ddl_count = 0
        # Whether that DDL may change what other sessions see (not only the session's own temporary relations).
        self._ddl_shared = False
        # Allowed decisions by statement (its shape's, where it has one): see decide().
        self._decided: dict[int, tuple[Statement, tuple[int, Catalog, int], Decision]] = {}
        # Names the catalog did not know, and when a new read was last asked for
        # them (a temporary table is never in it: ask again, but not per statement).
        self._asked: dict[tuple[str, Name], float] = {}
        self._first_plans = self._plans

    @property
    def catalog(self) -> Catalog:
        return self._catalog()

    @property
    def unrestricted(self) -> bool:
        return any(scope.unrestricted for scope in self.scopes)

    def request_sent(self) -> None:
        """A Query, Sync or FunctionCall went upstream, after the guard decided what it carries."""
        self.requests.sent += 1

    def answered_error(self) -> None:
        self.requests.failing = True
        self.prepared.error()
        self.portals.error()
        if self._unnamed is not None:
            self._unnamed.error()

    def answered_ready(self, idle: bool) -> None:
        """A ReadyForQuery; `idle`: out of any transaction, so no portal of an earlier one is left."""
        requests = self.requests
        requests.done += 1
        requests.failing = False
        if idle and self._ddl_open:
            self._ddl_open, self._ddl_ended = False, time.monotonic()
            # A read since the DDL ran may have missed it; only the session's own temporary relations: no
            # other session's snapshot is behind.
            (self.on_ddl if self._ddl_shared else self.on_unknown)()
            self._ddl_shared = False
        self.prepared.ready()
        self.portals.ready(idle)
        if idle:
            self._unnamed_known, self._unnamed = self.generation, None
        elif self._unnamed is not None:
            self._unnamed.ready()

    def reconfigure(self, policy: Policy, roles: list[str]) -> None:
        """Decide from now on under a reloaded policy; what was prepared before is decided again when run."""
        self._take(policy, roles)
        self.generation += 1

    def _take(self, policy: Policy, roles: list[str]) -> None:
        self.policy = policy
        self.scopes: list[Scope] = [policy.scopes[name] for name in roles]
        self.roles_label = ", ".join(roles)
        # Every approval rule of the roles, looked at for nearly every message when there are any.
        self.approval_rules: tuple[ApprovalRule, ...] = tuple(rule for scope in self.scopes for rule in scope.approval)

    # -- entry points ---------------------------------------------------------

    def check_query(self, sql: str, *, parsing: bool = False) -> list[Decision]:
        """Decisions for the statements of a simple Query (or a Parse), stopping at the first refusal."""
        try:
            statements = self.policy.classify(sql)
        except Unsupported as exc:
            return [self._refuse(None, str(exc), "", "pgguard cannot analyse it, so it is not forwarded")]
        decisions = []
        for statement in statements:
            decision = self.decide(statement)
            decisions.append(decision)
            if not decision.allowed:
                break
            self.apply(statement, parsing=parsing)
        return decisions

    def check_parse(self, name: str, sql: str) -> Decision:
        """The decision for an extended-protocol Parse; remembers the statement by name."""
        decisions = self.check_query(sql, parsing=True)
        refused = next((d for d in decisions if not d.allowed), None)
        if refused is not None:
            return refused
        if len(decisions) <= 1:  # the server refuses a Parse of several statements
            statement = decisions[0].statement if decisions else None
            self.prepared.prepare(name, Named(statement, sql, self.generation, paths=self._plans),
                                  replaces=True)
        return decisions[0] if decisions else Decision(True, None)

    def forget(self, name: str) -> None:
        """A Close of a prepared statement."""
        self.prepared.close(name)

    @property
    def may_run_ddl(self) -> bool:
        """Whether some role of the session may run DDL (and so make tables, temporary ones too)."""
        return any(DDL in scope.statements for scope in self.scopes)

    @property
    def replanning(self) -> bool:
        """Whether a prepared statement may have been decided under another configuration or search path
        than the current ones (else none needs deciding again at its Bind)."""
        return bool(self.generation) or self._plans != self._first_plans

    @property
    def _plans(self) -> int:
        """Counts what makes a prepared statement be decided again at its Bind: each search path the session
        had, each DDL it ran (a trigger it made may set off what the statement writes), and each change of
        the database's objects that a catalog snapshot showed, whoever made it (the server plans the
        statement again after any of them). Every part only grows, so a sum tells."""
        return len(self.search_paths) + self._ddl_count + self.catalog.version

    def stale(self, held: Named) -> bool:
        """Whether prepared statement `held` was decided before a reload, or before the session's search
        path or the database's objects changed: the server plans it again at its next Bind, so it is
        decided again."""
        return held.generation != self.generation or held.paths != self._plans

    def check_again(self, name: str) -> Decision | None:
        """For a Bind or Describe of prepared statement `name`: a refusal if what it may hold was
        decided before a reload or a change of search path and is refused now; None when all of it
        is allowed."""
        label = f'prepared statement "{name}"' if name else "the unnamed prepared statement"
        return self._decide_again(self.prepared.candidates(name), f"{label} was prepared", replanned=True)

    def renew(self, name: str) -> None:
        """Prepared statement `name` was decided again, and allowed: not again at its next Bind."""
        self.prepared.renew(name, self.generation, self._plans)

    def bound(self, portal: str, statement: str) -> None:
        """A Bind of prepared statement `statement` to `portal`: told of every named portal, and of the
        unnamed one once a reload happened (it is bound for nearly every statement)."""
        if portal:
            # A Bind of a name the server holds fails; it holds one of the statement's candidates.
            for index, held in enumerate(self.prepared.candidates(statement) or (_PORTAL_BEFORE_RELOAD,)):
                self.portals.prepare(portal, replace(held, generation=self.generation, transient=True),
                                     replaces=index == 0)
        elif self.generation != self._unnamed_known:
            if self._unnamed is None:
                self._unnamed = ServerNames(self.requests, _PORTAL_BEFORE_RELOAD)
            self._unnamed.prepare("", Named(None, None, self.generation), replaces=True)

    def check_portal(self, name: str) -> Decision | None:
        """For an Execute, FETCH or MOVE of a portal (once a reload happened): a refusal if it was opened
        before the reload for a statement refused now, or may have been and pgguard cannot tell."""
        if name:
            return self._decide_again(self.portals.candidates(name), f'cursor "{name}" was opened')
        if self.generation == self._unnamed_known:
            return None
        held = self._unnamed.candidates("") if self._unnamed is not None else (_PORTAL_BEFORE_RELOAD,)
        return self._decide_again(held, "the unnamed portal was bound")

    def _decide_again(self, held: tuple[Named, ...], what: str, replanned: bool = False) -> Decision | None:
        """A refusal if one of `held`, decided before a reload, is refused now; `replanned`: a prepared
        statement, planned again by the server after a change of search path, so decided again then too."""
        for each in held:
            if each.generation != self.generation:
                since, again = "a configuration reload", "under the new one"
            elif replanned and each.paths != self._plans:
                since, again = "the session's search_path or the database's objects changed", \
                    "as the server plans it again"
            else:
                continue
            if not each.known:
                return self._refuse(None, f"{what} before {since}, and pgguard cannot tell what it"
                                    " holds", "", "close it, then prepare or declare it again")
            if each.statement is not None:
                decision = self.decide(each.statement)
                if not decision.allowed:
                    return replace(decision, hint=f"{what} before {since}, and is decided again {again}")
        return None

    def prepared_statements(self, name: str) -> list[Statement]:
        """The statements an EXECUTE of `name` may run."""
        return [held.statement for held in self.prepared.candidates(name) if held.statement is not None]

    def undecodable(self, encoding: str) -> Decision:
        return self._refuse(None, f"the statement is not valid {encoding}", "",
                            "pgguard reads statements in the session's client_encoding")

    def encoding_changing(self) -> Decision:
        return self._refuse(None, "the statement is not ASCII and was sent while client_encoding may be"
                            " changing", "", "wait for the server's answer to the statement that changes it")

    def refuse_function_call(self) -> Decision:
        return self._refuse(None, "the FunctionCall message is reserved to roles that may run anything",
                            "statements", "call the function from a SELECT instead")

    def started(self, search_path: str) -> None:
        """The session's search path as the server started it (`SHOW search_path` before its first
        statement): the login's and the database's defaults (ALTER ROLE/DATABASE … SET search_path) and the
        startup packet's, which the path assumed so far did not know. It replaces that path, and is what a
        RESET returns to."""
        self.reset_path = (search_path,)
        self.search_paths = {parse_search_path(self.reset_path)}
        self._path_key, self._decided = None, {}

    def check_startup(self, settings: list[tuple[str, str]]) -> Decision:
        """Settings from the startup packet get the rules of the same SET."""
        for name, value in settings:
            statement = setting(name, value)
            decision = self.decide(statement)
            if not decision.allowed:
                return decision
            self.apply(statement)
        return Decision(True, None)

    # -- deciding --------------------------------------------------------------

    def decide(self, statement: Statement, depth: int = 0) -> Decision:
        """Whether `statement` may run now. A statement that names no prepared statement or cursor is
        decided once for as long as what its decision depends on stays: the configuration generation,
        the catalog snapshot and the session's search paths (which only grow)."""
        if statement.executes is not None or statement.fetches is not None:
            return self._decide(statement, depth)
        what = statement.template or statement
        now = (self.generation, self.catalog, len(self.search_paths), self._ddl_open, self._ddl_ended)
        kept = self._decided.get(id(what))
        if kept is not None and kept[0] is what and kept[1] == now:
            decision = kept[2]
        else:
            decision = self._decide(statement, depth)
            if not decision.allowed:
                return decision  # decided again each time: a refusal may have the catalog read again
            if len(self._decided) >= _DECISIONS_KEPT:
                self._decided.clear()
            self._decided[id(what)] = (what, now, decision)
        return decision if decision.statement is statement else decision.about(statement)

    def _decide(self, statement: Statement, depth: int) -> Decision:
        # What an EXECUTE may run, for the approval rules.
        runs: list[Statement] = []
        if statement.executes is not None:
            # Every statement the name may hold, decided under the current policy.
            held = self.prepared.candidates(statement.executes)
            if not held or depth >= _MAX_INDIRECTION:
                return self._refuse(statement, f"EXECUTE of {statement.executes!r}, which pgguard did not see"
                                    " prepared", "", None)
            for candidate in held:
                if not candidate.known:
                    return self._refuse(statement, f"EXECUTE of {statement.executes!r}, which may hold more"
                                        " statements than pgguard follows", "", "DEALLOCATE it and PREPARE it again")
                if candidate.statement is None:
                    continue
                decision = self.decide(candidate.statement, depth + 1)
                if not decision.allowed:
                    return decision
                runs.append(candidate.statement)
        if statement.fetches is not None and self.generation:
            refused = self.check_portal(statement.fetches)
            if refused is not None:
                return replace(refused, statement=statement)
        if statement.fetches is not None and self.approval_rules:
            # A FETCH or MOVE of a portal that a Bind opened runs its statement: the approval rules see it.
            for held in self.portals.candidates(statement.fetches):
                if not held.known:
                    return self._refuse(statement, f"FETCH or MOVE of {statement.fetches!r}, which pgguard cannot"
                                        " follow, so it cannot tell whether it needs approval", "",
                                        "close it, then bind or declare it again")
                if held.statement is not None and held.statement.declares is None:  # a DECLARE was decided
                    runs.append(held.statement)
        if self.unrestricted:
            return Decision(True, statement)
        return self._check(statement) or self._approval(statement, runs)

    def _approval(self, statement: Statement, runs: list[Statement]) -> Decision:
        """Allowed; held when an approval rule of the caller's roles matches the statement or what it
        executes (`CREATE TABLE … AS EXECUTE p` is both). A PREPARE runs nothing: its EXECUTE is held."""
        rules = self.approval_rules
        if not rules or statement.prepares is not None:
            return Decision(True, statement)
        matched = [rule for rule in rules if any(rule.matches(st, self.related) for st in (statement, *runs))]
        if not matched:
            return Decision(True, statement)
        rule = max(matched, key=lambda rule: rule.approvers)
        return Decision(True, statement, rule.label, f"needs approval ({rule})", approvals=tuple(matched))

    def _check(self, st: Statement) -> Decision | None:
        for cls in sorted(st.classes):
            if not any(cls in scope.statements for scope in self.scopes):
                what = "statements pgguard cannot classify" if cls == OTHER else f"{cls} statements"
                return self._refuse(st, f"role {self.roles_label} may not run {what}", "statements",
                                    f"allowed classes: {', '.join(sorted(self._classes()))}")
        for relation in sorted(st.reads, key=str):
            for qualified, through in self._reached(relation):
                if not any(scope.may_read(qualified) for scope in self.scopes):
                    return self._refuse(st, f"role {self.roles_label} may not read {qualified}{through}", "read",
                                        _guarded_hint(qualified))
        for relation, kinds in sorted(st.writes.items(), key=lambda item: str(item[0])):
            cascade = {CASCADE} if st.cascades and "truncate" in kinds else set()
            written_to, calls = self._written(relation, frozenset(kinds | cascade))
            if calls:
                name, fired, how = calls[0]
                return self._refuse(st, f"function {name}() is denied, and a write ({'/'.join(sorted(fired))}) to"
                                    f" {relation} calls it through {how}", "functions", _denial_hint(name))
            for qualified, written, through in written_to:
                kind = "/".join(sorted(written - {CASCADE}))
                if qualified == _SETTINGS_VIEW:
                    # Its rule calls set_config() with the row's values: a SET of any setting, unseen.
                    return self._refuse(st, f"a write ({kind}) to {qualified}{through} sets what it names",
                                        "statements", "use SET, or set_config() with constant names")
                if qualified is None:
                    if not any(scope.writes_everywhere for scope in self.scopes):
                        return self._refuse(st, f"role {self.roles_label} may not write ({kind}) {relation}: {through};"
                                            " pgguard cannot follow that, so only a role that may write every table"
                                            " may set it off", "write", None)
                elif not any(scope.may_write(qualified) for scope in self.scopes) and \
                        not (written == {"nextval"} and self._owner_writable(qualified)):
                    return self._refuse(st, f"role {self.roles_label} may not write ({kind}) {qualified}{through}",
                                        "write", None)
        # A write that names no relation, or only the session's own temporary ones (pg_temp.t, checked
        # against no pattern), is still a write.
        if (WRITE in st.classes or st.read_write) and not any(scope.writes_anything for scope in self.scopes):
            hint = ("it asks for a read-write transaction or session (READ WRITE, or a read_only setting off);"
                    " leave that out (psycopg: leave read_only unset)" if st.read_write else None)
            return self._refuse(st, f"role {self.roles_label} may not write anything", "write", hint)
        for relation in st.catalog_names:
            if self.resolve(relation) != [qualify("pg_catalog", relation.name)]:
                return self._refuse(st, f"{relation} may not be pg_catalog's here, and set_config() takes the"
                                    " setting's name from it", "statements", f"write pg_catalog.{relation.name}")
        for name, values in st.settings:
            if name in IDENTITY_SETTINGS:
                return self._refuse(st, f"setting {name} is reserved", "statements",
                                    "the gateway decides who the session is")
            if name in LEXICAL_SETTINGS and values and not pg_true(values[0]):
                return self._refuse(st, f"setting {name} to {values[0]} is reserved", "statements",
                                    "pgguard reads statements as PostgreSQL does with it on")
        for function in sorted(st.functions, key=str):
            if function.schema in (None, *SYSTEM_SCHEMAS) and self._denied(function.name):
                return self._refuse(st, f"function {function.name}() is denied", "functions",
                                    _denial_hint(function.name))
            problem = self._system_member_problem("function", function, "()") or \
                self._callable_problem("function", function, self.catalog.functions, "()")
            if problem:
                return self._refuse(st, problem, "functions", None)
        for operator in sorted(st.operators, key=str):
            problem = self._system_member_problem("operator", operator, "") or self._operator_problem(operator)
            if problem:
                return self._refuse(st, problem, "functions", None)
        functions = self.catalog.functions
        for attribute in sorted(st.attributes):
            # `(x).f` is f(x), PostgreSQL's own functions too; `o.f` may be a column instead.
            if (attribute in functions or not functions) and self._denied(attribute):
                return self._refuse(st, f"function {attribute}() is denied (.{attribute} may call it in attribute"
                                    " notation)", "functions", _denial_hint(attribute))
            for qualified in self.user_defined(Name(None, attribute), functions) or ():
                if not self.callable("f", qualified):
                    return self._refuse(st, f"user-defined function {qualified}() is not listed as safe (.{attribute}"
                                        " may call it in attribute notation)", "functions", None)
        builders = sorted({f"{function.name}()" for function in st.functions if function.name in _ROW_BUILDERS} |
                          {f"operator {operator.name}" for operator in st.operators
                           if operator.name in _ROW_BUILDING_OPERATORS})
        if builders:
            for qualified in sorted(self.catalog.row_checks):
                if not self.callable("f", qualified):
                    return self._refuse(st, f"{builders[0]} builds a row from text, which runs domain checks that"
                                        f" call user-defined function {qualified}(), which is not listed as safe",
                                        "functions", None)
        for cast in sorted(st.casts, key=str):
            for qualified in sorted(self.catalog.casts.get(cast.name, ())):
                if not self.callable("f", qualified):
                    return self._refuse(st, f"a cast to {cast} runs user-defined function {qualified}(),"
                                        " which is not listed as safe", "functions", None)
        return None

    def _owner_writable(self, sequence: str) -> bool:
        """Whether the sequence is a serial or identity column's, of a table the roles may write: nextval() of it
        draws an id as the table's INSERT would (ORMs fetch ids first). setval() is still a write of the sequence."""
        owner = self.catalog.sequence_owners.get(sequence)
        return owner is not None and any(scope.may_write(owner) for scope in self.scopes)

    def _classes(self) -> set[str]:
        """The classes the roles may run; `write` only where some role may write somewhere."""
        classes = set().union(*(scope.statements for scope in self.scopes))
        if not any(scope.writes_anything for scope in self.scopes):
            classes.discard(WRITE)
        return classes

    def _refuse(self, st: Statement | None, reason: str, rule_key: str, hint: str | None) -> Decision:
        rule = f"roles.{self.roles_label}.{rule_key}" if rule_key else ""
        return Decision(False, st, rule, reason, hint)

    # -- names -------------------------------------------------------------------

    def _path_schemas(self) -> list[tuple[str, ...]]:
        key = (len(self.search_paths), self.catalog.schemas)
        if key != self._path_key:
            self._path_key, self._paths = key, self._expand_paths()
            self._path_schema_set = {schema for path in self._paths for schema in path}
        return self._paths

    def _expand_paths(self) -> list[tuple[str, ...]]:
        paths = []
        for path in self.search_paths:
            schemas = []
            for schema in path:
                if schema == "$user":
                    if self.login_user in self.catalog.schemas:
                        schemas.append(self.login_user)
                elif schema != "pg_temp":  # the session's own temporary objects
                    schemas.append(schema)
            if "pg_catalog" not in schemas:
                schemas.insert(0, "pg_catalog")
            paths.append(tuple(schemas))
        return paths

    def resolve(self, name: Name) -> list[str]:
        """Every schema-qualified relation `name` might be."""
        if name.schema is not None:
            return [] if name.schema == "pg_temp" else [qualify(name.schema, name.name)]
        system = qualify("pg_catalog", name.name)
        known_system = name.name in self.catalog.system_relations
        candidates: list[str] = []
        for path in self._path_schemas():
            for schema in path:
                if schema == "pg_catalog":
                    if known_system:
                        candidates.append(system)
                        break
                    continue
                candidates.append(qualify(schema, name.name))
        if system in GUARDED_SYSTEM_RELATIONS or not (self.catalog.system_relations or self.assume_builtin):
            candidates.append(system)  # no catalog to rule it out
        return list(dict.fromkeys(candidates))

    def _reached(self, name: Name) -> list[tuple[str, str]]:
        """Every relation `name` might be, and every table those reach through inheritance or partitioning
        (even where the statement says ONLY), each with how it is reached, for a refusal to say."""
        descendants = self.catalog.descendants
        reached = []
        for qualified in self.resolve(name):
            reached.append((qualified, ""))
            reached.extend((child, f" (reached through {qualified})")
                           for child in sorted(descendants.get(qualified, ())))
        return reached

    def _written(self, name: Name, kinds: frozenset[str]) -> tuple[list[tuple[str | None, frozenset[str], str]],
                                                                   list[tuple[str, frozenset[str], str]]]:
        """Every table a write of `kinds` to `name` writes: what `_reached` finds, and, transitively, what
        the views, rules, triggers and foreign keys of those write (reach.py). Each comes with the kinds of
        write and how it is reached, for a refusal to say; None for a write that pgguard cannot follow.
        And the built-in functions the roles deny that those call, each with the events and the reach that call it
        (a SECURITY INVOKER trigger runs them as the session's own login)."""
        reaches = self.catalog.reaches
        written: list[tuple[str | None, frozenset[str], str]] = []
        denied: list[tuple[str, frozenset[str], str]] = []
        if events(kinds) and not (self.catalog.system_relations or self.assume_builtin):  # no snapshot read (yet)
            written.append((None, kinds, "pgguard has not read the database's catalog, so it cannot tell what"
                                         " else the write reaches"))
        unseen = self._ddl_unseen() and bool(events(kinds))
        seen: set[tuple[str, frozenset[str]]] = set()
        pending = [(name, kinds, "")]
        while pending:
            target, kinds, how = pending.pop(0)  # breadth first: what the statement names comes first
            fired = events(kinds)
            for qualified, through in self._reached(target):
                if (qualified, kinds) in seen:
                    continue
                seen.add((qualified, kinds))
                written.append((qualified, kinds, through or how))
                if unseen and (self._ddl_changed is None or qualified in self._ddl_changed):
                    written.append((None, fired, f"{qualified} may reach further through this session's DDL, which"
                                                 " pgguard's catalog snapshot does not show yet; commit it, and"
                                                 " write again after a moment"))
                for reach in reaches.get(qualified, ()):
                    set_off = reach.events & fired
                    if not set_off:
                        continue
                    denied.extend((call, set_off, reach.how) for call in sorted(reach.calls) if self._denied(call))
                    if reach.writes is None:
                        written.append((None, set_off, f"it reaches further through {reach.how}"))
                    written.extend((None, set_off, f"it reaches further through {reach.how}, which calls {function}() of"
                                    f" extension {extension}, not trusted (docs/policy.md, Extensions)")
                                   for function, extension in self._untrusted(reach))
                    pending.extend((each, each_kinds, f" ({qualified} reaches it through {reach.how})")
                                   for each, each_kinds in reach.written(set_off))
        return written, denied

    def _ddl_unseen(self) -> bool:
        """Whether DDL this session ran may be missing from the snapshot (reads start after it has ended)."""
        if self._ddl_ended is not None and self.catalog.loaded_at > self._ddl_ended:
            self._ddl_ended, self._ddl_changed = None, set()
        return self._ddl_open or self._ddl_ended is not None

    def related(self, name: Name) -> list[str] | None:
        """Every relation `name` might be, and every table that shares rows with one through inheritance
        or partitioning: those it reaches, and those that reach it (an approval rule on a table holds
        writes to its partitions, and to its parent). None when a write to one of them may write other
        tables (a view, a trigger, a rule, a foreign key's action), which approval rules do not follow."""
        catalog = self.catalog
        reached = self._reached(name)
        found = [qualified for qualified, _ in reached]
        found.extend(parent for qualified, through in reached if not through  # what `name` may be itself
                     for parent, children in catalog.descendants.items() if qualified in children)
        if any(self._untrusted(reach) for qualified in found for reach in catalog.reaches.get(qualified, ())):
            return None  # what an untrusted extension's function writes, pgguard cannot tell
        return None if catalog.writes_further.intersection(found) else found

    def _path_set(self) -> set[str]:
        self._path_schemas()
        return self._path_schema_set

    def user_defined(self, name: Name, defined: dict[str, frozenset[str]]) -> list[str] | None:
        """Qualified user-defined candidates for a function or operator; None if unknown."""
        if name.schema is not None:
            return [] if name.schema in SYSTEM_SCHEMAS else [qualify(name.schema, name.name)]
        schemas = defined.get(name.name)
        if schemas is None:
            return [] if self.assume_builtin else None
        path = self._path_set()
        return [qualify(schema, name.name) for schema in sorted(schemas - SYSTEM_SCHEMAS) if schema in path]

    def _denied(self, name: str) -> bool:
        """A built-in function some role denies, unless some role lifts the denial (the union of their grants)."""
        return any(scope.function_denied(name) for scope in self.scopes) and \
            not any(scope.lifts_denial(name) for scope in self.scopes)

    def _operator_problem(self, operator: Name) -> str | None:
        return self._callable_problem("operator", operator, self.catalog.operators, "")

    def untrusted_system_member(self, kind: str, name: str) -> str | None:
        """The extension, one the policy does not trust, that defines function (kind "f") or operator ("o")
        `name` in pg_catalog (or information_schema): there it is that extension's code, not PostgreSQL's."""
        return next((extension for extension in sorted(self.catalog.system_members.get((kind, name), ()))
                     if not self.policy.extensions.trusts(extension, name)), None)

    def _system_member_problem(self, kind: str, name: Name, suffix: str) -> str | None:
        if name.schema not in (None, *SYSTEM_SCHEMAS):
            return None
        extension = self.untrusted_system_member("o" if kind == "operator" else "f", name.name)
        if extension is None:
            return None
        why = f": {NEVER[extension]}" if extension in NEVER else ""
        return f"{kind} pg_catalog.{name.name}{suffix} of extension {extension}, which is not trusted{why}"

    def trusted(self, kind: str, qualified: str) -> bool:
        """Whether every function (kind "f") or operator ("o") named `qualified` belongs to an extension the
        policy trusts, and so counts as PostgreSQL's own (extensions.py)."""
        return self._member(kind, qualified) and not self._resolves_on_path(kind, qualified)

    def _member(self, kind: str, qualified: str) -> bool:
        return self.policy.extensions.trusts_all(self.catalog.members.get((kind, qualified)), qualified)

    def _resolves_on_path(self, kind: str, qualified: str) -> bool:
        """Whether `qualified` has an SQL body and some path of the session puts a schema before pg_catalog:
        the bodies of extensions' SQL functions name operators unqualified (citext's `strpos($3, 'c') = 0`),
        which PostgreSQL resolves on the caller's path, so there to a user's `=` in that schema."""
        routines = (self.catalog.routines if kind == "f" else self.catalog.operator_routines).get(qualified, ())
        return any(routine.language == "sql" for routine in routines) and \
            any(path[0] != "pg_catalog" for path in self._path_schemas())

    def callable(self, kind: str, qualified: str) -> bool:
        """Whether the roles may call the user-defined function or operator `qualified`: a trusted extension's,
        or one `allow_functions` lists."""
        return self.trusted(kind, qualified) or any(scope.function_allowed(qualified) for scope in self.scopes)

    def _untrusted(self, reach: Reach) -> list[tuple[str, str]]:
        """The extensions' functions a reach calls that the policy does not trust: pgguard cannot tell what they write."""
        return [(function, extension) for function, extension in sorted(reach.extension_calls)
                if not self.policy.extensions.trusts(extension, function)]

    def _callable_problem(self, kind: str, name: Name, defined: dict[str, frozenset[str]],
                          suffix: str) -> str | None:
        """Unknown, or user-defined and not listed as safe: a reason to refuse."""
        candidates = self.user_defined(name, defined)
        if candidates is None:
            self.unknown(kind, name)
            return f"{kind} {name}{suffix} is unknown to pgguard"
        for qualified in candidates:
            code = "o" if kind == "operator" else "f"
            if not self.callable(code, qualified):
                if self._member(code, qualified):
                    return (f"{kind} {qualified}{suffix} of a trusted extension runs SQL whose names resolve on the"
                            " search path, which puts another schema before pg_catalog")
                return f"user-defined {kind} {qualified}{suffix} is not listed as safe"
        return None

    def unknown(self, kind: str, name: Name) -> None:
        """A name the catalog does not know, created since it was read (outside the gateway?): have it read again."""
        now = time.monotonic()
        if now - self._asked.get((kind, name), -_ASK_AGAIN) >= _ASK_AGAIN:
            self._asked[(kind, name)] = now
            self.on_unknown()

    # -- session state ---------------------------------------------------------------

    def apply(self, statement: Statement, *, parsing: bool = False, depth: int = 0) -> None:
        """Record what an allowed statement changes for later decisions.

        `parsing`: it is being prepared by a Parse, and may run at any later
        Execute or never: a DEALLOCATE or CLOSE in it closes nothing, and a
        PREPARE or DECLARE in it only adds to what the name may hold.
        """
        if statement.executes is not None:
            # EXECUTE does what was prepared: a set_config('search_path', …) among it.
            for held in self.prepared_statements(statement.executes):
                if depth < _MAX_INDIRECTION:
                    self.apply(held, depth=depth + 1)
        if DDL in statement.classes:
            self._ddl_unseen()  # forget DDL a snapshot shows by now
            changed = reaches_changed(statement)
            if changed is None or self._ddl_changed is None:
                self._ddl_changed = None
            else:
                self._ddl_changed.update(qualified for name in changed for qualified in self.resolve(name))
            self._ddl_open, self._ddl_count = True, self._ddl_count + 1
            self._ddl_shared = self._ddl_shared or not statement.temporary
            (self.on_unknown if statement.temporary else self.on_ddl)()
        for name, values in statement.settings:
            if name == "search_path":
                self.search_paths.add(parse_search_path(values or self.reset_path))
            elif name == "all" and values is None:
                self.search_paths.add(parse_search_path(self.reset_path))
        if statement.prepares is not None and statement.inner is not None:
            # Sure to hold it once its request is answered without an error, unless a
            # Parse prepares it: it then runs at each Execute, if any.
            self.prepared.prepare(statement.prepares,
                                  Named(statement.inner, None, self.generation, paths=self._plans),
                                  replaces=not parsing)
        if statement.deallocates is not None and not parsing:
            self.prepared.close(ALL if statement.deallocates == "*" else statement.deallocates)
        if statement.declares is not None:
            self.portals.prepare(statement.declares, Named(statement, None, self.generation, not statement.with_hold),
                                 replaces=not parsing)
        if statement.closes is not None and not parsing:
            self.portals.close(ALL if statement.closes == "*" else statement.closes)
