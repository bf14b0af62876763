"""Attacks on the trusted extensions (docs/policy.md and docs/masking.md, "Extensions").

The trusted extensions' functions, operators and casts count as PostgreSQL's own; their C functions are
taken to read nothing but their arguments, and citext is masked as text. Each test here tries to get more
out of that than the docs allow: a hidden value raw, or more about it than a strict role may learn, a
write where a role may not write, or a user's function run as if it were an extension's. The routes that
held are kept as tests next to the ones that did not.

The database is a fresh one with the extensions in `public` (test_trusted_extensions.SCHEMA, plus
unaccent, ltree, isn, cube, intarray and btree_gist), and the demo's masking: `customers.email` (citext)
masked with the email function, `ssn` and `attrs` (hstore) redacted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from pgguard.demo import data
from test_masking_attacks import refused_message
from test_trusted_extensions import SCHEMA, STRICT, Target

if TYPE_CHECKING:
    from conftest import PostgresServer, TLSFiles

USERS = ", ".join((data.READER, data.SUPPORT, data.ENGINEER))

MORE = f"""
CREATE EXTENSION unaccent; CREATE EXTENSION ltree; CREATE EXTENSION isn; CREATE EXTENSION cube;
CREATE EXTENSION intarray; CREATE EXTENSION btree_gist;
CREATE TABLE public.notes (id int PRIMARY KEY, body citext);
INSERT INTO public.notes VALUES (1, 'card 4111 1111 1111 1111 mail ann@example.com');
CREATE DOMAIN public.ci AS citext;
CREATE TABLE public.people (id int, mail ci, mails citext[]);
INSERT INTO public.people VALUES (1, 'Zed@Example.com', ARRAY['zed@example.com'::citext]);
GRANT SELECT ON public.notes, public.people TO {USERS};
-- A schema with a user's operator `=` on integers, whose function writes a table every role may insert
-- into upstream (so that only pgguard stands between a role and the write), and reads a hidden column.
CREATE SCHEMA sly;
GRANT USAGE ON SCHEMA sly TO {USERS};
CREATE TABLE sly.calls (n int);
GRANT INSERT, SELECT ON sly.calls TO {USERS};
CREATE FUNCTION sly.int_eq(a int, b int) RETURNS bool LANGUAGE plpgsql
  AS $$BEGIN INSERT INTO sly.calls VALUES (a); RETURN a OPERATOR(pg_catalog.=) b; END$$;
CREATE OPERATOR sly.= (LEFTARG = int, RIGHTARG = int, FUNCTION = sly.int_eq);
CREATE FUNCTION sly.text_cat(a text, b text) RETURNS text LANGUAGE plpgsql
  AS $$BEGIN INSERT INTO sly.calls VALUES (0); RETURN a OPERATOR(pg_catalog.||) b; END$$;
CREATE OPERATOR sly.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = sly.text_cat);
-- A domain whose check calls a user's function (which writes), and a table with a column of it.
CREATE FUNCTION sly.noted(v text) RETURNS bool LANGUAGE plpgsql
  AS $$BEGIN INSERT INTO sly.calls VALUES (length(v)); RETURN true; END$$;
CREATE DOMAIN public.noted AS text CHECK (sly.noted(VALUE));
CREATE DOMAIN public.renoted AS noted;
CREATE TABLE public.holder (id int, v noted);
INSERT INTO public.holder VALUES (5, 'init');
GRANT SELECT ON public.holder TO {USERS};
-- A domain whose check uses a user's operator, whose function writes.
CREATE FUNCTION sly.matches(a text, b text) RETURNS bool LANGUAGE plpgsql
  AS $$BEGIN INSERT INTO sly.calls VALUES (-1); RETURN true; END$$;
CREATE OPERATOR sly.=== (LEFTARG = text, RIGHTARG = text, FUNCTION = sly.matches);
CREATE DOMAIN public.matched AS text CHECK (VALUE OPERATOR(sly.===) 'x');
"""


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer, test_ca: TLSFiles) -> Iterator[Target]:
    made = Target(postgres, test_ca, tmp_path_factory.mktemp("hunt"), SCHEMA + MORE)
    yield made
    made.close()


def _upstream(target: Target, sql: str) -> list[tuple[Any, ...]]:
    """Run `sql` as the server's superuser, not through the gateway."""
    with psycopg.connect(target.postgres.dsn(target.name), autocommit=True) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


# -- a trusted extension's SQL function runs a user's operator -------------------------------------------

SLY_PATH = "SET search_path = sly, pg_catalog, public"


@pytest.mark.parametrize("identity", ("analyst", "engineer"))
def test_an_extensions_sql_function_does_not_run_a_users_operator_off_the_search_path(target: Target,
                                                                                     identity: str) -> None:
    """citext's SQL functions (`regexp_match(citext, citext, text)` …) name `=` and `||` unqualified in their
    bodies, which PostgreSQL resolves on the caller's search path. With a schema before pg_catalog, that is
    a user's operator: `sly.=` ran, and wrote sly.calls, which no role here may write, while the statement
    named only citext's function. Such a path makes the extension's SQL functions user-defined."""
    _upstream(target, "TRUNCATE sly.calls")
    with psycopg.connect(target.dsn(identity), autocommit=True) as conn:
        conn.execute(SLY_PATH)
        for sql in ("SELECT regexp_match(full_name, 'a', '') FROM public.customers",
                    "SELECT public.regexp_replace(full_name, 'a', 'b', '') FROM public.customers"):
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(sql).fetchall()
            message = refused_message(caught.value)
            assert "public.regexp_" in message and "search path" in message, message
        # Its C functions do not resolve names: still trusted on that path.
        assert conn.execute("SELECT public.similarity('ab', 'abc') > 0").fetchall() == [(True,)]
        conn.execute("RESET search_path")
    # A statement prepared on the default path is decided again when it runs on the other.
    with psycopg.connect(target.dsn(identity), autocommit=True) as conn:
        conn.execute("PREPARE p AS SELECT regexp_match(full_name, 'a', '') FROM public.customers")
        call = "SELECT regexp_match(full_name, %s, '') FROM public.customers"
        assert conn.execute(call, ("a",), prepare=True).fetchall() == conn.execute("EXECUTE p").fetchall()
        conn.execute(SLY_PATH)
        for sql, params in ((call, ("a",)), ("EXECUTE p", None)):
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(sql, params, prepare=True).fetchall()
            assert "search path" in refused_message(caught.value), sql
    # The other ways to the same path: set_config(), SET LOCAL, the startup packet.
    ways = (["SELECT set_config('search_path', 'sly, pg_catalog, public', false)"],
            ["BEGIN", "SET LOCAL search_path = sly, pg_catalog, public"])
    for setting in ways:
        with psycopg.connect(target.dsn(identity), autocommit=True) as conn:
            for sql in setting:
                conn.execute(sql)
            with pytest.raises(psycopg.Error) as caught:
                conn.execute("SELECT regexp_match(full_name, 'a', '') FROM public.customers").fetchall()
            assert "search path" in refused_message(caught.value), setting
    options = target.gateway.dsn(identity, dbname=target.name, options="-c search_path=sly,pg_catalog,public")
    with psycopg.connect(options, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("SELECT regexp_match(full_name, 'a', '') FROM public.customers").fetchall()
        assert "search path" in refused_message(caught.value)
    assert _upstream(target, "SELECT count(*) FROM sly.calls") == [(0,)]
    # With pg_catalog first (the default path) the bodies' operators are PostgreSQL's, and they work.
    assert target.rows(identity, "SELECT regexp_match(full_name, 'a', '') IS NULL FROM customers ORDER BY id") \
        == [(False,), (True,)]


# -- a domain's check runs where a row is built from text ------------------------------------------------

CHECKED = (
    # hstore's functions that build a row of their first argument's type from the hstore's texts
    "SELECT (populate_record(null::holder, hstore('v', 'x'))).id",
    "SELECT (populate_record(h, hstore('v', 'x'))).id FROM holder h",
    "SELECT (h #= hstore('v', 'x')).id FROM holder h",
    # and PostgreSQL's own ways to the same
    "SELECT (json_populate_record(h, '{\"v\": \"x\"}')).id FROM holder h",
    "SELECT (jsonb_populate_record(null::holder, '{\"v\": \"x\"}')).id",
    "SELECT ('(1,x)'::holder).id",
    "SELECT * FROM json_to_record('{\"v\": \"x\"}') AS t(v noted)",
    "SELECT * FROM ROWS FROM (json_to_record('{\"v\": \"x\"}') AS (v noted))",
    "SELECT * FROM XMLTABLE('/r' PASSING ('<r><v>x</v></r>'::xml) COLUMNS v noted PATH 'v')",
    "SELECT 'x'::renoted",
)


@pytest.mark.parametrize("identity", ("analyst", "engineer"))
def test_a_row_built_from_text_does_not_run_a_users_domain_check(target: Target, identity: str) -> None:
    """`'x'::noted` was refused: its check calls sly.noted(), which is not listed as safe. But a row of a
    type with a column of that domain, built from text, runs the check too: hstore's populate_record() and
    `#=` (trusted now), json_populate_record(), a cast to the row type, a column definition list, a domain
    over the domain. sly.noted() ran, and wrote sly.calls. Each is refused."""
    _upstream(target, "TRUNCATE sly.calls")
    for sql in CHECKED:
        message = target.refusal(identity, sql)
        assert "sly.noted()" in message, (sql, message)
    # A check that uses a user's operator runs its function.
    assert "sly.matches()" in target.refusal(identity, "SELECT 'x'::matched")
    assert _upstream(target, "SELECT count(*) FROM sly.calls") == [(0,)]
    # Reading the table runs no check.
    assert target.rows(identity, "SELECT id, v FROM holder") == [(5, "init")]


# -- routes that held ------------------------------------------------------------------------------------

# What an extension computes from a hidden value: refused to strict roles, for each extension and for the
# comparisons a statement makes without naming an operator (citext's, by the column's type).
STRICT_REFUSED = (
    "SELECT hstore(c) FROM customers c",
    "SELECT hstore(c) -> 'ssn' FROM customers c",
    "SELECT (each(hstore(c))).value FROM customers c",
    "SELECT akeys(hstore(c)), avals(hstore(c)) FROM customers c",
    "SELECT hstore_to_json(hstore(c)) FROM customers c",
    "SELECT %% hstore(c) FROM customers c",
    "SELECT %# hstore(c) FROM customers c",
    "SELECT slice(hstore(c), ARRAY['ssn']) FROM customers c",
    "SELECT count(*) FROM customers WHERE hstore(customers) ? 'ssn'",
    "SELECT pgp_sym_encrypt(ssn, 'k') FROM customers",
    "SELECT encrypt(ssn::bytea, 'k', 'aes') FROM customers",
    "SELECT crypt(ssn, 'aa') FROM customers",
    "SELECT show_trgm(email) FROM customers",
    "SELECT id FROM customers WHERE email % 'ann.lee@example.com'",
    "SELECT soundex(ssn), metaphone(email, 10), dmetaphone(email) FROM customers",
    "SELECT text2ltree(ssn) FROM customers",
    "SELECT unaccent(email) FROM customers",
    "SELECT DISTINCT email FROM customers",
    "SELECT email FROM customers GROUP BY email",
    "SELECT count(*) FROM (SELECT email FROM customers UNION SELECT 'ann.lee@example.com') s",
    "SELECT count(*) FROM (SELECT email FROM customers INTERSECT SELECT 'ann.lee@example.com'::citext) s",
    "SELECT count(DISTINCT email) FROM customers",
    "SELECT min(email), max(email) FROM customers",
    "SELECT rank() OVER (ORDER BY email) FROM customers",
    "SELECT count(*) FROM customers a JOIN customers b USING (email)",
    "SELECT count(*) FROM orders WHERE 'ann.lee@example.com' IN (SELECT email FROM customers)",
    "SELECT count(*) FROM customers a, customers b WHERE a = b",
    "SELECT DISTINCT c FROM customers c",
    "SELECT array_agg(DISTINCT email) FROM customers",
    "SELECT count(*) FROM customers GROUP BY attrs",
    "SELECT count(*) FROM customers WHERE attrs @> 'pin=>1234'",
    "SELECT email::varchar(8) FROM customers",
    "SELECT ssn::isbn13 FROM customers",
    "SELECT cube(length(ssn)) FROM customers",
    "SELECT sort(ARRAY[length(ssn)]) FROM customers",
    "SELECT levenshtein_less_equal(ssn, '444-07-2101', 2) FROM customers",
)


@pytest.mark.parametrize("identity", STRICT)
def test_strict_roles_are_refused_what_an_extension_computes_or_compares(target: Target, identity: str) -> None:
    for sql in STRICT_REFUSED:
        message = target.refusal(identity, sql)
        assert "public.customers." in message and ("computes with" in message or "filters, groups" in message), \
            (sql, message)


LAX_NULL = (
    "SELECT hstore(c) FROM customers c",
    "SELECT hstore(c) -> 'ssn' FROM customers c",
    "SELECT (each(hstore(c))).value FROM customers c",
    "SELECT avals(hstore(c)) FROM customers c",
    "SELECT hstore_to_json(hstore(c)) FROM customers c",
    "SELECT %% hstore(c) FROM customers c",
    "SELECT slice(hstore(c), ARRAY['ssn']) FROM customers c",
    "SELECT delete(hstore(c), 'id') FROM customers c",
    "SELECT attrs -> 'pin' FROM customers",
    "SELECT pgp_sym_decrypt(pgp_sym_encrypt(ssn, 'k'), 'k') FROM customers",
    "SELECT show_trgm(email) FROM customers",
    "SELECT metaphone(email, 10) FROM customers",
    "SELECT unaccent(email) FROM customers",
    "SELECT max(email) FROM customers",
    "SELECT greatest(email, 'b') FROM customers",
    "SELECT email FROM customers UNION SELECT 'ann.lee@example.com'",
    "SELECT ARRAY[email] FROM customers",
)


@pytest.mark.parametrize("binary", (False, True))
def test_lax_roles_get_null_for_what_an_extension_computes_from_a_hidden_value(target: Target, binary: bool) -> None:
    """The engineer sees neither ssn nor email raw; the support role sees email but not ssn."""
    for sql in LAX_NULL:
        assert {value for row in target.rows("engineer", sql, binary=binary) for value in row} == {None}, sql
    assert target.rows("support", "SELECT soundex(ssn), hstore('s', ssn) FROM customers", binary=binary) == \
        [(None, None), (None, None)]
    # A set-returning function over the row in FROM: pgguard cannot follow which value goes where.
    assert "cannot tell where its values end up" in \
        target.refusal("engineer", "SELECT key, value FROM customers c, each(hstore(c))")


@pytest.mark.parametrize("identity", ("analyst", "support", "engineer"))
def test_an_extensions_function_in_attribute_notation_is_a_call(target: Target, identity: str) -> None:
    """`c.hstore` is hstore(c): NULL to every role not cleared for the whole row, and, as hstore(c) is, refused
    to strict roles. Before, strict roles got NULL, as for `c` itself, not the refusal of a computation."""
    for sql in ("SELECT c.hstore FROM customers c", "SELECT t.hstore FROM (SELECT ssn FROM customers) t",
                "SELECT (c).hstore FROM customers c", "SELECT (c).hstore -> 'a' FROM customers c"):
        if identity in STRICT:
            assert "public.customers.ssn (hstore())" in target.refusal(identity, sql), sql
        else:
            assert target.rows(identity, sql) == [(None,), (None,)], sql


def test_citext_is_masked_as_text_in_every_shape(target: Target) -> None:
    """A domain over citext, an array of citext, binary rows and binary COPY."""
    for binary in (False, True):
        mails = target.rows("engineer", "SELECT email::ci FROM customers ORDER BY id", binary=binary)
        assert [bytes(value) if binary else value.encode() for value, in mails] == \
            [b"***@Example.com", b"***@example.net"]
        # Free text in citext gets the detectors, and as an array, an hstore or a row, it is NULL.
        body, *shapes = target.rows("analyst", "SELECT body, ARRAY[body], hstore('k', body), ROW(body) FROM notes",
                                    binary=binary)[0]
        assert (bytes(body) if binary else body.encode()) == b"card **** **** **** 1111 mail ***@example.com"
        assert shapes == [None, None, None]
        assert target.rows("analyst", "SELECT mails FROM people", binary=binary) == [(None,)]
    with psycopg.connect(target.dsn("analyst"), autocommit=True) as conn:
        with conn.cursor().copy("COPY customers (id, email, full_name) TO STDOUT (FORMAT binary)") as copy:
            copied = b"".join(bytes(chunk) for chunk in copy)
    assert b"***@Example.com" in copied and b"Ann.Lee" not in copied and b"Ann Lee" in copied


def test_the_detectors_read_extension_types(target: Target) -> None:
    """A card number as an ltree label or a cube coordinate is NULL to a role with the card detector."""
    assert target.rows("analyst", "SELECT text2ltree('4111111111111111.x'), cube(4111111111111111::float8)") == \
        [(None, None)]
    assert target.rows("analyst", "SELECT text2ltree('4111111111111111.x')", binary=True) == [(None,)]


def test_a_write_whose_default_or_trigger_calls_an_extensions_sql_function_reaches_the_users_operator(
        tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer, test_ca: TLSFiles) -> None:
    """What a write sets off is followed through citext's SQL bodies to every operator their names may be,
    `sly.=` included, which writes sly.calls: refused to a role that may not write it."""
    made = Target(postgres, test_ca, tmp_path_factory.mktemp("hunt_writes"), SCHEMA + MORE + f"""
        CREATE TABLE public.tagged (id int, tag text DEFAULT regexp_replace('abc'::citext, 'a', 'b', ''));
        CREATE FUNCTION public.retag() RETURNS trigger LANGUAGE plpgsql
          AS $$BEGIN NEW.tag := regexp_replace(NEW.tag::citext, 'a', 'b', ''); RETURN NEW; END$$;
        CREATE TABLE public.retagged (id int, tag text);
        CREATE TRIGGER retag BEFORE INSERT ON public.retagged FOR EACH ROW EXECUTE FUNCTION public.retag();
        GRANT ALL ON public.tagged, public.retagged TO {data.ENGINEER};""")
    try:
        _upstream(made, "TRUNCATE sly.calls")
        with psycopg.connect(made.dsn("engineer"), autocommit=True) as conn:
            conn.execute(SLY_PATH)
            for sql in ("INSERT INTO public.tagged (id) VALUES (1)",
                        "INSERT INTO public.retagged (id, tag) VALUES (1, 'abc')"):
                with pytest.raises(psycopg.Error) as caught:
                    conn.execute(sql)
                assert "may not write (insert) sly.calls" in refused_message(caught.value), sql
        assert _upstream(made, "SELECT count(*) FROM sly.calls") == [(0,)]
    finally:
        made.close()


@pytest.mark.parametrize("identity", ("analyst", "engineer"))
def test_pg_trgm_threshold_takes_constants_only(target: Target, identity: str) -> None:
    """The threshold `%` reads is the session's to set, with a constant; set from a hidden value, it would keep
    it where show_limit() reads it back, as set_limit() would (which stays user-defined)."""
    with psycopg.connect(target.dsn(identity), autocommit=True) as conn:
        conn.execute("SET pg_trgm.similarity_threshold = 0.1")
        assert conn.execute("SELECT show_limit() < 0.2, count(*) FROM customers WHERE full_name % 'Ann'").fetchall() \
            == [(True, 1)]
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("SELECT set_config('pg_trgm.similarity_threshold', '0.' || length(ssn), false)"
                         " FROM customers LIMIT 1")
        assert "public.customers.ssn" in refused_message(caught.value)
        # Random bytes and time-based uuids read nothing.
        assert conn.execute("SELECT length(gen_random_bytes(4)), uuid_generate_v1mc() IS NOT NULL").fetchall() == \
            [(4, True)]


def test_a_writer_may_not_copy_a_hidden_value_through_an_extension(target: Target) -> None:
    """The engineer may write public.*, but not a hidden value where it could read it back unmasked, however an
    extension reshapes it on the way."""
    for value in ("citext_larger(email, 'a')", "hstore(c) -> 'ssn'", "c.hstore -> 'ssn'",
                  "pgp_sym_decrypt(pgp_sym_encrypt(ssn, 'k'), 'k')", "regexp_replace(email, 'x', 'y', '')",
                  "attrs -> 'pin'"):
        message = target.refusal("engineer", f"UPDATE public.orders SET status = (SELECT {value} FROM customers c"
                                             " WHERE id = 1) WHERE id = 1")
        assert "into public.orders.status, where they could be read back unmasked" in message, value
    assert "into public.customers.tags" in target.refusal(
        "engineer", "UPDATE public.customers c SET tags = tags || hstore('s', c.ssn) WHERE id = 1")
    assert _upstream(target, "SELECT status FROM orders ORDER BY id") == [("PAID",), ("open",), ("Paid",)]


def test_an_untrusted_extension_in_pg_catalog_is_not_postgresqls_own(
        tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer, test_ca: TLSFiles) -> None:
    """A superuser may install an extension into pg_catalog (`CREATE EXTENSION xml2 SCHEMA pg_catalog`), and
    adminpack and plpgsql live there by default. Its functions were then taken for PostgreSQL's own:
    xpath_table() ran the query it builds from its text arguments, and its `key` column (ssn here) came back
    raw. What an extension the policy does not trust puts in pg_catalog is refused to every analysed role."""
    made = Target(postgres, test_ca, tmp_path_factory.mktemp("hunt_pg_catalog"), SCHEMA + f"""
        CREATE EXTENSION xml2 SCHEMA pg_catalog;
        CREATE VIEW public.keys AS
          SELECT * FROM xpath_table('ssn', 'city', 'customers', '/a', 'true') AS t(key text, a text);
        GRANT SELECT ON public.keys TO {USERS};""")
    try:
        # In a view, where the policy does not look, masking takes it to read every hidden column (it ran
        # there too, and the view's key column came back raw).
        for identity in ("analyst", "engineer"):
            assert "(through pg_catalog.xpath_table())" in made.refusal(identity, "SELECT key FROM keys")
        for identity in ("analyst", "support", "engineer"):
            for sql in ("SELECT * FROM xpath_table('ssn', 'city', 'customers', '/a', 'true') AS t(key text, a text)",
                        "SELECT pg_catalog.xpath_string('<a>x</a>', '/a')"):
                message = made.refusal(identity, sql)
                assert "of extension xml2, which is not trusted" in message, (identity, sql, message)
        # PostgreSQL's own functions there, and a trusted extension's, still work.
        assert made.rows("analyst", "SELECT lower('A'), similarity('ab', 'abc') > 0") == [("a", True)]
    finally:
        made.close()


def test_a_trigger_of_an_untrusted_extension_in_pg_catalog_is_held_by_its_denial(
        tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer, test_ca: TLSFiles) -> None:
    """lo's lo_manage(), installed in pg_catalog, as a trigger: it unlinks large objects, where PostgreSQL's own
    trigger functions change only the row. Held: the name is denied (`lo_*`) wherever it is called from."""
    made = Target(postgres, test_ca, tmp_path_factory.mktemp("hunt_lo"), SCHEMA + f"""
        CREATE EXTENSION lo SCHEMA pg_catalog;
        CREATE TABLE public.scans (id int, raster lo);
        INSERT INTO public.scans VALUES (1, lo_from_bytea(0, 'x'));
        CREATE TRIGGER unlink BEFORE UPDATE OR DELETE ON public.scans FOR EACH ROW EXECUTE FUNCTION lo_manage(raster);
        GRANT ALL ON public.scans TO {data.ENGINEER};""")
    try:
        message = made.refusal("engineer", "DELETE FROM public.scans")
        assert "function lo_manage() is denied" in message and "trigger unlink on public.scans" in message
        assert _upstream(made, "SELECT count(*) FROM pg_largeobject_metadata") == [(1,)]
    finally:
        made.close()
