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
    assert _upstream(target, "SELECT count(*) FROM sly.calls") == [(0,)]
    # Reading the table runs no check.
    assert target.rows(identity, "SELECT id, v FROM holder") == [(5, "init")]
