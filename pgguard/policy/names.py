"""What a session's server may hold under a name, and the configuration each was decided under.

The guard keeps one for prepared statements (Parse, PREPARE), one for
cursors and named portals (DECLARE, Bind), and after a reload one for the
unnamed portal.

A Bind or an EXECUTE runs what the server holds under a name, which may
have been decided under a configuration since reloaded; so it is decided
again, and that needs what the server holds, not what the client last
asked for. Those differ when the server does not run a request: an error
makes it skip the rest of an extended-protocol batch up to Sync, a Parse
or PREPARE of a name it holds already fails, and a DEALLOCATE in a failed
transaction fails.

So a change (Parse, Close, PREPARE, DEALLOCATE) takes effect here only
when the ReadyForQuery that ends its request comes back with no error
seen since it was sent. Until then, and whenever an error leaves it
unsure, the change can only add to what a name may hold: a name may hold
several statements, and each of them is decided. A Bind or EXECUTE later
in the same request as the change, though, runs only if the change
succeeded, so for it the change is certain.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pgguard.policy.classify import Statement

ALL = "*"  # DEALLOCATE ALL, DISCARD ALL
# Statements a name may hold, at most; past them, it holds one pgguard cannot tell.
_MAX_CANDIDATES = 16


@dataclass(frozen=True, slots=True)
class Named:
    """A statement a name may hold: as classified, its text (for masking), and the generation it was decided in."""

    statement: Statement | None  # None: an empty query (with its `sql`), or not known (no `sql`)
    sql: str | None  # the Parse's text; None for a SQL PREPARE's inner statement
    generation: int
    transient: bool = False  # gone once the session is out of any transaction (a cursor not WITH HOLD)
    # For a prepared statement, how many search paths the session had when it was decided: the
    # server plans it again at a Bind under a changed search_path, and so it is decided again.
    paths: int = 0

    @property
    def text(self) -> str | None:
        """The text it was made from: the Parse's, or the statement's own (a PREPARE's or DECLARE's);
        None when it is not known."""
        if self.sql is not None:
            return self.sql
        return self.statement.text if self.statement is not None else None

    @property
    def known(self) -> bool:
        return self.statement is not None or self.sql is not None


@dataclass(slots=True)
class Requests:
    """The session's requests, counted once for every tracker of names."""

    sent: int = 0  # requests sent that end in ReadyForQuery (Query, Sync, FunctionCall)
    done: int = 0  # ReadyForQuery seen
    failing: bool = False  # an error came, and the ReadyForQuery that ends its request has not


@dataclass(slots=True)
class _Change:
    request: int  # the count of requests sent (Query, Sync, FunctionCall) when its answer is complete
    name: str
    held: Named | None  # None: the name is closed
    certain: bool  # False: it may not run, so it only adds to what the name may hold


class ServerNames:
    """The names of one kind. The session's `Requests` are counted by its owner, which tells
    this tracker of each ErrorResponse and ReadyForQuery after counting them."""

    def __init__(self, requests: Requests, unknown: Named | None = None) -> None:
        self._requests = requests
        # What a name holds before anything is known of it: nothing, or `unknown`.
        self._unknown: tuple[Named, ...] = () if unknown is None else (unknown,)
        self._held: dict[str, tuple[Named, ...]] = {}
        self._changes: list[_Change] = []
        self._transient = False  # something transient is held

    # -- what the client sends ----------------------------------------------------

    def prepare(self, name: str, held: Named, replaces: bool) -> None:
        """A Parse (`replaces`: once it succeeds the name holds it alone), or a PREPARE (it may run or not)."""
        requests = self._requests
        self._changes.append(_Change(requests.sent + 1, name, held, replaces and not requests.failing))

    def close(self, name: str) -> None:
        """A Close or DEALLOCATE of `name`, or of every name (ALL)."""
        if not self._requests.failing:  # else it may not run: the name keeps what it may hold
            self._changes.append(_Change(self._requests.sent + 1, name, None, True))

    def candidates(self, name: str) -> tuple[Named, ...]:
        """Every statement `name` may hold when a request sent now runs."""
        held = self._held.get(name, self._unknown)
        current = self._requests.sent + 1
        for change in self._changes:
            if change.name != name and change.name != ALL:
                continue
            if change.certain and change.request == current:
                # Earlier in this very request: if it failed, the request never runs.
                held = () if change.held is None else (change.held,)
            elif change.held is not None:
                held = _added(held, change.held)
        return held

    # -- what the server answers --------------------------------------------------

    def error(self) -> None:
        """An ErrorResponse: the changes not yet answered may have been skipped."""
        kept = []
        for change in self._changes:
            if change.held is not None:
                change.certain = False
                kept.append(change)
        self._changes = kept

    def ready(self, idle: bool = False) -> None:
        """A ReadyForQuery: the changes its request (and those before) ended take effect;
        `idle`: out of any transaction, so what is transient is gone."""
        if self._changes:
            self._apply(self._requests.done)
        if idle and self._transient:
            self._held = {name: kept for name, held in self._held.items()
                          if (kept := tuple(each for each in held if not each.transient))}
            self._transient = False

    def _apply(self, answered: int) -> None:
        done = [change for change in self._changes if change.request <= answered]
        self._changes = [change for change in self._changes if change.request > answered]
        for change in done:
            if change.name == ALL:
                self._held.clear()
            elif change.held is None:
                self._held.pop(change.name, None)
            elif change.certain:
                self._held[change.name] = (change.held,)
            else:
                self._held[change.name] = _added(self._held.get(change.name, self._unknown), change.held)
            self._transient = self._transient or change.held is not None and change.held.transient

    def renew(self, name: str, generation: int, paths: int) -> None:
        """What `name` is known to hold was decided again under `generation` and `paths`, and allowed."""
        held = self._held.get(name)
        if held:
            self._held[name] = tuple(replace(each, generation=generation, paths=paths) for each in held)


def _added(held: tuple[Named, ...], new: Named) -> tuple[Named, ...]:
    """`held` and `new`, the same text once (with the older generation): a name prepared again and
    again with the same text, each time perhaps failing, does not grow without end; past
    _MAX_CANDIDATES texts, it holds one it cannot tell, of the oldest generation."""
    if len(held) >= _MAX_CANDIDATES or any(not each.known for each in held):
        return (Named(None, None, min(each.generation for each in (*held, new)),
                      all(each.transient for each in (*held, new)), min(each.paths for each in (*held, new))),)
    key = _key(new)
    for index, each in enumerate(held):
        if _key(each) == key:
            if each.generation <= new.generation:
                return held
            return (*held[:index], new, *held[index + 1:])
    return (*held, new)


def _key(held: Named) -> tuple[str | None, int]:
    statement = held.statement
    return (held.sql, 0) if statement is None else (statement.text, statement.location)
