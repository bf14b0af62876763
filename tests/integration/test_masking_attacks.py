"""Extraction attempts against masking: what an analyst tries, and what reaches the client.

Every attempt here runs as the demo's analyst (strict inference, detectors for
card numbers and emails) through the real gateway, and everything the client
receives (rows decoded by the client, raw protocol messages, COPY data, error
and notice fields) is searched for the raw values read directly from
PostgreSQL, and for recognisable fragments of them: the first 12 digits of a
card (separators ignored), the user part of an email (in any case), a full
SSN, a phone number's digits. `RawValues.leaked` is that search;
`test_the_leak_check_fires_on_the_dbas_raw_results` shows it finding what is
there.

Routes: aliases, expressions and functions, operators, casts, CASE and
friends, subqueries, CTEs, set operations, LATERAL, window functions,
aggregates, `*` and whole-row references, JSON, views and materialized views,
cursors, prepared statements (SQL and protocol level), COPY, errors that
quote values, statistics views and query_to_xml, free text cut apart, strict
inference, and the extended protocol without Describe. Each SELECT route runs
through psycopg (simple protocol, extended, prepare=True, binary cursors,
pipeline mode) and asyncpg (binary). A route that computes with a hidden value
(`computes`: a cast that can fail, an operator, a call not known to be total)
is refused to the analyst, whose strict inference closes the oracle such a
computation is (`1 / (CASE WHEN ssn LIKE '4%' THEN 0 ELSE 1 END)` fails exactly
when the SSN starts with 4), and then runs as the analyst's role without strict
inference (`lax`), where it is masked. Then support, who sees emails and
nothing else raw, and the dba, who sees everything.

Last, the engineer, masked too but allowed to write: hidden values must not
be copied (INSERT ... SELECT, UPDATE ... SET, MERGE, CREATE TABLE AS, SELECT
INTO) into columns from which they would be read back raw.

The tests marked `known_limit` record leaks pgguard does not stop yet; they
are strict xfails, so the day one is fixed the test says so. Content
detectors see each output value as it is, so free text an attacker cuts or
re-encodes before it leaves the database (the user part of an email cut off
before its `@`, a spaced card number split into one row per group, hex or
base64 of a body, digits translated into letters) is beyond them.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import psycopg
import pytest

from conftest import RunningGateway, start_gateway, stop_gateway
from helpers import fetch_all, fetch_value, known_to, scratch_table, without_ddl_approval
from pgguard.demo import data
from pgguard.wire import backend, frontend
from rawclient import RawConnection, config_edit, login_as

SENSITIVE = ("email", "phone", "card_number", "ssn")

known_limit = pytest.mark.xfail(strict=True, reason="known limit of output masking (see the module docstring)")


# --- the leak check ------------------------------------------------------------------------------

_USER_PART = re.compile(r"([a-z]+)\.([a-z]+)([0-9]+)")
# Digits, possibly split by separators people (and regexp_replace, and money's output) put between them.
_DIGIT_CHAIN = re.compile(r"[0-9]+(?:[ .,\-/()+]{1,3}[0-9]+)*")
_SSN = re.compile(r"[0-9]{3}-[0-9]{2}-[0-9]{4}")


@dataclass(frozen=True)
class RawValues:
    """The sensitive values of every customer, as fragments the check looks for."""

    users: frozenset[str]  # email local parts, lower case
    cards: frozenset[str]  # first 12 digits
    ssns: frozenset[str]
    ssn_digits: frozenset[str]
    phones: frozenset[str]  # the 10 national digits
    emails: tuple[str, ...]  # the values themselves, in id order
    cards_raw: tuple[str, ...]
    ssns_raw: tuple[str, ...]
    phones_raw: tuple[str, ...]

    @classmethod
    def read(cls, rows: list[tuple[str, ...]]) -> RawValues:
        emails, phones, cards, ssns = (tuple(row[i] for row in rows) for i in range(4))
        return cls(
            users=frozenset(e.split("@")[0].lower() for e in emails),
            cards=frozenset(c[:12] for c in cards),
            ssns=frozenset(ssns),
            ssn_digits=frozenset(s.replace("-", "") for s in ssns),
            phones=frozenset(re.sub(r"\D", "", p)[-10:] for p in phones),
            emails=emails, cards_raw=cards, ssns_raw=ssns, phones_raw=phones,
        )

    def leaked(self, received: object) -> list[str]:
        """Raw values, or recognisable fragments of them, in `received` (its repr unless a str)."""
        text = received if isinstance(received, str) else repr(received)
        found: list[str] = []
        for match in _USER_PART.finditer(text.lower()):
            first, last, digits = match.groups()
            for start in range(len(first)):
                for end in range(1, len(digits) + 1):
                    candidate = f"{first[start:]}.{last}{digits[:end]}"
                    if candidate in self.users:
                        found.append(f"email:{candidate}")
        for chain in _DIGIT_CHAIN.finditer(text):
            digits = re.sub(r"\D", "", chain.group())
            for start in range(len(digits) - 11):
                if digits[start:start + 12] in self.cards:
                    found.append(f"card:{digits[start:start + 12]}")
            if len(digits) == 9 and digits in self.ssn_digits:
                found.append(f"ssn:{digits}")
            if len(digits) in (10, 11) and digits[-10:] in self.phones:
                found.append(f"phone:{digits}")
        found.extend(f"ssn:{m.group()}" for m in _SSN.finditer(text) if m.group() in self.ssns)
        return found


def error_text(exc: BaseException) -> str:
    """Everything an error tells the client: message and every diagnostic field."""
    parts = [str(exc)]
    diag = getattr(exc, "diag", None)
    if diag is not None:
        parts += [str(getattr(diag, name, None)) for name in
                  ("message_primary", "message_detail", "message_hint", "context", "internal_query")]
    if isinstance(exc, asyncpg.PostgresError):
        parts.append(repr(exc.as_dict()))
    return "\n".join(parts)


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw(postgres) -> RawValues:
    return RawValues.read(fetch_all(postgres.dsn(), f"SELECT {', '.join(SENSITIVE)} FROM customers ORDER BY id"))


@pytest.fixture(scope="module")
def analyst(gateway) -> Iterator[psycopg.Connection[Any]]:
    """One analyst session for the module (autocommit: an error leaves it usable)."""
    with psycopg.connect(gateway.dsn("analyst"), autocommit=True) as conn:
        yield conn


class AsyncSession:
    """An asyncpg connection on a loop of its own, driven from plain tests."""

    def __init__(self, dsn: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection = self.run(asyncpg.connect(dsn))

    def run(self, work: Any) -> Any:
        return self.loop.run_until_complete(work)

    def close(self) -> None:
        self.run(self.conn.close())
        self.loop.close()


@pytest.fixture(scope="module")
def analyst_async(gateway) -> Iterator[AsyncSession]:
    session = AsyncSession(gateway.dsn("analyst"))
    yield session
    session.close()


@pytest.fixture(scope="module")
def lax_gateway(tmp_path_factory, postgres, test_ca, ticket_notes) -> Iterator[RunningGateway]:
    """The demo with the analysts' strict_inference off: the same clearance, for statements that compute with
    hidden values, which strict inference refuses (test_strict_inference_refuses_what_may_fail_on_a_hidden_value).
    Started once ticket_notes exists, so that its catalog knows it."""
    running = start_gateway(tmp_path_factory.mktemp("lax"), postgres, test_ca,
                            lambda text: text.replace("strict_inference = true", "strict_inference = false"))
    yield running
    stop_gateway(running)


@pytest.fixture(scope="module")
def lax(lax_gateway) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(lax_gateway.dsn("analyst"), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def lax_async(lax_gateway) -> Iterator[AsyncSession]:
    session = AsyncSession(lax_gateway.dsn("analyst"))
    yield session
    session.close()


# Statements that compute with hidden values (a cast that can fail, an operator, a call pgguard does not
# know to be total …): strict inference refuses them to the analyst, and the routes below read them as
# the analyst's role without it (`lax`), whose masking they test.
COMPUTING: set[str] = set()


def computes(sql: str) -> str:
    COMPUTING.add(sql)
    return sql


def strict_refusal(exc: BaseException) -> str:
    """The refusal strict inference gives a statement that computes with a hidden value."""
    message = refused_message(exc)
    assert message.startswith("pgguard: statement refused: the statement computes with "), message
    return message


def read_as_analyst(run: Callable[..., Any], sql: str, strict: tuple[Any, ...], lax: tuple[Any, ...]) -> Any:
    """`run(*sessions, sql)` as the analyst; for a statement in COMPUTING, first refused to the analyst, then
    as the analyst's role without strict inference."""
    if sql not in COMPUTING:
        return run(*strict, sql)
    with pytest.raises((psycopg.Error, asyncpg.PostgresError)) as caught:
        run(*strict, sql)
    strict_refusal(caught.value)
    return run(*lax, sql)


def refused_message(exc: BaseException) -> str:
    """The message of a pgguard refusal (42501, "pgguard: ..."); fails for any other error."""
    sqlstate = getattr(exc, "sqlstate", None)
    assert sqlstate == "42501", f"expected a refusal, got {sqlstate}: {exc}"
    message = exc.diag.message_primary if isinstance(exc, psycopg.Error) else exc.message
    assert message.startswith("pgguard: "), message
    return message


C = "customers"


def known_to_the_gateway(conn: psycopg.Connection[Any] | str, sql: str, masked: object,
                         timeout: float = 30.0) -> None:
    """Wait until the gateway's catalog knows a relation created behind its back: `sql` returns `masked`.

    Until then its values get every detector and statements that read hidden columns next to it are refused
    (see test_a_view_created_behind_the_gateways_back_*). The first such statement has the catalog read again,
    which a session sees within a second or so; a new session (`conn` a DSN) waits for it before it starts.
    Never as a prepared statement: its plan is made once, at Parse, and would keep what was known then.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if isinstance(conn, str):
                with psycopg.connect(conn, autocommit=True) as fresh:
                    seen = fresh.execute(sql, prepare=False).fetchone()
            else:
                seen = conn.execute(sql, prepare=False).fetchone()
        except psycopg.errors.InsufficientPrivilege as refused:
            seen = refused
        if seen == masked:
            return
        assert time.monotonic() < deadline, f"the gateway never learnt of the relation: {sql!r} gives {seen!r}"
        time.sleep(0.2)


@pytest.fixture(scope="module", autouse=True)
def ticket_notes(postgres, gateway) -> Iterator[str]:
    """A copy of the tickets whose free text no column rule names, so that only the detectors guard it.

    The demo names tickets.body `scrub`: what is computed from it is NULL and strict roles may not filter on
    it (test_free_text_*_scrub_*). The detectors' own tests read free text that nothing else protects.
    """
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE public.ticket_notes AS SELECT * FROM public.tickets")
        conn.execute(f"GRANT SELECT ON public.ticket_notes TO {data.READER}")
    try:
        known_to_the_gateway(gateway.dsn("analyst"), f"SELECT c.ssn FROM ticket_notes n JOIN {C} c "
                             "ON c.id = n.customer_id ORDER BY n.id LIMIT 1", ("[redacted]",))
        yield "ticket_notes"
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS public.ticket_notes")


# --- every route, every client ---------------------------------------------------------------------

ROUTES = [
    # plain references, aliases, qualified names
    f"SELECT email, phone, card_number, ssn FROM {C} ORDER BY id LIMIT 150",
    f"SELECT email AS e, phone AS p, card_number AS harmless, ssn AS note FROM {C} x ORDER BY id LIMIT 150",
    f"SELECT public.customers.email, c2.ssn FROM public.customers JOIN {C} c2 USING (id) "
    "ORDER BY public.customers.id LIMIT 150",
    # expressions and functions
    computes(f"SELECT lower(email), upper(email), initcap(email), email || '' FROM {C} ORDER BY id LIMIT 150"),
    computes(f"SELECT substr(card_number, 1, 12), substring(ssn from 1 for 11), left(phone, 20), right(email, 40) FROM {C} "
    "ORDER BY id LIMIT 150"),
    computes(f"SELECT overlay(card_number placing 'x' from 16), regexp_replace(email, '@.*', ''), "
    f"translate(ssn, '-', '/'), reverse(phone) FROM {C} ORDER BY id LIMIT 150"),
    computes(f"SELECT concat(email, '|', phone), format('%s %s', ssn, card_number), concat_ws(',', phone, ssn) FROM {C} "
    "ORDER BY id LIMIT 150"),
    computes(f"SELECT md5(email), sha256(ssn::bytea), encode(card_number::bytea, 'hex'), length(email) FROM {C} "
    "ORDER BY id LIMIT 150"),
    computes(f"SELECT split_part(email, '@', 1), replace(phone, '-', ''), btrim(ssn), quote_literal(card_number) FROM {C} "
    "ORDER BY id LIMIT 150"),
    # operators and casts
    computes(f"SELECT email || '@' || phone, ssn < '5', card_number::numeric + 0, phone LIKE '+1%' FROM {C} "
    "ORDER BY id LIMIT 150"),
    computes(f"SELECT card_number::text, ssn::varchar, phone::varchar(40), email::bytea, ssn::char(11) FROM {C} "
    "ORDER BY id LIMIT 150"),
    computes(f"SELECT to_json(email), to_jsonb(ssn), phone::json::text FROM (SELECT email, ssn, '\"' || phone || '\"' AS phone "
    f"FROM {C} ORDER BY id LIMIT 150) s"),
    computes(f"SELECT card_number::bigint, card_number::numeric(20) FROM {C} ORDER BY id LIMIT 150"),
    # CASE, COALESCE, NULLIF, GREATEST, LEAST
    computes(f"SELECT CASE WHEN id > 0 THEN email ELSE 'x' END, coalesce(ssn, 'x'), nullif(phone, 'x'), "
    f"greatest(card_number, '0'), least(email, 'zzz') FROM {C} ORDER BY id LIMIT 150"),
    # subqueries: scalar, IN, EXISTS, ARRAY
    f"SELECT (SELECT email FROM {C} c2 WHERE c2.id = c.id), (SELECT upper(ssn) FROM {C} c3 WHERE c3.id = c.id) "
    f"FROM {C} c ORDER BY id LIMIT 150",
    computes(f"SELECT ARRAY(SELECT ssn FROM {C} c3 WHERE c3.id = c.id) FROM {C} c ORDER BY id LIMIT 150"),
    f"SELECT id, id IN (SELECT id FROM {C} WHERE id < 10), EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id) "
    f"FROM {C} c ORDER BY id LIMIT 150",
    f"SELECT x.e FROM (SELECT email AS e FROM {C} ORDER BY id LIMIT 150) x",
    # CTEs, recursive too
    f"WITH x AS (SELECT email, phone, card_number, ssn FROM {C}) SELECT * FROM x LIMIT 150",
    f"WITH x(a, b) AS (SELECT email, ssn FROM {C}), y AS (SELECT a AS z, b FROM x) SELECT z, b, lower(z) FROM y "
    "LIMIT 150",
    computes(f"WITH RECURSIVE r(n, e) AS (SELECT 1, email FROM {C} WHERE id = 1 UNION ALL SELECT n + 1, e || '' FROM r "
    "WHERE n < 5) SELECT * FROM r"),
    f"WITH RECURSIVE r(n, s) AS (SELECT id, ssn FROM {C} WHERE id < 150 UNION ALL SELECT n + 1000, s FROM r "
    "WHERE n < 3) SELECT * FROM r",
    # set operations
    f"SELECT email FROM {C} UNION ALL SELECT status FROM orders LIMIT 150",
    f"(SELECT ssn, phone FROM {C} ORDER BY id LIMIT 50) UNION ALL (SELECT card_number, email FROM {C} "
    "ORDER BY id LIMIT 50)",
    # LATERAL
    computes(f"SELECT x.* FROM {C} c, LATERAL (SELECT c.email, c.ssn || '' AS s, c.card_number) x ORDER BY c.id LIMIT 150"),
    f"SELECT c.id, l.p FROM {C} c CROSS JOIN LATERAL (SELECT c.phone AS p) l ORDER BY c.id LIMIT 150",
    computes(f"SELECT v || '', upper(w) FROM {C} CROSS JOIN LATERAL (SELECT ssn, email AS w) AS l(v) ORDER BY id LIMIT 150"),
    f"SELECT upper(l.v) FROM {C} c JOIN LATERAL (SELECT c.ssn AS v) l ON true ORDER BY c.id LIMIT 150",
    # column aliases, which rename by position: `note` here is the SSN
    computes(f"SELECT note || '', upper(t.note), x FROM {C} AS t(id, full_name, x, p, c, note) ORDER BY id LIMIT 150"),
    computes(f"SELECT j.x || '', upper(j.y) FROM ({C} c JOIN orders o ON o.customer_id = c.id) AS j(a, b, x, p, q, y) "
    "ORDER BY j.a LIMIT 150"),
    computes(f"WITH w AS (SELECT id, ssn FROM {C}) SELECT s || '', lower(s) FROM w AS y(i, s) ORDER BY i LIMIT 150"),
    # a recursive CTE that moves the SSN one column further at each step
    computes("WITH RECURSIVE r(a, b, c, d, e, n) AS (SELECT '', '', '', '', ssn, 0 FROM customers UNION ALL "
    "SELECT b, c, d, e, a, n + 1 FROM r WHERE n < 4) SELECT a || '', upper(a) FROM r WHERE n = 4 LIMIT 150"),
    # a bare name is a column of an outer query before it is an inner relation's row
    computes(f"SELECT (SELECT phone FROM (SELECT 1 AS x) AS phone) || '' FROM {C} ORDER BY id LIMIT 150"),
    computes(f"SELECT (SELECT upper(ssn) FROM jsonb_each('{{\"a\": 1}}') AS ssn) FROM {C} ORDER BY id LIMIT 150"),
    # `*` over a USING or NATURAL join: the merged columns first (here the seventh column is the SSN)
    computes(f"SELECT s.x || '', upper(s.f) FROM (SELECT * FROM {C} c JOIN (SELECT DISTINCT city FROM {C}) o USING (city)) "
    "AS s(a, b, c, d, e, f, x) ORDER BY s.b LIMIT 150"),
    computes(f"SELECT j.x || '', upper(j.f) FROM ({C} NATURAL JOIN (SELECT DISTINCT city FROM {C}) o) AS j(a, b, c, d, e, f, x) "
    "ORDER BY j.b LIMIT 150"),
    # schema.table.column names a table, never an inner subquery called like it
    computes(f"SELECT (SELECT public.customers.ssn || '' FROM (SELECT 'x'::text AS ssn) AS customers), "
    f"(SELECT upper(public.customers.phone) FROM (SELECT 'x'::text AS phone) AS customers) FROM public.{C} "
    "ORDER BY id LIMIT 150"),
    # in WITH RECURSIVE an item sees later ones: `orders` here is the second item, not the table
    computes("WITH RECURSIVE b AS (SELECT o.status || '' AS w, upper(o.p) AS u FROM orders o), "
    f"orders AS (SELECT ssn AS status, phone AS p FROM {C}) SELECT w, u FROM b LIMIT 150"),
    # unnamed columns named as PostgreSQL names them: `?column?` is the SSN, the CASE is `case`; VALUES' column2
    computes(f"SELECT q.\"?column?\" || '', upper(q.coalesce) FROM (SELECT CASE WHEN true THEN 'x' END, ssn || '', "
    f"COALESCE(phone, '') FROM {C} ORDER BY id) q LIMIT 150"),
    computes(f"SELECT v.column2 || '' FROM (SELECT 'x' AS column2) z, {C} c, LATERAL (VALUES (z.column2, c.ssn)) AS v "
    "ORDER BY c.id LIMIT 150"),
    # a sampled table is the table
    computes(f"SELECT ssn || '', upper(t.phone) FROM {C} AS t TABLESAMPLE SYSTEM (100) ORDER BY id LIMIT 150"),
    # window functions
    computes(f"SELECT lag(email) OVER w, lead(ssn) OVER w, first_value(card_number) OVER w, nth_value(phone, 2) OVER w, "
    f"last_value(email) OVER w FROM {C} WINDOW w AS (ORDER BY id) ORDER BY id LIMIT 150"),
    # aggregates
    computes(f"SELECT string_agg(email, ','), array_agg(phone), json_agg(ssn), jsonb_object_agg(id, card_number), "
    f"min(email), max(ssn) FROM {C}"),
    computes(f"SELECT array_to_string(array_agg(ssn), ','), string_agg(card_number, ' '), count(email) FROM {C}"),
    # *, t.*, whole-row references
    f"SELECT * FROM {C} ORDER BY id LIMIT 150",
    f"SELECT c.*, o.* FROM {C} c JOIN orders o ON o.customer_id = c.id ORDER BY o.id LIMIT 150",
    f"TABLE {C} LIMIT 150",
    f"SELECT c FROM {C} c ORDER BY id LIMIT 150",
    computes(f"SELECT row_to_json(c), to_json(c), to_jsonb(c), (c.*)::text FROM {C} c ORDER BY id LIMIT 150"),
    computes(f"SELECT json_agg(c), jsonb_agg(c), array_agg(c) FROM (SELECT * FROM {C} ORDER BY id LIMIT 150) c"),
    f"SELECT ROW(email, ssn), ROW(c.*), (c).email, (c).ssn FROM {C} c ORDER BY id LIMIT 150",
    # t.* of an outer query's relation
    computes(f"SELECT (SELECT ROW(c.*)::text FROM orders LIMIT 1), (SELECT to_jsonb(c.*) ->> 'ssn') FROM {C} c "
    "ORDER BY id LIMIT 150"),
    computes(f"SELECT l.r FROM {C} c, LATERAL (SELECT row_to_json(c.*)::text AS r) l ORDER BY c.id LIMIT 150"),
    computes(f"SELECT to_jsonb(c) -> 'ssn', to_jsonb(c) ->> 'phone', row_to_json(c)::text, jsonb_build_object('e', email) "
    f"FROM {C} c ORDER BY id LIMIT 150"),
    computes(f"SELECT jsonb_path_query_first(to_jsonb(c), '$.email'), jsonb_path_query_array(to_jsonb(c), '$.*') "
    f"FROM {C} c ORDER BY id LIMIT 150"),
    computes(f"SELECT xmlforest(email, ssn), xmlelement(name x, phone) FROM {C} ORDER BY id LIMIT 150"),
    # free text no column rule names (ticket_notes: the tickets, body not `scrub`): card numbers (plain,
    # spaced, dashed) and emails inside it, whole or cut, found by the detectors
    "SELECT id, subject, body FROM ticket_notes ORDER BY id LIMIT 400",
    "SELECT subject || ' ' || body, upper(body), body::varchar FROM ticket_notes ORDER BY id LIMIT 400",
    "SELECT array_agg(body), string_agg(body, ' | ') FROM (SELECT body FROM ticket_notes ORDER BY id LIMIT 400) t",
    "SELECT t, ROW(t.body), to_jsonb(t), to_json(t.body) FROM ticket_notes t ORDER BY id LIMIT 400",
    "SELECT body::bytea, convert_to(body, 'UTF8') FROM ticket_notes ORDER BY id LIMIT 400",
    "SELECT string_to_array(body, ' '), regexp_split_to_array(body, '\\n') FROM ticket_notes ORDER BY id LIMIT 400",
    "SELECT regexp_split_to_table(body, '\\s+') FROM (SELECT body FROM ticket_notes ORDER BY id LIMIT 400) t",
    "SELECT split_part(body, ' ', n) FROM (SELECT body FROM ticket_notes ORDER BY id LIMIT 100) t, "
    "generate_series(1, 40) n",
    "SELECT regexp_split_to_table(body, '[.;:]\\s') FROM (SELECT body FROM ticket_notes ORDER BY id LIMIT 400) t",
    "SELECT substr(body, 1, 300), substr(body, 40) FROM ticket_notes ORDER BY id LIMIT 400",
    "SELECT regexp_matches(body, '[0-9][0-9 -]{11,}[0-9]', 'g') FROM ticket_notes ORDER BY id LIMIT 400",
    "SELECT substring(body from '[0-9]{16}')::bigint, substring(body from '[0-9]{16}')::numeric FROM ticket_notes "
    "ORDER BY id LIMIT 400",
    "SELECT jsonb_build_object('b', body), json_build_array(body) FROM ticket_notes ORDER BY id LIMIT 400",
    # a card read out of free text as a number that is no run of digits on the wire (4.111111111111111e+15,
    # $4,111,111,111,111,111.00, a double, an integer in a binary array, record or range), or as bytea's hex
    "SELECT substring(body from '[0-9]{16}')::float8, substring(body from '[0-9]{16}')::money, "
    "point(substring(body from '[0-9]{16}')::float8, 0) FROM ticket_notes WHERE body ~ '[0-9]{16}' ORDER BY id",
    "SELECT ARRAY[substring(body from '[0-9]{16}')::bigint], ROW(substring(body from '[0-9]{16}')::numeric, 1), "
    "int8range(substring(body from '[0-9]{16}')::bigint, NULL) FROM ticket_notes WHERE body ~ '[0-9]{16}' ORDER BY id",
    "SELECT ARRAY[body::bytea], ROW(body::bytea) FROM ticket_notes ORDER BY id LIMIT 400",
]


def run_simple(analyst: psycopg.Connection[Any], session: AsyncSession, sql: str) -> Any:
    return psycopg.ClientCursor(analyst).execute(sql).fetchall()


def run_extended(analyst: psycopg.Connection[Any], session: AsyncSession, sql: str) -> Any:
    return analyst.execute(sql).fetchall()


def run_prepared(analyst: psycopg.Connection[Any], session: AsyncSession, sql: str) -> Any:
    return [analyst.execute(sql, prepare=True).fetchall() for _ in range(3)]


def run_binary(analyst: psycopg.Connection[Any], session: AsyncSession, sql: str) -> Any:
    return analyst.cursor(binary=True).execute(sql).fetchall()


def run_pipeline(analyst: psycopg.Connection[Any], session: AsyncSession, sql: str) -> Any:
    with analyst.pipeline():
        cursors = [analyst.execute(sql), analyst.cursor(binary=True).execute(sql), analyst.execute(sql)]
    return [cursor.fetchall() for cursor in cursors]


def run_asyncpg(analyst: psycopg.Connection[Any], session: AsyncSession, sql: str) -> Any:
    async def work() -> Any:
        statement = await session.conn.prepare(sql)
        # A prepared statement executed again: Bind and Execute with no Describe.
        return [await session.conn.fetch(sql), await statement.fetch(), await statement.fetch()]
    return session.run(work())


CLIENTS = {"simple": run_simple, "extended": run_extended, "prepared": run_prepared, "binary": run_binary,
           "pipeline": run_pipeline, "asyncpg": run_asyncpg}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("sql", ROUTES)
def test_no_route_leaks_a_value(analyst, analyst_async, lax, lax_async, raw, sql, client):
    rows = read_as_analyst(CLIENTS[client], sql, (analyst, analyst_async), (lax, lax_async))
    assert rows, "the attempt returned nothing, so it shows nothing"
    assert not raw.leaked(rows)


def test_masked_values_keep_their_shape_and_derived_ones_are_null(analyst, lax, raw):
    sql = f"SELECT email, phone, card_number, ssn, md5(email), lower(ssn), ssn::bytea, card_number::bigint " \
          f"FROM {C} WHERE id = 1"
    with pytest.raises(psycopg.Error) as caught:
        analyst.execute(sql)
    assert "public.customers.card_number (a cast to int8)" in strict_refusal(caught.value)
    row = lax.execute(sql).fetchone()
    email, phone, card, ssn, *derived = row
    assert email == "***@" + raw.emails[0].split("@")[1]
    assert phone.endswith(raw.phones_raw[0][-4:]) and "*" in phone
    assert card == "*" * 12 + raw.cards_raw[0][-4:]
    assert ssn == "[redacted]"
    assert derived == [None, None, None, None]  # md5 of a value is the value, derived: NULL


# Casts that keep part of a value: a length limit in characters, `name`'s 63 bytes, `"char"`'s one.
CUTS = [f"card_number::varchar({n})" for n in range(5, 16)] + [f"phone::char({n})" for n in range(5, 15)] + \
    ["CAST(ssn AS character)", "email::name", 'ssn::"char"']
CUT_SQL = f"SELECT {', '.join(CUTS)}, card_number::varchar FROM {C} ORDER BY id LIMIT 150"


@pytest.mark.parametrize("client", ["simple", "extended", "asyncpg"])
@pytest.mark.parametrize(("sql", "named"), [
    ("SELECT body::varchar(1) FROM tickets", "public.tickets.body (a cast to varchar(1))"),
    ("SELECT CAST(body AS character varying(2)), body FROM tickets", "public.tickets.body (a cast to varchar(2))"),
    ("SELECT length(body::char(3)) FROM tickets", "public.tickets.body (a cast to bpchar(3))"),
    ("SELECT body::name FROM tickets", "public.tickets.body (a cast to name)"),
    ("SELECT body::\"char\" FROM tickets", 'public.tickets.body (a cast to "char")'),
    ("SELECT string_agg(x, '') FROM (SELECT body::text::varchar(4) AS x FROM tickets) s",
     "public.tickets.body (a cast to varchar(4))"),
    (f"SELECT card_number::varchar(12) FROM {C}", "public.customers.card_number (a cast to varchar(12))"),
    (CUT_SQL, "public.customers.card_number (a cast to varchar(5))|public.customers.phone (a cast to bpchar(5))|"
     "public.customers.ssn (a cast to bpchar(1))|public.customers.email (a cast to name)"),
])
def test_a_cast_that_cuts_a_hidden_value_is_refused_to_strict_roles(analyst, analyst_async, sql, named, client):
    """Fixed: a cut was allowed (its value NULL), and the size of what `body::varchar(n)` keeps, measured for
    n = 1, 2 … (a sort's spill of many copies, pg_stat_database.temp_bytes), grows by more than a byte where
    the n-th character is not ASCII: where a ticket's accented letters, or other non-ASCII ones, are."""
    with pytest.raises((psycopg.Error, asyncpg.PostgresError)) as caught:
        CLIENTS[client](analyst, analyst_async, sql)
    message = strict_refusal(caught.value)
    assert all(part in message for part in named.split("|")), message


@pytest.mark.parametrize("client", ["simple", "extended", "asyncpg"])
def test_strict_roles_still_cast_a_hidden_value_to_text_of_any_length(analyst, analyst_async, raw, client):
    sql = f"SELECT card_number::varchar, CAST(ssn AS text), email::bpchar, phone::character varying " \
          f"FROM {C} ORDER BY id LIMIT 20"
    result = CLIENTS[client](analyst, analyst_async, sql)
    rows = [tuple(row) for row in (result[0] if client == "asyncpg" else result)]  # asyncpg: three fetches
    assert len(rows) == 20 and not raw.leaked(result)
    assert [row[0] for row in rows] == ["*" * 12 + card[-4:] for card in raw.cards_raw[:20]]
    assert {row[1] for row in rows} == {"[redacted]"}
    assert [row[2] for row in rows] == ["***@" + email.split("@")[1] for email in raw.emails[:20]]


@pytest.mark.parametrize("client", ["simple", "binary", "asyncpg"])
def test_a_cast_that_cuts_a_value_does_not_move_what_its_mask_shows(lax, lax_async, raw, client):
    """For roles that are not strict: a card masked but for its last four digits, cut to 8, 12, … characters
    first, would show every group of four in turn: such a cast is a derived value, NULL."""
    result = CLIENTS[client](lax, lax_async, CUT_SQL)
    rows = [tuple(row) for row in (result[0] if client == "asyncpg" else result)]  # asyncpg: three fetches
    assert rows and all(row[:-1] == (None,) * len(CUTS) for row in rows)
    assert [row[-1] for row in rows] == ["*" * 12 + card[-4:] for card in raw.cards_raw[:len(rows)]]


@pytest.mark.parametrize("role", ["support", "engineer"])
def test_roles_that_are_not_strict_still_cut_hidden_values_to_null(gateway, postgres, raw, role):
    """Support and engineering are not strict: a cut runs, NULL where the column is hidden from them, and the
    ticket bodies they are cleared for come back cut, as PostgreSQL cuts them."""
    bodies = [body[:7] for (body,) in fetch_all(postgres.dsn(), "SELECT body FROM tickets ORDER BY id LIMIT 20")]
    with psycopg.connect(gateway.dsn(role)) as conn:
        rows = conn.execute(f"SELECT c.card_number::varchar(8), c.ssn::name, t.body::varchar(7) FROM {C} c "
                            "JOIN tickets t ON t.id = c.id ORDER BY t.id LIMIT 20").fetchall()
    assert len(rows) == 20 and not raw.leaked(rows)
    assert {row[:2] for row in rows} == {(None, None)}
    assert [row[2] for row in rows] == bodies


def test_free_text_card_numbers_are_masked_in_every_format_people_type(analyst, postgres):
    """Tickets quote cards plain, spaced and dashed: each gets masked but its last four digits."""
    direct = dict(fetch_all(postgres.dsn(), "SELECT id, body FROM ticket_notes ORDER BY id"))
    masked = dict(analyst.execute("SELECT id, body FROM ticket_notes ORDER BY id").fetchall())
    seen_styles = set()
    for ticket, body in direct.items():
        for style, pattern in (("dashed", r"\d{4}-\d{4}-\d{4}-\d{4}"), ("spaced", r"\d{4} \d{4} \d{4} \d{4}"),
                               ("plain", r"(?<!\d)\d{16}(?!\d)")):
            for card in re.findall(pattern, body):
                seen_styles.add(style)
                assert card not in masked[ticket]
                assert re.sub(r"\d", "*", card[:-4]) + card[-4:] in masked[ticket]
    assert seen_styles == {"dashed", "spaced", "plain"}


@pytest.mark.parametrize("client", ["simple", "binary", "asyncpg"])
def test_free_text_card_groups_split_by_unicode_spaces_are_masked(analyst, analyst_async, raw, client):
    """Fixed: a card whose groups a no-break, thin or zero-width space or a dash split (as text copied from
    documents has them) passed whole: the detector knew only ASCII spaces and dashes."""
    separators = ["\u00a0", "\u202f", "\u200b", "\u2013"]
    sql = "SELECT " + ", ".join(f"replace(body, ' ', '{sep}')" for sep in separators) + \
        " FROM ticket_notes WHERE body ~ '[0-9]{4} [0-9]{4} [0-9]{4} [0-9]{4}' ORDER BY id"
    rows = CLIENTS[client](analyst, analyst_async, sql)
    text = re.sub("[\u00a0\u2000-\u2015\u202f\u2060\ufeff]", " ", " ".join(strings(rows)))
    assert rows and "****" in text and not raw.leaked(text)


def strings(found: object) -> Iterator[str]:
    """Every str in nested rows, lists and records."""
    if isinstance(found, str):
        yield found
    elif not isinstance(found, (bytes, int, float)) and found is not None:
        for item in found:  # type: ignore[attr-defined]
            yield from strings(item)


# --- what cannot be masked is refused ----------------------------------------------------------------

REFUSED = [
    # strict inference: WHERE, ORDER BY, GROUP BY, HAVING, JOIN ON, DISTINCT ON over a hidden column
    f"SELECT id FROM {C} WHERE ssn LIKE '4%'",
    f"SELECT id FROM {C} WHERE email = 'ben.obrien1@example.net'",
    f"SELECT 1/0 FROM {C} WHERE email = 'ben.obrien1@example.net'",
    f"SELECT id FROM {C} ORDER BY card_number LIMIT 5",
    f"SELECT count(*) FROM {C} GROUP BY phone",
    f"SELECT count(*) FROM {C} GROUP BY city HAVING max(ssn) > '5'",
    f"SELECT o.id FROM orders o JOIN {C} c ON c.id = o.customer_id AND c.ssn > '5'",
    f"SELECT DISTINCT ON (ssn) id FROM {C}",
    f"SELECT id, rank() OVER (ORDER BY ssn) FROM {C}",
    f"SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY ssn) FROM {C}",
    f"SELECT count(*) FILTER (WHERE card_number LIKE '4%') FROM {C}",
    f"SELECT id FROM orders WHERE customer_id IN (SELECT id FROM {C} WHERE email LIKE 'a%')",
    f"SELECT id FROM orders o WHERE EXISTS (SELECT 1 FROM {C} c WHERE c.id = o.customer_id AND c.phone LIKE '+1-2%')",
    f"SELECT id FROM {C} c WHERE c = c",
    # inference through output positions, joins, limits, row counts and comparisons
    f"SELECT id, ssn FROM {C} ORDER BY 2 LIMIT 5",
    f"SELECT id, ssn AS s FROM {C} ORDER BY s LIMIT 5",
    f"SELECT ssn, count(*) FROM {C} GROUP BY 1",
    f"SELECT DISTINCT ON (2) id, ssn FROM {C}",
    f"SELECT count(*) FROM {C} GROUP BY ROLLUP (ssn)",
    f"SELECT c.id FROM (SELECT 1 AS id, '444-07-2101' AS ssn) guess NATURAL JOIN {C} c",
    f"SELECT ssn || '' FROM (SELECT 'a'::text AS ssn) a RIGHT JOIN {C} USING (ssn)",
    f"SELECT ssn || '' FROM (SELECT 'a'::text AS ssn) a FULL JOIN {C} USING (ssn)",
    f"SELECT id FROM {C} LIMIT (SELECT count(*) FROM {C} WHERE ssn > '5')",
    f"SELECT id FROM {C} OFFSET (SELECT ascii(ssn) FROM {C} LIMIT 1) LIMIT 1",
    f"SELECT generate_series(1, ascii(ssn)) FROM {C} WHERE id = 1",
    f"SELECT jsonb_path_query(to_jsonb(c), '$.email') FROM {C} c",
    f"SELECT jsonb_path_query(to_jsonb(c), '$.ssn ? (@ starts with \"4\")') FROM {C} c",
    f"SELECT count(CASE WHEN ssn LIKE '4%' THEN 1 END) FROM {C}",
    f"SELECT count(NULLIF(email, 'ben.obrien1@example.net')) FROM {C}",
    f"SELECT ssn FROM {C} INTERSECT SELECT '444-07-2101'",
    f"SELECT email FROM {C} UNION SELECT 'ben.obrien1@example.net'",
    f"SELECT ssn FROM {C} EXCEPT SELECT '444-07-2101'",
    f"SELECT DISTINCT ssn FROM {C}",
    # lineage pgguard cannot follow over a hidden column
    f"SELECT j.value FROM {C} c, jsonb_each(to_jsonb(c)) j",
    f"SELECT * FROM {C} c, jsonb_to_record(to_jsonb(c)) AS r(email text)",
    f"SELECT x FROM {C} c, unnest(ARRAY[c.email, c.ssn]) x",
    # a setting keeps a value where SHOW, current_setting and application_name's ParameterStatus give it back raw
    f"SELECT set_config('application_name', ssn, false) FROM {C} WHERE id = 1",
    f"SELECT length(set_config('pgguard.kept', phone || card_number, true)) FROM {C}",
    # statistics that sample values, query strings run inside the server
    "SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'customers'",
    "SELECT * FROM pg_stats_ext",
    "SELECT query_to_xml('SELECT email FROM customers', true, true, '')",
    "SELECT table_to_xml('customers', true, true, '')",
    "SELECT database_to_xml(true, true, '')",
    # COPY of hidden columns that pgguard could not read back exactly (masked otherwise: test_copy_of_hidden_*)
    f"COPY {C} TO STDOUT (NULL '444-07-2101')",
    f"COPY {C} TO STDOUT WITH (FORMAT csv, ENCODING 'SJIS')",
    f"COPY {C} TO '/tmp/pgguard-customers'",
]


@pytest.mark.parametrize(("sql", "client"), [
    (sql, client) for sql in REFUSED for client in ("simple", "extended", "asyncpg")
    # asyncpg runs COPY only through its copy_* methods: test_copy_through_asyncpg
    if not (client == "asyncpg" and sql.startswith("COPY"))
])
def test_what_cannot_be_masked_is_refused(analyst, analyst_async, sql, client):
    if client == "asyncpg":
        with pytest.raises(asyncpg.PostgresError) as caught:
            analyst_async.run(analyst_async.conn.fetch(sql))
    else:
        cursor = psycopg.ClientCursor(analyst) if client == "simple" else analyst.cursor()
        with pytest.raises(psycopg.Error) as caught:
            if sql.startswith("COPY"):
                with cursor.copy(sql) as copy:
                    list(copy)
            else:
                cursor.execute(sql)
    refused_message(caught.value)
    assert analyst.execute("SELECT 1").fetchone() == (1,)


def test_a_refusal_names_the_rule_and_keeps_postgresql_semantics(analyst):
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        with analyst.transaction():
            analyst.execute(f"SELECT id FROM {C} ORDER BY 2, ssn")
    assert "public.customers.ssn" in caught.value.diag.message_primary
    assert "(rule masking)" in caught.value.diag.message_primary


@pytest.mark.parametrize(("harmless", "attack"), [
    (f"SELECT id, ssn FROM {C} ORDER BY 1", f"SELECT id, ssn FROM {C} ORDER BY 2"),
    (f"SELECT DISTINCT ON (1) id, email FROM {C} ORDER BY 1", f"SELECT DISTINCT ON (2) id, email FROM {C} ORDER BY 2"),
    ("SELECT set_config('application_name', 'x', false)", "SELECT set_config('role', 'postgres', false)"),
])
def test_a_harmless_text_of_the_same_shape_does_not_clear_the_attack(analyst, raw, harmless, attack):
    """Texts that differ only in constants share one analysis (pgguard/policy/shapes.py), unless the
    analysis reads a constant: here the harmless text runs first, many times, and the attack is still refused."""
    for _ in range(3):
        assert not raw.leaked(repr(psycopg.ClientCursor(analyst).execute(harmless).fetchall()))
    with pytest.raises(psycopg.Error) as caught:
        psycopg.ClientCursor(analyst).execute(attack)
    refused_message(caught.value)


# --- errors and notices that quote values ----------------------------------------------------------

ERRORS = [
    computes(f"SELECT email::int FROM {C} ORDER BY id"),
    computes(f"SELECT ssn::date FROM {C} ORDER BY id"),
    computes(f"SELECT ssn::interval FROM {C} ORDER BY id"),
    computes(f"SELECT ssn::uuid FROM {C} ORDER BY id"),
    computes(f"SELECT ssn::bool FROM {C} ORDER BY id"),
    computes(f"SELECT ssn::json FROM {C} ORDER BY id"),
    computes(f"SELECT phone::numeric FROM {C} ORDER BY id"),
    computes(f"SELECT phone::money FROM {C} ORDER BY id"),
    computes(f"SELECT card_number::int FROM {C} ORDER BY id"),
    computes(f"SELECT ('{{' || ssn || '}}')::int[] FROM {C} ORDER BY id"),
    computes(f"SELECT email::inet FROM {C} ORDER BY id"),
    computes(f"SELECT to_date(ssn, 'YYYY-MM-DD') FROM {C} ORDER BY id"),
    computes(f"SELECT (SELECT email FROM {C} ORDER BY id LIMIT 1)::int"),
    computes(f"SELECT x::numeric FROM (SELECT phone AS x FROM {C} ORDER BY id) s"),
    "SELECT body::int FROM ticket_notes WHERE body LIKE '%@%' ORDER BY id",
    "SELECT substring(body from '[0-9][0-9 -]{17}[0-9]')::int FROM ticket_notes WHERE body ~ '[0-9]{4}[ -][0-9]{4}' "
    "ORDER BY id",
]


@pytest.mark.parametrize("client", ["simple", "extended", "binary", "asyncpg"])
@pytest.mark.parametrize("sql", ERRORS)
def test_errors_quoting_values_are_scrubbed(analyst, analyst_async, lax, lax_async, raw, sql, client):
    with pytest.raises((psycopg.Error, asyncpg.PostgresError)) as caught:
        read_as_analyst(CLIENTS[client], sql, (analyst, analyst_async), (lax, lax_async))
    # The database ran the statement and failed on a value (class 22: data exception).
    assert caught.value.sqlstate.startswith("22"), error_text(caught.value)
    assert not raw.leaked(error_text(caught.value))


def test_an_error_from_a_hidden_column_keeps_its_class_and_loses_the_value(lax, raw):
    """(Strict inference refuses both to the analyst before they run.)"""
    with pytest.raises(psycopg.errors.DatetimeFieldOverflow) as caught:
        lax.execute(f"SELECT ssn::date FROM {C} WHERE id = 1").fetchall()
    assert caught.value.diag.message_primary == 'date/time field value out of range: "[redacted]"'
    with pytest.raises(psycopg.errors.InvalidTextRepresentation) as caught:
        lax.execute(f"SELECT ssn::json FROM {C} WHERE id = 1").fetchall()
    # PostgreSQL's detail and context quote the value ("Token "-07" is invalid", "JSON data, line 1: 444-07..."):
    # dropped for statements that read hidden columns.
    assert caught.value.diag.message_detail is None and caught.value.diag.context is None
    assert raw.ssns_raw[0][:6] not in error_text(caught.value)


@pytest.mark.parametrize("role", ["lax analyst", "engineer"])
@pytest.mark.parametrize("sql", [
    f"SELECT make_time(substr(ssn, 1, 3)::int, substr(ssn, 5, 2)::int, substr(ssn, 8, 4)::int) FROM {C} WHERE id = 1",
    f"SELECT chr(replace(ssn, '-', '')::int) FROM {C} WHERE id = 1",
    f"SELECT make_timestamp(2000, 1, 1, 0, substr(ssn, 1, 3)::int, replace(substr(ssn, 5), '-', '')::float8) "
    f"FROM {C} WHERE id = 1",
])
def test_an_error_that_prints_a_hidden_value_unquoted_loses_its_digits(gateway, lax_gateway, raw, role, sql):
    """Fixed: make_time and chr print the numbers they fail on without quotes (`time field value out of range:
    444:07:2101`, `requested character too large for encoding: 444072101`), which passed as they came."""
    dsn = lax_gateway.dsn("analyst") if role == "lax analyst" else gateway.dsn(role)
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(sql).fetchall()
    text = error_text(caught.value)
    assert caught.value.sqlstate[:2] in ("22", "54") and caught.value.diag.message_primary.endswith(": [redacted]")
    ssn = raw.ssns_raw[0]
    assert not any(part in text for part in (ssn[:3], ssn[4:6] + ":", ssn[-4:]))


@pytest.mark.parametrize("role", ["analyst", "engineer"])
@pytest.mark.parametrize("sql", [
    f"SELECT email::regoper FROM {C} WHERE id = 1",
    f"SELECT to_regoper(email) FROM {C} WHERE id = 1",
    f"SELECT (replace(email, '@', '.') || '.x.y')::regclass FROM {C} WHERE id = 1",
])
def test_an_error_that_prints_a_hidden_value_unquoted_loses_its_letters(gateway, raw, role, sql):
    """Fixed: regclass and regoper print the name they fail on without quotes (`cross-database references are not
    implemented: ben.obrien1@example.net`, `improper relation name (too many dotted names): ben.obrien1.example…`),
    and only its digits were masked: the email's user part, which its mask hides, came through."""
    with psycopg.connect(gateway.dsn(role), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(sql).fetchall()
    local_part = raw.emails[0].split("@")[0].rstrip("0123456789")  # its digits are masked too
    assert local_part not in error_text(caught.value), error_text(caught.value)


@pytest.mark.parametrize("sql", [f"SELECT ssn::json FROM {C} WHERE id = 2",
                                 f"SELECT x::date FROM (SELECT phone AS x FROM {C}) s",
                                 "EXECUTE e1", "FETCH ALL FROM f1"])
def test_an_error_on_the_wire_is_scrubbed_in_every_field(lax_gateway, raw, sql):
    """Every field of the ErrorResponse as sent, for plain statements and for rows from prepared names.

    (Notices go through the same scrub; analysts may call no function that raises one with a value.)
    """
    with login_as(lax_gateway, "analyst") as conn:
        conn.query(f"PREPARE e1 AS SELECT ssn::date FROM {C}")
        conn.query(f"BEGIN; DECLARE f1 CURSOR FOR SELECT ssn::uuid FROM {C}")
        seen, _ = conn.query(sql)
    errors = [m for m in seen if isinstance(m, backend.ErrorResponse)]
    assert len(errors) == 1 and errors[0].code.startswith("22")
    assert '"[redacted]"' in errors[0].message or "json" in errors[0].message
    assert not set(errors[0].fields) & {"D", "W"}
    assert not raw.leaked(repr(seen))


# --- views and materialized views --------------------------------------------------------------------


@dataclass(frozen=True)
class Views:
    renamed: str  # a view renaming every column
    over_view: str  # a view over that view, with an expression
    materialized: str  # a materialized view of the sensitive columns
    joined: str  # a view joining customers and tickets


@pytest.fixture(scope="module")
def views(postgres, gateway, lax_gateway) -> Iterator[Views]:
    """Views over customers made directly as superuser, granted to the analysts' login, dropped afterwards."""
    suffix = uuid.uuid4().hex[:8]
    made = Views(f"v_contacts_{suffix}", f"v_contacts_lower_{suffix}", f"mv_customers_{suffix}",
                 f"v_customer_tickets_{suffix}")
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE VIEW public.{made.renamed} (ref, contact, tax_id, card, tel) AS "
                     f"SELECT id, email, ssn, card_number, phone FROM public.customers")
        conn.execute(f"CREATE VIEW public.{made.over_view} AS SELECT ref, lower(contact) AS contact_lower, tax_id, "
                     f"card AS c FROM public.{made.renamed}")
        conn.execute(f"CREATE MATERIALIZED VIEW public.{made.materialized} AS "
                     f"SELECT id, email, ssn, phone, card_number FROM public.customers")
        conn.execute(f"CREATE VIEW public.{made.joined} AS SELECT c.id, c.email AS who, t.body "
                     f"FROM public.customers c JOIN public.tickets t ON t.customer_id = c.id")
        for name in (made.renamed, made.over_view, made.materialized, made.joined):
            conn.execute(f"GRANT SELECT ON public.{name} TO {data.READER}")
    try:
        analyst = gateway.dsn("analyst")
        known_to_the_gateway(analyst, f"SELECT tax_id FROM {made.over_view} ORDER BY ref LIMIT 1", ("[redacted]",))
        known_to_the_gateway(analyst, f"SELECT ssn FROM {made.materialized} ORDER BY id LIMIT 1", ("[redacted]",))
        known_to_the_gateway(analyst, f"SELECT lower(who) FROM {made.joined} LIMIT 1", (None,))
        known_to(lax_gateway.dsn("analyst"), made.renamed, made.over_view, made.materialized, made.joined)
        yield made
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP VIEW IF EXISTS public.{made.over_view}, public.{made.renamed}, public.{made.joined}")
            conn.execute(f"DROP MATERIALIZED VIEW IF EXISTS public.{made.materialized}")


VIEW_ROUTES = [
    "SELECT * FROM {renamed} ORDER BY ref LIMIT 150",
    "SELECT contact, tax_id, card, tel FROM {renamed} ORDER BY ref LIMIT 150",
    "SELECT v FROM {renamed} v ORDER BY ref LIMIT 150",
    computes("SELECT row_to_json(v), lower(contact) FROM {renamed} v ORDER BY ref LIMIT 150"),
    "SELECT * FROM {over_view} ORDER BY ref LIMIT 150",
    computes("SELECT contact_lower, c, tax_id || '' FROM {over_view} ORDER BY ref LIMIT 150"),
    "SELECT * FROM {materialized} ORDER BY id LIMIT 150",
    computes("SELECT to_jsonb(m), string_agg(email, ',') OVER () FROM {materialized} m ORDER BY id LIMIT 150"),
    "WITH x AS (SELECT * FROM {over_view}) SELECT * FROM x LIMIT 150",
    "SELECT who, body FROM {joined} ORDER BY id LIMIT 300",
]


@pytest.mark.parametrize("client", ["extended", "binary", "asyncpg"])
@pytest.mark.parametrize("template", VIEW_ROUTES)
def test_views_and_materialized_views_are_masked_by_their_definitions(analyst, analyst_async, lax, lax_async, raw,
                                                                       views, template, client):
    sql = template.format(renamed=views.renamed, over_view=views.over_view, materialized=views.materialized,
                          joined=views.joined)
    if template in COMPUTING:
        COMPUTING.add(sql)
    rows = read_as_analyst(CLIENTS[client], sql, (analyst, analyst_async), (lax, lax_async))
    assert rows and not raw.leaked(rows)


def test_a_renamed_view_column_gets_its_source_columns_function(analyst, raw, views):
    contact, tax_id, card = analyst.execute(
        f"SELECT contact, tax_id, card FROM {views.renamed} WHERE ref = 1").fetchone()
    assert contact == "***@" + raw.emails[0].split("@")[1]
    assert tax_id == "[redacted]" and card.endswith(raw.cards_raw[0][-4:])


@pytest.mark.parametrize("sql", [
    "SELECT ref FROM {renamed} WHERE tax_id LIKE '4%'",
    "SELECT ref FROM {over_view} ORDER BY contact_lower",
    "SELECT id FROM {materialized} ORDER BY 1, ssn",
])
def test_inference_through_views_is_refused(analyst, views, sql):
    sql = sql.format(renamed=views.renamed, over_view=views.over_view, materialized=views.materialized)
    with pytest.raises(psycopg.Error) as caught:
        analyst.execute(sql)
    refused_message(caught.value)


def test_copy_through_a_view_nulls_its_hidden_columns(analyst, views, raw):
    """COPY has no RowDescription, and a view may cast: the type of a column read through one is unknown."""
    with analyst.cursor().copy(f"COPY (SELECT * FROM {views.renamed} ORDER BY ref) TO STDOUT") as copy:
        received = b"".join(bytes(block) for block in copy)
    assert received.count(b"\\N") > 0 and not raw.leaked(copied(received))


def test_a_view_created_behind_the_gateways_back_is_masked_before_and_after_the_catalog_knows_it(
        gateway, postgres, raw):
    """Fixed: a view the gateway's catalog has not read yet passed its columns raw (no lineage, no RowDescription
    match), leaking SSNs and phone numbers until the next refresh, up to a minute later. Then what came from an
    unknown relation got every detector, which misses what no detector knows (another session's statement text);
    now it is refused to a role that may not run DDL, and the catalog is re-read at once."""
    name = f"v_fresh_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
        direct.execute(f"CREATE VIEW public.{name} AS SELECT id, email AS a, ssn AS b, phone AS c, card_number AS d, "
                       f"lower(ssn) AS e FROM public.customers")
        direct.execute(f"GRANT SELECT ON public.{name} TO {data.READER}")
    try:
        with psycopg.connect(gateway.dsn("analyst"), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="is unknown to pgguard") as caught:
                conn.execute(f"SELECT * FROM {name} ORDER BY id LIMIT 200")
            assert not raw.leaked(str(caught.value))
            known_to_the_gateway(conn, f"SELECT b FROM {name} ORDER BY id LIMIT 1", ("[redacted]",))
            after = conn.execute(f"SELECT * FROM {name} ORDER BY id LIMIT 200").fetchall()
        assert not raw.leaked(after) and {row[5] for row in after} == {None}
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
            direct.execute(f"DROP VIEW public.{name}")


def test_a_statement_prepared_before_the_catalog_knew_its_view_is_planned_again(lax_gateway, postgres, raw):
    """Fixed: asyncpg prepares every query and keeps it; one prepared while a new view was unknown kept masking the
    view's rows with detectors only, for the life of the session, long after the catalog had read the view (and
    detectors miss an SSN without its dashes). The engineer's session: a role that may not run DDL is refused the
    view until the catalog knows it."""
    name = f"v_prepared_{uuid.uuid4().hex[:8]}"
    gateway = lax_gateway
    session = AsyncSession(gateway.dsn("engineer"))  # first: a new session has the catalog read if it is stale
    with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
        direct.execute(f"CREATE VIEW public.{name} AS SELECT id, ssn AS b FROM public.customers")
        direct.execute(f"GRANT SELECT ON public.{name} TO {data.ENGINEER}")
    try:
        statement = session.run(session.conn.prepare(f"SELECT b, replace(b, '-', '') AS x FROM {name} ORDER BY id"))
        session.run(statement.fetch())  # planned before the catalog knows the view
        known_to_the_gateway(gateway.dsn("engineer"), f"SELECT b FROM {name} ORDER BY id LIMIT 1", ("[redacted]",))
        again = session.run(statement.fetch())
    finally:
        session.close()
        with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
            direct.execute(f"DROP VIEW public.{name}")
    assert len(again) == data.CUSTOMER_COUNT and not raw.leaked(again)
    assert {tuple(row) for row in again} == {("[redacted]", None)}


# --- cursors ---------------------------------------------------------------------------------------


def test_declare_and_fetch_in_every_direction(analyst, raw):
    seen = []
    with analyst.transaction():
        analyst.execute(f"DECLARE c1 SCROLL CURSOR FOR SELECT email, phone, card_number, ssn, lower(email) "
                        f"FROM {C} ORDER BY id")
        seen.append(analyst.execute("FETCH 100 FROM c1").fetchall())
        seen.append(analyst.execute("FETCH BACKWARD 10 FROM c1").fetchall())
        seen.append(analyst.execute("FETCH ABSOLUTE 3 FROM c1").fetchall())
        analyst.execute("MOVE FORWARD 5 IN c1")
        seen.append(analyst.execute("FETCH NEXT FROM c1").fetchall())
        seen.append(analyst.execute("FETCH ALL FROM c1").fetchall())
    assert sum(map(len, seen)) > 1000 and not raw.leaked(seen)
    assert seen[2] == [("***@" + raw.emails[2].split("@")[1], "+*-***-***-" + raw.phones_raw[2][-4:],
                        "*" * 12 + raw.cards_raw[2][-4:], "[redacted]", None)]


def test_a_binary_cursor_and_a_cursor_with_hold(analyst, raw):
    with analyst.transaction():
        analyst.execute(f"DECLARE b1 BINARY CURSOR FOR SELECT email, ssn, phone, card_number, c FROM {C} c ORDER BY id")
        binary = analyst.execute("FETCH 200 FROM b1").fetchall()
        analyst.execute(f"DECLARE h1 CURSOR WITH HOLD FOR SELECT ssn, phone, body FROM {C} c "
                        f"JOIN tickets t ON t.customer_id = c.id ORDER BY t.id")
    held = analyst.execute("FETCH 300 FROM h1").fetchall()
    analyst.execute("CLOSE h1")
    assert len(binary) == 200 and len(held) == 300
    assert not raw.leaked(binary) and not raw.leaked(held)
    # The cursor kept its own plan past COMMIT (not the all-NULL one of a name pgguard lost).
    assert {row[0] for row in held} == {"[redacted]"}


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_named_psycopg_cursors(lax_gateway, raw, binary):
    with psycopg.connect(lax_gateway.dsn("analyst")) as conn:
        with conn.cursor(name="attack", binary=binary) as cursor:
            cursor.itersize = 37
            cursor.execute(f"SELECT email, phone, card_number, ssn, c, to_jsonb(c) FROM {C} c ORDER BY id")
            rows = cursor.fetchmany(50) + list(cursor)
        with conn.cursor(name="tickets", binary=binary) as cursor:
            cursor.execute("SELECT body, array_agg(body) OVER () FROM tickets WHERE id < 50 ORDER BY id")
            rows += cursor.fetchall()
    assert len(rows) == data.CUSTOMER_COUNT + 49 and not raw.leaked(rows)


def test_a_cursor_declared_again_under_its_name_keeps_the_plan_of_the_one_that_exists(analyst, raw):
    """Fixed: the second DECLARE fails (the name is taken) but its harmless plan replaced the first's, so FETCH
    from the surviving cursor returned raw values."""
    with analyst.transaction():
        analyst.execute(f"DECLARE d1 CURSOR FOR SELECT lower(ssn) AS x, lower(phone) AS y FROM {C} ORDER BY id")
        with pytest.raises(psycopg.errors.DuplicateCursor):
            with analyst.transaction():  # a savepoint, rolled back
                analyst.execute("DECLARE d1 CURSOR FOR SELECT 'x'::text AS x, 'y'::text AS y")
        rows = analyst.execute("FETCH 100 FROM d1").fetchall()
    assert rows == [(None, None)] * 100


def test_cursors_and_prepared_statements_live_in_different_namespaces(analyst, raw):
    """Fixed: a PREPARE and a DECLARE of the same name shared one entry, so EXECUTE used the cursor's plan."""
    analyst.execute(f"PREPARE n1 AS SELECT lower(ssn) AS x, lower(phone) AS y FROM {C} ORDER BY id LIMIT 50")
    try:
        with analyst.transaction():
            analyst.execute("DECLARE n1 CURSOR FOR SELECT 'x'::text AS x, 'y'::text AS y")
            executed = analyst.execute("EXECUTE n1").fetchall()
            fetched = analyst.execute("FETCH ALL FROM n1").fetchall()
    finally:
        analyst.execute("DEALLOCATE n1")
    assert executed == [(None, None)] * 50 and fetched == [("x", "y")]


# --- prepared statements -----------------------------------------------------------------------------


def test_sql_prepare_execute_many_times_and_prepared_again_under_the_same_name(lax, raw):
    seen = []
    analyst = lax  # to_jsonb(c) below: strict inference refuses it to the analyst
    analyst.execute(f"PREPARE p1(int) AS SELECT email, ssn, lower(phone) FROM {C} WHERE id <= $1 ORDER BY id")
    for limit in (10, 100, 300):
        seen.append(analyst.execute(f"EXECUTE p1({limit})").fetchall())
    analyst.execute("DEALLOCATE p1")
    analyst.execute(f"PREPARE p1 AS SELECT card_number, phone, to_jsonb(c) FROM {C} c ORDER BY id LIMIT 100")
    again = analyst.execute("EXECUTE p1").fetchall()
    analyst.execute("DEALLOCATE p1")
    assert [len(rows) for rows in seen] == [10, 100, 300] and len(again) == 100
    assert not raw.leaked(seen) and not raw.leaked(again)
    assert again[0] == ("*" * 12 + raw.cards_raw[0][-4:], "+*-***-***-" + raw.phones_raw[0][-4:], None)


def test_a_failed_prepare_leaves_the_existing_statement_with_its_own_plan(analyst, raw):
    """Fixed: PREPARE of a taken name fails, but pgguard took the new statement's plan for the old one's rows."""
    analyst.execute(f"PREPARE p2 AS SELECT lower(ssn) AS x, lower(phone) AS y FROM {C} ORDER BY id LIMIT 40")
    try:
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
            psycopg.ClientCursor(analyst).execute("PREPARE p2 AS SELECT 'x'::text AS x, 'y'::text AS y")
        rows = analyst.execute("EXECUTE p2").fetchall()
    finally:
        analyst.execute("DEALLOCATE p2")
    assert rows == [(None, None)] * 40


def test_a_statement_prepared_before_the_search_path_changed_is_planned_again(gateway_factory, postgres):
    """The server plans a prepared statement again at a Bind under a changed search_path, so the same
    unqualified name may now be a table with hidden columns; its masking is planned again too.

    Here the analysts read two schemas with a table of one name: in masking_shadow its SSNs are
    no one's secret, in masking_secret they are redacted (and no detector would find them).
    asyncpg describes a statement once, when it prepares it, so the RowDescription pgguard saw
    names masking_shadow's table to the end."""
    ssn = "123-45-6789"
    with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
        for schema in ("masking_shadow", "masking_secret"):
            direct.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            direct.execute(f"CREATE SCHEMA {schema}")
            direct.execute(f"CREATE TABLE {schema}.people AS SELECT 1 AS id, '{ssn}'::text AS ssn")
            direct.execute(f"GRANT USAGE ON SCHEMA {schema} TO {data.READER}")
            direct.execute(f"GRANT SELECT ON {schema}.people TO {data.READER}")
    edit = config_edit({"roles.analysts": {"read": ["public.*", "masking_shadow.*", "masking_secret.*"]},
                        "masking.columns": {'"masking_secret.people.ssn"': "redact"}})
    session = AsyncSession(gateway_factory(edit).dsn("analyst", search_path="masking_shadow"))
    try:
        statement = session.run(session.conn.prepare("SELECT ssn FROM people"))
        assert [session.run(statement.fetchval()) for _ in range(2)] == [ssn, ssn]
        assert session.run(session.conn.fetchval("SELECT ssn FROM masking_secret.people")) == "[redacted]"
        session.run(session.conn.execute("SET search_path = masking_secret"))
        try:
            value = session.run(statement.fetchval())
        except asyncpg.PostgresError as exc:
            assert "masking_secret.people or masking_shadow.people" in refused_message(exc)
            assert ssn not in str(exc)
        else:
            assert value != ssn, "masking_secret.people read through a plan made for masking_shadow.people"
    finally:
        session.close()
        with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
            direct.execute("DROP SCHEMA masking_shadow, masking_secret CASCADE")


def test_psycopg_prepared_statements_executed_many_times(analyst, raw):
    seen = [analyst.execute(f"SELECT email, ssn, card_number, phone, c FROM {C} c WHERE id < %s ORDER BY id",
                            (n,), prepare=True).fetchall() for n in (5, 50, 500, 500, 500)]
    assert [len(rows) for rows in seen] == [4, 49, 499, 499, 499] and not raw.leaked(seen)


def test_asyncpg_prepared_statements_reused_across_transactions(analyst_async, raw):
    """asyncpg describes a statement once, then binds and executes it without Describe, transaction after
    transaction."""
    conn = analyst_async.conn

    async def work() -> list[Any]:
        seen = []
        masked = await conn.prepare(f"SELECT email, phone, card_number, ssn, lower(email) FROM {C} WHERE id < $1")
        free = await conn.prepare("SELECT body, t FROM tickets t WHERE id < $1 ORDER BY id")
        for limit in (10, 200, 600):
            async with conn.transaction():
                seen.append(await masked.fetch(limit))
                seen.append(await free.fetch(limit))
            seen.append(await masked.fetchrow(limit))
        return seen

    seen = analyst_async.run(work())
    assert len(seen[-3]) == 599 and not raw.leaked(seen)


def run_raw(conn: RawConnection, *messages: Any) -> list[Any]:
    """Extended-protocol messages and a Sync: everything up to ReadyForQuery (errors included)."""
    conn.send(*messages, frontend.Sync())
    seen = []
    while not isinstance(message := conn.receive(), backend.ReadyForQuery):
        seen.append(message)
    return seen


def data_rows(seen: list[Any]) -> list[list[bytes | None]]:
    return [message.values for message in seen if isinstance(message, backend.DataRow)]


@pytest.mark.parametrize("fmt", [0, 1], ids=["text", "binary"])
@pytest.mark.parametrize("sql", [
    "SELECT body FROM tickets ORDER BY id LIMIT 300",
    "SELECT t, ARRAY[subject, body], body::bytea FROM tickets t ORDER BY id LIMIT 300",
    f"SELECT email, phone, card_number, ssn, lower(email) FROM {C} ORDER BY id LIMIT 300",
])
def test_extended_protocol_without_describe(lax_gateway, raw, sql, fmt):
    """Fixed: an Execute with no Describe has no RowDescription, and pgguard then skipped the detectors, so ticket
    bodies went out raw. Without types, hidden columns and values a detector finds anything in become NULL."""
    with login_as(lax_gateway, "analyst") as conn:
        unnamed = run_raw(conn, frontend.Parse("", sql, []), frontend.Bind("", "", [], [], [fmt]),
                          frontend.Execute("", 0))
        run_raw(conn, frontend.Parse("s1", sql, []))
        named = [run_raw(conn, frontend.Bind("", "s1", [], [], [fmt]), frontend.Execute("", 0)) for _ in range(2)]
        suspended = run_raw(conn, frontend.Bind("p1", "s1", [], [], [fmt]), frontend.Execute("p1", 7),
                            frontend.Execute("p1", 0))
    for seen in (unnamed, *named, suspended):
        assert len(data_rows(seen)) == 300
        assert not raw.leaked(seen)


def test_a_parse_of_a_taken_name_does_not_change_the_statements_plan(gateway, raw):
    """Fixed: the second Parse of "s" fails (the name is taken) but its plan replaced the first's."""
    hidden = f"SELECT lower(ssn) AS x, lower(phone) AS y FROM {C} ORDER BY id LIMIT 60"
    with login_as(gateway, "analyst") as conn:
        run_raw(conn, frontend.Parse("s", hidden, []))
        failed = run_raw(conn, frontend.Parse("s", "SELECT 'x'::text AS x, 'y'::text AS y", []))
        described = run_raw(conn, frontend.Bind("", "s", [], [], []), frontend.Describe("P", ""),
                            frontend.Execute("", 0))
        bare = run_raw(conn, frontend.Bind("", "s", [], [], [1]), frontend.Execute("", 0))
    assert isinstance(failed[0], backend.ErrorResponse) and failed[0].code == "42P05"
    assert data_rows(described) == data_rows(bare) == [[None, None]] * 60


def test_a_close_skipped_after_an_error_does_not_free_the_name(gateway, raw):
    """Fixed: after an error the server skips to Sync, Close and Parse included; pgguard applied both anyway."""
    hidden = f"SELECT lower(ssn) AS x, lower(phone) AS y FROM {C} ORDER BY id LIMIT 60"
    with login_as(gateway, "analyst") as conn:
        run_raw(conn, frontend.Parse("s", hidden, []))
        skipped = run_raw(conn, frontend.Parse("", "SELECT 1/0", []), frontend.Bind("", "", [], [], []),
                          frontend.Execute("", 0), frontend.Close("S", "s"),
                          frontend.Parse("s", "SELECT 'x'::text AS x, 'y'::text AS y", []))
        rows = run_raw(conn, frontend.Bind("", "s", [], [], []), frontend.Describe("P", ""), frontend.Execute("", 0))
    kinds = [type(m).__name__ for m in skipped]
    assert kinds[0] == "ParseComplete" and kinds[-1] == "ErrorResponse" and "CloseComplete" not in kinds
    assert data_rows(rows) == [[None, None]] * 60


def test_protocol_portals_and_sql_cursors_share_names_both_ways(gateway, raw):
    hidden = f"SELECT lower(ssn) AS x, ssn, phone FROM {C} ORDER BY id LIMIT 30"
    with login_as(gateway, "analyst") as conn:
        conn.query("BEGIN")
        run_raw(conn, frontend.Parse("s", hidden, []), frontend.Bind("portal", "s", [], [], []))
        # A statement named like the portal must not lend the portal its plan.
        run_raw(conn, frontend.Parse("portal", "SELECT 'x'::text AS x, 'y'::text AS ssn, 'z'::text AS phone", []))
        fetched, _ = conn.query("FETCH ALL FROM portal")
        conn.query(f"DECLARE cur CURSOR FOR {hidden}")
        executed = run_raw(conn, frontend.Execute("cur", 0))
        conn.query("ROLLBACK")
    assert data_rows(fetched)[0] == [None, b"[redacted]", b"+*-***-***-" + raw.phones_raw[0][-4:].encode()]
    assert len(data_rows(executed)) == 30
    assert not raw.leaked(fetched) and not raw.leaked(executed)


# --- COPY --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "COPY tickets TO STDOUT",
    "COPY ticket_notes TO STDOUT WITH (FORMAT csv, HEADER)",
    "COPY ticket_notes TO STDOUT WITH (FORMAT binary)",
    "COPY (SELECT id, body FROM ticket_notes ORDER BY id) TO STDOUT",
    "COPY (SELECT t FROM ticket_notes t) TO STDOUT",
    "COPY (SELECT array_agg(body) FROM ticket_notes) TO STDOUT",
    "COPY (SELECT body::bytea FROM ticket_notes ORDER BY id) TO STDOUT",
    "COPY (SELECT body::bytea FROM ticket_notes ORDER BY id) TO STDOUT WITH (FORMAT csv)",
])
def test_copy_of_free_text_works_and_is_scrubbed(analyst, postgres, raw, sql):
    received = copy_out(analyst, sql)
    with psycopg.connect(postgres.dsn()) as direct, direct.cursor().copy(sql) as copy:
        original = b"".join(bytes(block) for block in copy)
    assert len(received) == len(original) and received != original
    assert raw.leaked(copied(original))
    assert not raw.leaked(copied(received))


def copy_out(conn: psycopg.Connection[Any], sql: str) -> bytes:
    """Everything a COPY … TO STDOUT sends."""
    with conn.cursor().copy(sql) as copy:
        return b"".join(bytes(block) for block in copy)


def copied(data: bytes) -> str:
    """COPY data as a client reads it: its text, and the text bytea's hex stands for (fixed: that was not scrubbed)."""
    text = data.decode("utf-8", "replace")
    decoded = [bytes.fromhex(h).decode("utf-8", "replace") for h in re.findall(r"\\x([0-9a-f]+)", text)]
    return "\n".join([text, *decoded])


@pytest.mark.parametrize("sql", [
    f"COPY {C} TO STDOUT",
    f"COPY {C} TO STDOUT WITH (FORMAT csv, HEADER)",
    f"COPY {C} TO STDOUT WITH (FORMAT binary)",
    f"COPY {C} (id, email) TO STDOUT",
    f"COPY (SELECT ssn FROM {C}) TO STDOUT",
    f"COPY (SELECT lower(email), phone FROM {C}) TO STDOUT WITH (FORMAT csv)",
    computes(f"COPY (SELECT row_to_json(c) FROM {C} c) TO STDOUT"),
    computes(f"COPY (SELECT email::bytea, ssn || '', card_number FROM {C}) TO STDOUT "
             "WITH (FORMAT csv, QUOTE '|', ESCAPE '~')"),
    f"COPY (SELECT * FROM {C} ORDER BY id) TO STDOUT WITH (FORMAT text, DELIMITER ',', NULL '\\x')",
])
@pytest.mark.parametrize("client", ["simple", "extended"])
def test_copy_of_hidden_columns_is_masked_in_every_format(analyst, lax, raw, sql, client):
    def run(conn: psycopg.Connection[Any], sql: str) -> bytes:
        cursor = psycopg.ClientCursor(conn) if client == "simple" else conn.cursor()
        with cursor.copy(sql) as copy:
            return b"".join(bytes(block) for block in copy)
    received = read_as_analyst(run, sql, (analyst,), (lax,))
    assert received.count(b"\n") >= len(raw.emails) or "binary" in sql
    assert not raw.leaked(copied(received))


@pytest.mark.parametrize("fmt", ["text", "csv", "binary"])
def test_copy_of_a_card_read_as_a_number_is_null(analyst, fmt):
    """Fixed: a COPY column of unknown type (an expression) was scrubbed as text, which float8's
    4.111111111111111e+15 and money's $4,111,111,111,111,111.00 are not, and in binary a bigint, float8 or money
    is an integer or a double the detectors never read."""
    card = "substring(body from '[0-9]{16}')"
    sql = f"COPY (SELECT {card}::bigint, {card}::float8, {card}::money FROM ticket_notes WHERE body ~ '[0-9]{{16}}') " \
          f"TO STDOUT (FORMAT {fmt})"
    received = copy_out(analyst, sql)
    if fmt == "binary":
        assert binary_fields(received) and set(binary_fields(received)) == {None}
    else:
        # The bigint's text is a run of digits, masked in place; the others are NULL.
        rows = [row.split(b"\t" if fmt == "text" else b",") for row in received.splitlines()]
        null = b"\\N" if fmt == "text" else b""
        assert rows and all(re.fullmatch(rb"\*{12}[0-9]{4}", card) and rest == [null, null] for card, *rest in rows)


def binary_fields(data: bytes) -> list[bytes | None]:
    """Every field of COPY binary data (after its 19-byte header, with no extension), in order."""
    fields: list[bytes | None] = []
    pos = 19
    while True:
        count = int.from_bytes(data[pos:pos + 2], "big", signed=True)
        pos += 2
        if count < 0:
            return fields
        for _ in range(count):
            length = int.from_bytes(data[pos:pos + 4], "big", signed=True)
            pos += 4
            fields.append(None if length < 0 else data[pos:pos + length])
            pos += max(length, 0)


def test_a_csv_null_string_does_not_tell_which_hidden_values_equal_it(analyst, raw):
    """Fixed: the server quotes a value that equals the NULL string, and the masked value kept its quotes, so
    `NULL '444-07-2101'` showed which rows hold that SSN (and the phone, the email …)."""
    def received(options: str) -> bytes:
        sql = f"COPY (SELECT id, ssn, phone, email FROM {C} ORDER BY id LIMIT 20) TO STDOUT (FORMAT csv{options})"
        with analyst.cursor().copy(sql) as copy:
            return b"".join(bytes(block) for block in copy)

    plain = received("")
    for guess in (raw.ssns_raw[0], raw.phones_raw[1], raw.emails[2]):
        assert received(f", NULL '{guess}'") == plain
    forced = received(", FORCE_QUOTE (ssn, email)").splitlines()
    assert forced and all(line.split(b",")[1] == b'"[redacted]"' and line.endswith(b'"') for line in forced)


def test_copy_of_data_with_nothing_to_hide_is_untouched(analyst, postgres):
    for sql in ("COPY orders TO STDOUT", f"COPY (SELECT id, full_name, city FROM {C}) TO STDOUT WITH (FORMAT csv)"):
        with analyst.cursor().copy(sql) as copy:
            received = b"".join(bytes(block) for block in copy)
        with psycopg.connect(postgres.dsn()) as direct, direct.cursor().copy(sql) as copy:
            assert received == b"".join(bytes(block) for block in copy)


def test_copy_through_asyncpg(analyst_async, raw):
    conn = analyst_async.conn

    async def work() -> bytes:
        out = io.BytesIO()
        await conn.copy_from_table("tickets", output=out, format="csv")
        await conn.copy_from_query("SELECT body FROM tickets", output=out)
        return out.getvalue()

    assert not raw.leaked(analyst_async.run(work()).decode())
    hidden = io.BytesIO()
    analyst_async.run(conn.copy_from_table(C, output=hidden))
    assert hidden.getvalue().count(b"\n") == len(raw.emails) and not raw.leaked(hidden.getvalue().decode())


# --- free text named `scrub` (the demo's tickets.body) ------------------------------------------------

# The known limits below, and more, on the demo's tickets, whose body is `scrub`: what is computed from it.
SCRUB_CUTS = [
    computes("SELECT substr(body, strpos(body, '@') - 25, 25), reverse(body), "
             "translate(body, '0123456789', 'abcdefghij') FROM tickets ORDER BY id LIMIT 300"),
    computes("SELECT encode(convert_to(body, 'UTF8'), 'base64'), encode(convert_to(body, 'UTF8'), 'hex'), "
             "replace(body, '@', ' at '), '9' || body FROM tickets ORDER BY id LIMIT 300"),
    computes("SELECT t, to_jsonb(t), string_agg(body, ' ') OVER () FROM tickets t ORDER BY id LIMIT 300"),
    computes("SELECT split_part(body, ' ', n) FROM (SELECT body FROM tickets ORDER BY id LIMIT 100) t, "
             "generate_series(1, 40) n"),
]


@pytest.mark.parametrize("client", ["simple", "prepared", "binary", "asyncpg"])
@pytest.mark.parametrize("sql", SCRUB_CUTS)
def test_free_text_named_scrub_is_null_when_computed_from(analyst, analyst_async, lax, lax_async, raw, sql, client):
    """Fixed for named free text: cut before its `@`, split into words, reversed, re-encoded or glued to
    a digit, a ticket's emails and card numbers were no find to a detector (see the known limits below).
    Strict inference refuses each to the analyst."""
    rows = read_as_analyst(CLIENTS[client], sql, (analyst, analyst_async), (lax, lax_async))
    assert repr(rows).count("None") >= 100 and not list(strings(rows))


@pytest.mark.parametrize("client", ["simple", "binary", "asyncpg"])
def test_free_text_named_scrub_reads_as_itself_with_the_detectors(analyst, analyst_async, raw, postgres, client):
    rows = CLIENTS[client](analyst, analyst_async, "SELECT body, subject FROM tickets ORDER BY id LIMIT 300")
    rows = [tuple(row) for row in rows[0]] if client == "asyncpg" else rows  # its first fetch of three
    direct = fetch_all(postgres.dsn(), "SELECT body, subject FROM tickets ORDER BY id LIMIT 300")
    assert raw.leaked(direct) and not raw.leaked(rows)
    assert "***@" in repr(rows) and [row[1] for row in rows] == [row[1] for row in direct]


@pytest.mark.parametrize("sql", [
    "SELECT count(*) FROM tickets WHERE body ~ '4[0-9]{3}[ -]?[0-9]{4}'",
    "SELECT id FROM tickets WHERE body LIKE '%@%' LIMIT 5",
    "SELECT id FROM tickets ORDER BY body LIMIT 5",
    "SELECT count(*) FROM tickets GROUP BY body",
    "SELECT t.id FROM tickets t JOIN customers c ON strpos(t.body, c.city) > 0 LIMIT 5",
    "SELECT id FROM tickets WHERE EXISTS (SELECT 1 WHERE body ILIKE '%4111%')",
    # one row per word: how many rows is a fact about the text, and so is each row's place
    "SELECT part FROM (SELECT id, regexp_split_to_table(body, '\\s+') AS part FROM tickets ORDER BY id LIMIT 300) s",
])
def test_free_text_named_scrub_is_no_filter_for_strict_roles(analyst, sql):
    """Each answer would tell one fact about the text the detectors masked: enough of them spell a card number.
    The last is the known limit of a card split into one row per group, closed for named free text."""
    with pytest.raises(psycopg.Error) as caught:
        analyst.execute(sql).fetchall()
    assert "tickets.body" in refused_message(caught.value)


@pytest.mark.parametrize("fmt", ["text", "csv", "binary"])
def test_free_text_named_scrub_copied_out_is_null_when_computed_from(analyst, lax, raw, fmt):
    sql = computes(f"COPY (SELECT reverse(body), substr(body, strpos(body, '@') - 25, 25) FROM tickets ORDER BY id) "
                   f"TO STDOUT (FORMAT {fmt})")
    received = read_as_analyst(copy_out, sql, (analyst,), (lax,))
    rows = set(received.splitlines()) if fmt != "binary" else set(binary_fields(received))
    assert received and rows == {b"\\N\t\\N" if fmt == "text" else b"," if fmt == "csv" else None}


def test_free_text_named_scrub_is_unchanged_for_roles_cleared_for_it(gateway, raw):
    """The demo clears support and engineering for tickets.body: derived text still gets their detectors."""
    for role in ("support", "engineer"):
        with psycopg.connect(gateway.dsn(role)) as conn:
            rows = conn.execute("SELECT upper(body), body FROM tickets WHERE body LIKE '%@%' "
                                "ORDER BY id LIMIT 50").fetchall()
        assert rows and all(upper is not None and upper == (body or "").upper() or "*" in upper
                            for upper, body in rows)
        assert not [leak for leak in raw.leaked(rows) if leak.startswith("card:")]


# --- known limits: output masking cannot see these --------------------------------------------------


@known_limit
def test_known_limit_text_cut_just_before_an_at_sign(analyst, raw):
    """An email's user part without its `@domain` is no email to a detector."""
    rows = analyst.execute("SELECT substr(body, strpos(body, '@') - 25, 25) FROM ticket_notes "
                           "WHERE body LIKE '%@%' ORDER BY id LIMIT 200").fetchall()
    assert not raw.leaked(rows)


@known_limit
def test_known_limit_a_spaced_card_number_split_into_rows(analyst, raw):
    """Four groups of four digits, one per row, are four small numbers to a detector."""
    rows = analyst.execute("SELECT part FROM (SELECT id, regexp_split_to_table(body, '\\s+') AS part "
                           "FROM ticket_notes ORDER BY id LIMIT 3000) s").fetchall()
    assert not raw.leaked(" ".join(part for (part,) in rows))


def test_a_runtime_error_is_no_oracle_for_strict_roles(analyst, raw):
    """Fixed (it was a known limit): the value was NULL, but whether the statement failed told one bit of it, and
    ten statements read a digit. Now each is refused before it runs, whatever the digit."""
    for digit in "0123456789":
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
            analyst.execute(f"SELECT 1 / (CASE WHEN ssn LIKE '{digit}%' THEN 0 ELSE 1 END) FROM {C} "
                            f"WHERE id = 1").fetchall()
        assert "public.customers.ssn (LIKE)" in strict_refusal(caught.value)
        assert not raw.leaked(error_text(caught.value))


# Each tells something of a hidden value by whether it fails, how long it runs, or how many rows, or how
# large ones, it makes.
ORACLES = [
    f"SELECT 1 / (CASE WHEN ssn LIKE '4%' THEN 0 ELSE 1 END) FROM {C} WHERE id = 1",
    f"SELECT CASE WHEN ssn LIKE '4%' THEN 1 / 0 END FROM {C} WHERE id = 1",
    f"SELECT CASE WHEN ssn IS NULL THEN 1 / 0 END FROM {C} WHERE id = 1",
    f"SELECT ssn::int FROM {C} WHERE id = 1",
    f"SELECT (substr(email, 1, 1) || '1')::int FROM {C} WHERE id = 1",
    f"SELECT email::inet FROM {C} WHERE id = 1",
    f"SELECT make_date(2000, 1, length(ssn)) FROM {C} WHERE id = 1",
    f"SELECT 1 / (length(email) - 20) FROM {C} WHERE id = 1",
    f"SELECT sqrt(-length(phone)) FROM {C} WHERE id = 1",
    f"SELECT (ARRAY[1])[length(ssn) - 10] FROM {C} WHERE id = 1",
    f"SELECT coalesce(NULLIF(ssn, '444-07-2101'), (1 / 0)::text) FROM {C} WHERE id = 1",
    f"SELECT generate_series(1, length(ssn)) FROM {C} WHERE id = 1",
    f"SELECT length(repeat('x', length(card_number) * 1000)) FROM {C} WHERE id = 1",
    f"SELECT pg_sleep(CASE WHEN ssn LIKE '4%' THEN 0.01 ELSE 0 END) FROM {C} WHERE id = 1",
    f"SELECT id FROM {C} ORDER BY id LIMIT (SELECT length(email) FROM {C} WHERE id = 1)",
    f"SELECT id FROM {C} ORDER BY id OFFSET (SELECT ascii(ssn) FROM {C} WHERE id = 1) LIMIT 1",
    f"SELECT ssn LIKE '4%' AND 1 / (id - id) = 1 FROM {C} WHERE id = 1",
    f"SELECT ssn NOT LIKE '4%' OR 1 / (id - id) = 1 FROM {C} WHERE id = 1",
    f"SELECT o.id, (SELECT 1 / (length(c.ssn) - 11) FROM {C} c WHERE c.id = o.customer_id) FROM orders o "
    "ORDER BY o.id LIMIT 5",
    f"SELECT d.y FROM (SELECT lower(ssn) AS x FROM {C} WHERE id = 1) s, LATERAL (SELECT x::date AS y) d",
    f"SELECT sum(ssn::int) FROM {C}",
    f"SELECT count(DISTINCT ssn) FROM {C} WHERE id IN (1, 2)",
    "SELECT reverse(body) FROM tickets WHERE id = 1",
    # CYCLE ends the recursion at the first row equal to one before it: 2 rows unless the email holds a lower
    # case letter
    f"WITH RECURSIVE r(n, s) AS (SELECT 1, email FROM {C} WHERE id = 1 UNION ALL SELECT n + 1, upper(s) "
    "FROM r) CYCLE s SET c USING p SELECT count(*) FROM r",
    # ltrim() is total, but what it leaves is as long as the email's first letters: the sort of many copies of
    # it shows how long, in the plan EXPLAIN ANALYZE prints (`Disk: 9608kB`)
    f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT ltrim(email, 'abcdefghijklmnopqrstuvwxyz.') "
    f"FROM {C}, generate_series(1, 20000) g WHERE id = 1 ORDER BY g",
    # concat() and string_agg() are total, but nested or over many rows they multiply what ltrim() left (shorter
    # where the SSN starts with 4) until the server fails on a value of more than 1 GB: only a column's own
    # value may go through them
    f"SELECT concat(y, y, y, y) FROM (SELECT concat(ltrim(ssn, '4'), ltrim(ssn, '4')) AS y FROM {C} WHERE id = 1) s",
    f"SELECT string_agg(ltrim(ssn, '4'), '') FROM {C}, generate_series(1, 1000) g WHERE id = 1",
    # what ltrim() leaves of many copies of the email is sorted on disk: pg_stat_database.temp_bytes grows by as
    # many bytes as it left (4414656 where the email's leading letters were trimmed, 5225664 where none were)
    f"SELECT ltrim(email, 'abcdefghijklmnopqrstuvwxyz.') FROM {C}, generate_series(1, 100000) g WHERE id = 1 "
    "ORDER BY g",
    # upper() in Turkish makes each i an İ, a byte longer: the same spill counts the email's i's
    f"SELECT upper(email COLLATE \"tr-x-icu\") FROM {C}, generate_series(1, 100000) g WHERE id = 1 ORDER BY g",
    f"SELECT lower(concat(ssn, 'I' COLLATE \"tr-x-icu\")) FROM {C} WHERE id = 1",
    # a row's text quotes a body that holds a space and doubles its quotes: as long as the body and its quotes
    "SELECT ROW(body)::text FROM tickets, generate_series(1, 100000) g WHERE id = 1 ORDER BY g",
]


def refused_by_masking(exc: BaseException) -> str:
    message = refused_message(exc)
    assert message.endswith("(rule masking)") and "public." in message, message
    return message


@pytest.mark.parametrize("client", ["simple", "extended", "asyncpg"])
@pytest.mark.parametrize("sql", ORACLES)
def test_strict_inference_refuses_what_may_fail_on_a_hidden_value(analyst, analyst_async, raw, sql, client):
    with pytest.raises((psycopg.Error, asyncpg.PostgresError)) as caught:
        CLIENTS[client](analyst, analyst_async, sql)
    refused_by_masking(caught.value)
    assert not raw.leaked(error_text(caught.value))
    assert analyst.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("role", ["support", "engineer"])
def test_roles_without_strict_inference_run_what_may_fail_on_a_hidden_value(gateway, raw, role):
    """As before: the database runs each, and answers or fails on the value (its error scrubbed)."""
    def hidden(received: object) -> list[str]:  # support sees emails raw
        return [leak for leak in raw.leaked(received) if not (role == "support" and leak.startswith("email:"))]

    outcomes = []
    with psycopg.connect(gateway.dsn(role), autocommit=True) as conn:
        for sql in ORACLES:
            try:
                rows = conn.execute(sql).fetchall()
            except psycopg.Error as exc:  # the database's own error (22: data exception), never a refusal
                assert exc.sqlstate[:2] == "22", (sql, exc.sqlstate, str(exc))
                assert not hidden(error_text(exc))
                outcomes.append("failed")
            else:
                assert not hidden(rows)
                outcomes.append("ran")
    assert {"ran", "failed"} <= set(outcomes)


def test_strict_roles_still_read_hidden_columns_masked_and_through_total_functions(analyst, raw):
    rows = analyst.execute(
        f"SELECT id, email, lower(email), upper(ssn), length(phone), md5(card_number), trim(email), "
        f"concat(full_name, ' <', email, '>'), concat_ws(', ', city, phone), ssn::text, email::varchar, "
        f"count(*) OVER () FROM {C} ORDER BY id LIMIT 50").fetchall()
    assert len(rows) == 50 and not raw.leaked(rows)
    assert [row[1] for row in rows] == ["***@" + email.split("@")[1] for email in raw.emails[:50]]
    assert {row[2:9] for row in rows} == {(None,) * 7}
    assert {row[9] for row in rows} == {"[redacted]"} and rows[0][10] == rows[0][1] and rows[0][11] >= 1000
    groups = analyst.execute(f"SELECT city, count(email), count(*), string_agg(email, ',') FROM {C} "
                             f"GROUP BY city ORDER BY city").fetchall()
    assert groups and all(row[1] == row[2] > 0 and row[3] is None for row in groups)


# --- other roles -------------------------------------------------------------------------------------


def test_support_sees_raw_emails_and_nothing_else_raw(gateway, postgres, raw):
    sql = f"SELECT email, phone, card_number, ssn, lower(email), ssn || '' FROM {C} ORDER BY id"
    with psycopg.connect(gateway.dsn("support")) as conn:
        rows = conn.execute(sql).fetchall()
        bodies = conn.execute("SELECT body FROM tickets ORDER BY id").fetchall()
    assert [row[0] for row in rows] == list(raw.emails)
    assert [row[4] for row in rows] == [email.lower() for email in raw.emails]
    assert all(row[3] == "[redacted]" and row[5] is None for row in rows)
    assert all(row[2] == "*" * 12 + card[-4:] for row, card in zip(rows, raw.cards_raw))
    assert all(row[1] != phone and row[1].endswith(phone[-4:]) for row, phone in zip(rows, raw.phones_raw))
    leaks = raw.leaked([rows, bodies])
    assert leaks and all(leak.startswith("email:") for leak in leaks)
    direct_bodies = fetch_all(postgres.dsn(), "SELECT body FROM tickets ORDER BY id")
    assert [k for k in raw.leaked(direct_bodies) if k.startswith("card:")]
    assert not [k for k in raw.leaked(bodies) if k.startswith("card:")]


@pytest.mark.parametrize("role", ["support", "engineer"])
@pytest.mark.parametrize("sql", [
    # the value mode() or percentile_disc() WITHIN GROUP (ORDER BY ssn) returns is one of the SSNs sorted
    f"SELECT mode() WITHIN GROUP (ORDER BY ssn), percentile_disc(0.5) WITHIN GROUP (ORDER BY phone), "
    f"mode() WITHIN GROUP (ORDER BY city) FROM {C}",
    # the column a RIGHT or FULL JOIN merges is the right side's value where the left has none
    f"SELECT ssn || '', upper(phone), city FROM (SELECT 'a'::text AS ssn, 'b'::text AS phone) a "
    f"RIGHT JOIN {C} USING (ssn, phone) ORDER BY id LIMIT 150",
    f"SELECT ssn || '', upper(phone), city FROM (SELECT 'a'::text AS ssn, 'b'::text AS phone) a "
    f"FULL JOIN {C} USING (ssn, phone) ORDER BY id LIMIT 150",
])
def test_values_derived_from_hidden_columns_are_null_without_strict_inference(gateway, raw, role, sql):
    """Roles that may filter on hidden columns (support, engineer) still get NULL for their derived values."""
    with psycopg.connect(gateway.dsn(role)) as conn:
        rows = conn.execute(sql).fetchall()
    assert rows and all(row[:2] == (None, None) and row[2] is not None for row in rows)
    assert not raw.leaked(rows)


def test_dba_sees_everything(gateway, postgres):
    sql = f"SELECT c.*, row_to_json(c)::text, (SELECT array_agg(body ORDER BY id) FROM tickets t " \
          f"WHERE t.customer_id = c.id) FROM {C} c ORDER BY id"
    with psycopg.connect(gateway.dsn("dba")) as conn:
        assert conn.execute(sql).fetchall() == fetch_all(postgres.dsn(), sql)


def test_the_leak_check_fires_on_the_dbas_raw_results(gateway, raw):
    """The control: the check finds every kind of value, and fragments of them, where they are."""
    with psycopg.connect(gateway.dsn("dba")) as conn:
        rows = conn.execute(f"SELECT email, phone, card_number, ssn FROM {C} ORDER BY id LIMIT 200").fetchall()
        fragments = conn.execute(
            f"SELECT upper(split_part(email, '@', 1)), substr(card_number, 1, 12), "
            f"regexp_replace(card_number, '(\\d{{4}})', '\\1 ', 'g'), replace(phone, '-', '.'), "
            f"translate(ssn, '-', '') FROM {C} ORDER BY id LIMIT 200").fetchall()
    leaks = raw.leaked(rows)
    for kind in ("email", "phone", "card", "ssn"):
        assert len([k for k in leaks if k.startswith(kind + ":")]) >= 200, kind
    assert len(raw.leaked(fragments)) >= 5 * 200
    assert not raw.leaked("***@example.net ************4983 [redacted] +*-***-***-4240 2024-01-29 11:22:03+00")


# --- the engineer writes: masked values must not be laundered through a table ------------------------


@pytest.fixture(scope="module")
def engineer_scratch(gateway, postgres) -> Iterator[tuple[psycopg.Connection[Any], str]]:
    """A scratch table the engineer may write, once the gateway knows it; tests leave it empty."""
    with scratch_table(postgres.dsn(), "id int, email text, ssn text", "masking") as table:
        known_to_the_gateway(gateway.dsn("engineer"),
                             f"SELECT c.ssn FROM {C} c LEFT JOIN {table} t ON false WHERE c.id = 1", ("[redacted]",))
        with psycopg.connect(gateway.dsn("engineer"), autocommit=True) as conn:
            yield conn, table


def test_engineer_data_modifying_cte_returns_masked_values(engineer_scratch, raw):
    conn, table = engineer_scratch
    with conn.transaction(force_rollback=True):
        rows = conn.execute(f"WITH m AS (UPDATE {C} SET city = city WHERE id <= 20 RETURNING id, email, phone, "
                            f"card_number, ssn, lower(email)) SELECT * FROM m ORDER BY id").fetchall()
    assert len(rows) == 20 and not raw.leaked(rows)
    assert rows[0][1:] == ("***@" + raw.emails[0].split("@")[1], "+*-***-***-" + raw.phones_raw[0][-4:],
                           "*" * 12 + raw.cards_raw[0][-4:], "[redacted]", None)
    with conn.transaction(force_rollback=True):
        inserted = conn.execute(f"WITH i AS (INSERT INTO {table} VALUES (1, 'someone@example.org', 'n/a') "
                                f"RETURNING *) SELECT * FROM i").fetchall()
    assert inserted == [(1, "*******@example.org", "n/a")]


@pytest.mark.parametrize("sql", [
    "INSERT INTO {table} SELECT id, email, ssn FROM customers WHERE id < 5 RETURNING *",
    "WITH m AS (INSERT INTO {table} SELECT id, email, ssn FROM customers WHERE id < 5 RETURNING *) SELECT * FROM m",
    "WITH src AS (SELECT id, ssn FROM customers WHERE id < 5) INSERT INTO {table} (id, ssn) SELECT * FROM src",
    "INSERT INTO {table} (id, ssn) VALUES (1, (SELECT phone FROM customers WHERE id = 1))",
    "UPDATE {table} SET ssn = (SELECT card_number FROM customers c WHERE c.id = {table}.id) RETURNING ssn",
    "UPDATE {table} t SET (email, ssn) = (SELECT c.email, 'x' FROM customers c WHERE c.id = t.id)",
    "UPDATE customers SET city = ssn WHERE id = 1 RETURNING city",
    "UPDATE customers SET phone = ssn WHERE id = 1",
    "INSERT INTO customers SELECT * FROM customers WHERE id = 1 ON CONFLICT (id) DO UPDATE SET city = excluded.ssn "
    "RETURNING city",
    "MERGE INTO {table} t USING customers c ON t.id = c.id WHEN NOT MATCHED THEN INSERT VALUES (c.id, c.email, 'x')",
    "CREATE TEMP TABLE copied AS SELECT id, ssn, replace(phone, '-', '') FROM customers",
    "SELECT email, card_number INTO TEMP copied FROM customers",
    "CREATE TABLE {table}_copy AS WITH x AS (SELECT ssn FROM customers) SELECT * FROM x",
    "EXPLAIN ANALYZE CREATE TEMP TABLE copied AS SELECT lower(email) FROM customers",
    "PREPARE hidden AS SELECT ssn FROM customers; CREATE TEMP TABLE copied AS EXECUTE hidden",
])
def test_engineer_cannot_copy_hidden_values_where_they_would_be_read_back_raw(engineer_scratch, postgres, sql):
    """Fixed: INSERT ... SELECT, UPDATE ... SET, MERGE and CREATE TABLE AS / SELECT INTO wrote masked columns'
    values into columns nobody masks, and RETURNING (or a later SELECT) gave them back raw."""
    conn, table = engineer_scratch
    with pytest.raises(psycopg.Error) as caught:
        with conn.transaction(force_rollback=True):
            psycopg.ClientCursor(conn).execute(sql.format(table=table))
    assert "could be read back unmasked" in refused_message(caught.value)
    assert fetch_value(postgres.dsn(), f"SELECT count(*) FROM {table}") == 0


def test_engineer_cannot_store_a_prepared_statements_hidden_rows_in_a_table(gateway_factory):
    gateway = gateway_factory(without_ddl_approval)  # the allowed CREATE TABLE AS would wait for approval
    with psycopg.connect(gateway.dsn("engineer"), autocommit=True) as conn:
        conn.execute(f"PREPARE stored AS SELECT id, ssn FROM {C}")
        conn.execute("PREPARE harmless AS SELECT id, city FROM customers")
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("CREATE TEMP TABLE copied AS EXECUTE stored")
        assert "CREATE TABLE AS EXECUTE stored" in refused_message(caught.value)
        conn.execute("CREATE TEMP TABLE copied AS EXECUTE harmless")
        assert conn.execute("SELECT count(*) FROM copied").fetchone() == (data.CUSTOMER_COUNT,)


def test_engineer_may_upsert_a_row_of_a_masked_table_with_its_own_values(gateway, raw):
    """`excluded` is the row that could not be inserted: its city is a city, its email stays masked."""
    with psycopg.connect(gateway.dsn("engineer")) as conn, conn.transaction(force_rollback=True):
        row = conn.execute(f"INSERT INTO {C} SELECT * FROM {C} WHERE id = 1 ON CONFLICT (id) DO UPDATE "
                           "SET city = excluded.city, email = excluded.email RETURNING city, email").fetchone()
    assert row is not None and not raw.leaked([row])
    assert row[1] == "***@" + raw.emails[0].split("@")[1]


def test_engineer_may_rewrite_a_masked_column_with_its_own_value(gateway, raw):
    with psycopg.connect(gateway.dsn("engineer")) as conn, conn.transaction(force_rollback=True):
        (email,) = conn.execute(f"UPDATE {C} SET email = email WHERE id = 1 RETURNING email").fetchone()
    assert email == "***@" + raw.emails[0].split("@")[1]


@pytest.mark.parametrize("sql", [
    f"UPDATE {C} SET email = 'x@' || replace(email, '@', '.') WHERE id = 1 RETURNING email",
    f"UPDATE {C} SET card_number = substr(card_number, 1, 8) WHERE id = 1 RETURNING card_number",
    f"UPDATE {C} SET card_number = card_number::varchar(12) WHERE id = 1 RETURNING card_number",
    f"UPDATE {C} SET email = lower(email) WHERE id = 1",
    f"INSERT INTO {C} SELECT id + 100000, full_name, reverse(email), phone, card_number, ssn, city, created_at "
    f"FROM {C} WHERE id = 1 RETURNING email",
    f"INSERT INTO {C} SELECT * FROM {C} WHERE id = 1 ON CONFLICT (id) DO UPDATE "
    "SET card_number = right(excluded.card_number, 8) RETURNING card_number",
    f"MERGE INTO {C} t USING {C} s ON t.id = s.id AND s.id = 1 WHEN MATCHED THEN "
    "UPDATE SET phone = substr(s.phone, 1, 9)",
])
def test_engineer_cannot_rewrite_a_masked_column_with_a_value_derived_from_one(gateway, postgres, raw, sql):
    """Fixed: a value derived from a hidden column went back into a column masked the same way, and the mask,
    made for the column's own values, showed other parts of it: `SET email = 'x@' || replace(email, '@', '.')`
    returned `***@ben.obrien1.example.net`, and `SET card_number = substr(card_number, 1, 8)` the card's digits
    5 to 8, then 1 to 4 with another cut."""
    with psycopg.connect(gateway.dsn("engineer")) as conn:
        with pytest.raises(psycopg.Error) as caught:
            with conn.transaction(force_rollback=True):
                rows = conn.execute(sql).fetchall() if "RETURNING" in sql else conn.execute(sql)
                assert not raw.leaked(rows)
    assert "derived from" in refused_message(caught.value)
    assert fetch_all(postgres.dsn(), f"SELECT email, card_number, phone FROM {C} WHERE id = 1") == \
        [(raw.emails[0], raw.cards_raw[0], raw.phones_raw[0])]


@pytest.mark.parametrize("sql", [
    f"UPDATE {C} SET city = NULL WHERE id = 1",
    f"UPDATE {C} SET created_at = NULL WHERE id = 2 RETURNING id",
    f"WITH u AS (UPDATE {C} SET full_name = NULL WHERE id = 3 RETURNING id) SELECT * FROM u",
])
def test_engineer_errors_on_rows_holding_hidden_columns_do_not_quote_the_row(gateway, raw, sql):
    """Fixed: a NOT NULL violation's DETAIL quotes the whole failing row, `Failing row contains (1, Ben O'Brien, …,
    +1-688-555-4240, …, 444-07-2101, …)`, and a write that read no hidden column passed it as it came."""
    with psycopg.connect(gateway.dsn("engineer")) as conn:
        with pytest.raises(psycopg.errors.NotNullViolation) as caught:
            with conn.transaction(force_rollback=True):
                psycopg.ClientCursor(conn).execute(sql)
    assert caught.value.diag.message_detail is None
    assert not raw.leaked(error_text(caught.value))


@pytest.mark.parametrize("role", ["support", "engineer"])
@pytest.mark.parametrize("sql", [
    f"SELECT pg_notify('kept', ssn) FROM {C} WHERE id < 5",
    f"SELECT count(pg_notify('kept', phone)) FROM {C}",
    f"WITH x AS (SELECT pg_notify('kept', ssn || ' ' || phone) FROM {C}) SELECT 1 FROM x LIMIT 1",
    f"SELECT set_config('application_name', ssn, false) FROM {C} WHERE id = 1",
])
def test_hidden_values_are_not_kept_where_the_session_reads_them_back(gateway, raw, role, sql):
    """Fixed: pg_notify() of a hidden value, which a role allowed to write may call, came back raw to the session
    listening; set_config() kept one as a setting that SHOW, current_setting() and the ParameterStatus of
    application_name gave back raw (the analyst too)."""
    with psycopg.connect(gateway.dsn(role), autocommit=True) as conn:
        conn.execute("LISTEN kept")
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(sql)
        assert "could be read back unmasked" in refused_message(caught.value)
        conn.execute("NOTIFY kept, 'done'")  # delivered after anything sent before it
        notes = [note.payload for note in conn.notifies(timeout=30, stop_after=1)]
        seen = [notes, conn.execute("SHOW application_name").fetchall(), conn.info.parameter_status("application_name")]
    assert notes == ["done"] and not raw.leaked(seen)


def test_procedures_and_code_blocks_return_no_hidden_values(gateway_factory, postgres, raw):
    """Fixed: for a role allowed procedural statements, a CALL's OUT and INOUT arguments came back as a row
    nothing masked (`CALL contact_of(1)` gave `… 444-07-2101`), and a DO block's RAISE NOTICE or EXCEPTION gave
    whatever the block read."""
    suffix = uuid.uuid4().hex[:8]
    reads, plain = f"public.reads_{suffix}", f"public.plain_{suffix}"
    with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
        direct.execute(f"CREATE PROCEDURE {reads}(cid int, INOUT who text DEFAULT NULL) LANGUAGE plpgsql AS "
                       f"$$ BEGIN SELECT ssn || ' ' || phone INTO who FROM public.{C} WHERE id = cid; END $$")
        direct.execute(f"CREATE PROCEDURE {plain}(INOUT n int) LANGUAGE sql AS $$ SELECT n + 1 $$")
        direct.execute(f"GRANT EXECUTE ON PROCEDURE {reads}(int, text), {plain}(int) TO {data.ENGINEER}")
    try:
        gateway = gateway_factory(config_edit({"roles.engineering": {
            "statements": ["read", "write", "ddl", "session", "transaction", "procedural"]}}))
        notices: list[str] = []
        with psycopg.connect(gateway.dsn("engineer"), autocommit=True) as conn:
            conn.add_notice_handler(lambda notice: notices.append(str(notice.message_primary)))
            for sql in (f"CALL {reads}(1)",
                        f"DO $$ BEGIN RAISE NOTICE '%', (SELECT ssn || ' ' || phone FROM {C} WHERE id = 1); END $$",
                        f"DO $$ DECLARE r record; BEGIN SELECT * INTO r FROM {C} WHERE id = 1; "
                        "RAISE EXCEPTION 'x %', r; END $$"):
                with pytest.raises(psycopg.Error) as caught:
                    conn.execute(sql)
                assert "cannot follow" in refused_message(caught.value)
            assert conn.execute(f"CALL {plain}(1)").fetchall() == [(2,)]
        assert not notices and not raw.leaked(notices)
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
            direct.execute(f"DROP PROCEDURE {reads}(int, text); DROP PROCEDURE {plain}(int)")
