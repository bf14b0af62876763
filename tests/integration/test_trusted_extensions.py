"""Extensions installed in `public` (citext, hstore, pg_trgm, fuzzystrmatch, uuid-ossp, pgcrypto), through the gateway.

Each database here is a fresh one on the shared server with the extensions in `public`, as most real
databases have them, and tables named as the demo's config masks: `customers.email` is a citext
column masked with the email function, `customers.ssn` is redacted, `customers.attrs` (hstore) too.
With the extensions there, `=` between two texts may be citext's: before, every statement with an
operator was refused to every analysed role. Now the extensions' functions, operators and casts
count as PostgreSQL's own, found by their membership in the catalog (pg_depend), so reads that touch
no hidden column work for every role; what they compute from a hidden column is NULL for lax roles
and refused to strict ones, as for PostgreSQL's own functions; and functions that only share a name
with an extension's, or belong to an extension that is not trusted (tablefunc), stay refused.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from conftest import start_gateway, stop_gateway
from pgguard.demo import data
from helpers import psql
from test_masking_attacks import AsyncSession, refused_message

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway, TLSFiles

EXTENSIONS = ("citext", "hstore", "pg_trgm", "fuzzystrmatch", "uuid-ossp", "pgcrypto", "tablefunc")

SCHEMA = f"""
{''.join(f'CREATE EXTENSION "{name}";' for name in EXTENSIONS)}
CREATE TABLE public.customers (id int PRIMARY KEY, full_name citext, email citext, ssn text, city text,
                               attrs hstore, tags hstore);
INSERT INTO public.customers VALUES
  (1, 'Ann Lee', 'Ann.Lee@Example.com', '444-07-2101', 'Oslo', 'pin=>1234', 'a=>1, b=>2'),
  (2, 'Bob Roe', 'bob@example.net', '555-01-0001', 'Rome', 'pin=>9876', 'a=>3');
CREATE TABLE public.orders (id int PRIMARY KEY, customer_id int, status citext);
INSERT INTO public.orders VALUES (1, 1, 'PAID'), (2, 1, 'open'), (3, 2, 'Paid');
CREATE TABLE public.things (id uuid DEFAULT uuid_generate_v4() PRIMARY KEY, label text);
GRANT USAGE ON SCHEMA public TO {data.READER}, {data.SUPPORT}, {data.ENGINEER};
GRANT SELECT ON ALL TABLES IN SCHEMA public TO {data.READER};
GRANT SELECT ON public.customers, public.orders TO {data.SUPPORT};
GRANT ALL ON ALL TABLES IN SCHEMA public TO {data.ENGINEER};
"""

# Objects that share a name with an extension's, but belong to no extension: made before the gateway
# reads the catalog.
SHADOWS = """
CREATE FUNCTION public.similarity(a int, b int) RETURNS real LANGUAGE sql AS 'SELECT 1::real';
CREATE FUNCTION public.lower(v citext) RETURNS text LANGUAGE sql AS 'SELECT ssn FROM public.customers LIMIT 1';
CREATE SCHEMA other;
GRANT USAGE ON SCHEMA other TO {users};
CREATE FUNCTION other.levenshtein(a text, b text) RETURNS int LANGUAGE sql
  AS 'SELECT length(ssn) FROM public.customers LIMIT 1';
CREATE FUNCTION public.citext_int_eq(a citext, b int) RETURNS bool LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR public.= (LEFTARG = citext, RIGHTARG = int, FUNCTION = public.citext_int_eq);
CREATE FUNCTION public.trgm_note(t text) RETURNS text LANGUAGE sql AS 'SELECT t';
ALTER FUNCTION public.trgm_note(text) OWNER TO {engineer};
ALTER EXTENSION pg_trgm ADD FUNCTION public.trgm_note(text);
"""

IDENTITIES = ("analyst", "agent", "support", "engineer")
STRICT = ("analyst", "agent")


def _retarget(database: str, extra: str = "") -> Callable[[str], str]:
    """The demo's config aimed at `database`, with `customers.attrs` masked too, and `extra` TOML."""
    def edit(text: str) -> str:
        text = text.replace(f"[targets.{data.DATABASE}", f"[targets.{database}")
        text = text.replace(f'dbname = "{data.DATABASE}"', f'dbname = "{database}"')
        text = text.replace('"public.customers.ssn" = "redact"',
                            '"public.customers.ssn" = "redact"\n"public.customers.attrs" = "redact"')
        return extra + "\n" + text
    return edit


class Target:
    """A database with the extensions in `public`, and a gateway in front of it."""

    def __init__(self, postgres: PostgresServer, test_ca: TLSFiles, directory: Path, setup: str,
                 extra: str = "") -> None:
        self.postgres = postgres
        self.name = f"ext_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.name}")
        with psycopg.connect(postgres.dsn(self.name), autocommit=True) as conn:
            conn.execute(setup)
        self.gateway: RunningGateway = start_gateway(directory, postgres, test_ca, _retarget(self.name, extra))

    def dsn(self, identity: str) -> str:
        return self.gateway.dsn(identity, dbname=self.name)

    def rows(self, identity: str, sql: str, *, binary: bool = False) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn(identity), autocommit=True) as conn:
            return conn.cursor(binary=binary).execute(sql).fetchall()

    def refusal(self, identity: str, sql: str) -> str:
        with psycopg.connect(self.dsn(identity), autocommit=True) as conn:
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(sql).fetchall()
        return refused_message(caught.value)

    def close(self) -> None:
        stop_gateway(self.gateway)
        with psycopg.connect(self.postgres.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer, test_ca: TLSFiles) -> Iterator[Target]:
    made = Target(postgres, test_ca, tmp_path_factory.mktemp("extensions"), SCHEMA)
    yield made
    made.close()


@pytest.fixture(scope="module")
def shadowed(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer,
             test_ca: TLSFiles) -> Iterator[Target]:
    users = ", ".join((data.READER, data.SUPPORT, data.ENGINEER))
    made = Target(postgres, test_ca, tmp_path_factory.mktemp("shadowed"),
                  SCHEMA + SHADOWS.format(users=users, engineer=data.ENGINEER))
    yield made
    made.close()


# -- reads that touch no hidden column just work ---------------------------------------------------

READS = {
    "SELECT 1 = 1": [(True,)],
    "SELECT 'abc'::citext = 'ABC'": [(True,)],
    "SELECT id FROM orders WHERE status = 'paid' ORDER BY id": [(1,), (3,)],
    "SELECT id FROM orders WHERE status LIKE 'pa%' ORDER BY id": [(1,), (3,)],
    "SELECT status FROM orders ORDER BY status, id": [("open",), ("PAID",), ("Paid",)],
    "SELECT count(*) FROM orders o JOIN orders p ON o.status = p.status": [(5,)],
    "SELECT lower(status) FROM orders ORDER BY id": [("paid",), ("open",), ("paid",)],
    "SELECT strpos(status, 'I') FROM orders ORDER BY id": [(3,), (0,), (3,)],
    "SELECT tags -> 'a' FROM customers ORDER BY id": [("1",), ("3",)],
    "SELECT id FROM customers WHERE tags ? 'b'": [(1,)],
    "SELECT (each(tags)).key FROM customers WHERE id = 1 ORDER BY 1": [("a",), ("b",)],
    "SELECT round(similarity(full_name, 'Ann Le')::numeric, 2)::text FROM customers ORDER BY id": [("0.67",), ("0.00",)],
    "SELECT id FROM customers WHERE full_name % 'Ann Le'": [(1,)],
    "SELECT levenshtein(city, 'Olso'), soundex(city) FROM customers ORDER BY id": [(2, "O240"), (4, "R500")],
    "SELECT encode(digest('x', 'sha1'), 'hex')": [("11f6ad8ec52a2984abaafd7c3b516503785c2072",)],
    "SELECT uuid_generate_v4() <> gen_random_uuid()": [(True,)],
}


@pytest.mark.parametrize("identity", IDENTITIES)
def test_reads_that_touch_no_hidden_column_work(target: Target, identity: str) -> None:
    """Before, each of these was refused: `user-defined operator public.= is not listed as safe`."""
    for sql, expected in READS.items():
        assert target.rows(identity, sql) == expected, sql


def test_a_masked_citext_column_gets_its_function_not_null(target: Target) -> None:
    """citext's values are text's on the wire: the email function masks them, in text and binary (which
    psycopg hands over as bytes, not knowing the type)."""
    def emails(identity: str, binary: bool) -> list[str]:
        found = target.rows(identity, "SELECT email FROM customers ORDER BY id", binary=binary)
        return [value.decode() if isinstance(value, bytes) else value for value, in found]

    for binary in (False, True):
        for identity in STRICT + ("engineer",):
            assert emails(identity, binary) == ["***@Example.com", "***@example.net"]
        assert emails("support", binary) == ["Ann.Lee@Example.com", "bob@example.net"]


def test_copy_of_a_masked_citext_column(target: Target) -> None:
    with psycopg.connect(target.dsn("analyst"), autocommit=True) as conn:
        with conn.cursor().copy("COPY (SELECT id, email FROM customers ORDER BY id) TO STDOUT") as copy:
            copied = b"".join(bytes(chunk) for chunk in copy)
        with conn.cursor().copy("COPY customers (id, email) TO STDOUT") as copy:
            table = b"".join(bytes(chunk) for chunk in copy)
    assert copied == b"1\t***@Example.com\n2\t***@example.net\n"
    assert sorted(table.splitlines()) == [b"1\t***@Example.com", b"2\t***@example.net"]


# -- an extension's function over a hidden column ---------------------------------------------------

COMPUTED = {
    "SELECT similarity(email, 'a@b.c') FROM customers": "similarity()",
    "SELECT citext_larger(email, 'zzz') FROM customers": "citext_larger()",
    "SELECT hstore('e', email::text) FROM customers": "hstore()",
    "SELECT attrs -> 'pin' FROM customers": "operator ->",
    "SELECT levenshtein(ssn, '444-07-2101') FROM customers": "levenshtein()",
    "SELECT encode(digest(ssn, 'sha1'), 'hex') FROM customers": "digest()",
}


@pytest.mark.parametrize("identity", STRICT)
def test_strict_roles_may_not_compute_with_a_hidden_column_through_an_extension(target: Target,
                                                                              identity: str) -> None:
    """Each is an oracle on the value (`similarity(email, guess)` grows as the guess nears it), as
    PostgreSQL's own functions are: refused, naming what it does."""
    for sql, doing in COMPUTED.items():
        message = target.refusal(identity, sql)
        assert "computes with public.customers." in message and f"({doing})" in message, (sql, message)
    for sql in ("SELECT id FROM customers WHERE email = 'ann.lee@example.com'",
                "SELECT id FROM customers WHERE email LIKE 'ann%'",
                "SELECT id FROM customers WHERE attrs ? 'pin'",
                "SELECT id FROM customers ORDER BY email",
                "SELECT (each(attrs)).value FROM customers"):
        assert "filters, groups, joins or sorts on public.customers." in target.refusal(identity, sql), sql
    # What the rules let a hidden text through, a hidden citext passes too (NULL: computed from it).
    assert target.rows(identity, "SELECT lower(email), length(email) FROM customers ORDER BY id") == \
        [(None, None), (None, None)]


def test_lax_roles_get_null_for_what_an_extension_computes_from_a_hidden_column(target: Target) -> None:
    for sql in COMPUTED:
        assert all(value is None for value, in target.rows("engineer", sql)), sql
    # Filters are the lax role's to make, as with PostgreSQL's own operators.
    assert target.rows("engineer", "SELECT id FROM customers WHERE email = 'ann.lee@example.com'") == [(1,)]
    assert target.rows("engineer", "SELECT id FROM customers WHERE attrs ? 'pin' ORDER BY id") == [(1,), (2,)]


def test_a_default_that_calls_a_trusted_extension_leaves_the_table_writable(target: Target) -> None:
    """uuid_generate_v4() as a column default: before, only a role that may write every table could insert."""
    with psycopg.connect(target.dsn("engineer"), autocommit=True) as conn:
        inserted = conn.execute("INSERT INTO things (label) VALUES ('x') RETURNING id").fetchone()
    assert inserted is not None and isinstance(inserted[0], uuid.UUID)
    assert "may not write" in target.refusal("analyst", "INSERT INTO things (label) VALUES ('y')")


# -- what stays refused ------------------------------------------------------------------------------

@pytest.mark.parametrize("identity", IDENTITIES)
def test_an_untrusted_extension_stays_user_defined(target: Target, identity: str) -> None:
    """tablefunc's crosstab() runs the SQL text it is given, which masking cannot follow."""
    message = target.refusal(identity, "SELECT * FROM crosstab('SELECT city, city, ssn FROM customers')"
                                       " AS t(city text, ssn text)")
    assert "user-defined function public.crosstab() is not listed as safe" in message


def test_set_limit_keeps_its_argument_and_stays_user_defined(target: Target) -> None:
    """pg_trgm's set_limit(x) keeps x where show_limit() reads it back, as set_config() does."""
    assert "public.set_limit() is not listed as safe" in target.refusal("engineer", "SELECT set_limit(0.5)")
    assert target.rows("engineer", "SELECT show_limit() > 0") == [(True,)]


@pytest.mark.parametrize("identity", ("analyst", "engineer"))
def test_a_function_beside_an_extensions_keeps_its_name_user_defined(shadowed: Target, identity: str) -> None:
    """Membership comes from pg_depend, not from names: a user's overload of an extension's function,
    a user's operator `=` beside citext's, and a function named as an extension's in another schema
    on the search path are user-defined, and every use of the name counts as theirs."""
    assert "user-defined function public.similarity() is not listed as safe" in \
        shadowed.refusal(identity, "SELECT similarity('ab', 'abc')")
    assert "user-defined operator public.= is not listed as safe" in shadowed.refusal(identity, "SELECT 1 = 1")
    assert "user-defined function public.lower() is not listed as safe" in \
        shadowed.refusal(identity, "SELECT lower(city) FROM customers")
    with psycopg.connect(shadowed.dsn(identity), autocommit=True) as conn:
        conn.execute("SET search_path = other, public")
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("SELECT levenshtein('a', 'b')")
        assert "user-defined function other.levenshtein() is not listed as safe" in refused_message(caught.value)
        conn.execute("SELECT 1")  # the session stays usable
    # The extension's own, named with its schema, is still the extension's.
    assert shadowed.rows(identity, "SELECT public.levenshtein('a', 'b'), public.soundex('Oslo')") == [(1, "O240")]


def test_untrusted_extensions_takes_one_off_the_list(tmp_path: Path, postgres: PostgresServer,
                                                     test_ca: TLSFiles) -> None:
    made = Target(postgres, test_ca, tmp_path, SCHEMA, '[policy]\nuntrusted_extensions = ["pg_trgm", "uuid-ossp"]\n')
    try:
        assert "user-defined function public.similarity() is not listed as safe" in \
            made.refusal("analyst", "SELECT similarity('ab', 'abc')")
        assert made.rows("analyst", "SELECT id FROM orders WHERE status = 'open'") == [(2,)]  # citext still trusted
        # A default that calls an untrusted extension's C function: pgguard cannot tell what it writes.
        message = made.refusal("engineer", "INSERT INTO things (label) VALUES ('x')")
        assert "calls public.uuid_generate_v4() of extension uuid-ossp, not trusted" in message
        assert "only a role that may write every table may set it off" in message
    finally:
        made.close()


def test_check_prints_the_trusted_extensions_and_refuses_one_that_cannot_be(target: Target, tmp_path: Path) -> None:
    def check(config: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pgguard.cli", "check", "-c", str(config)],
                              capture_output=True, text=True, timeout=60, check=False)

    result = check(target.gateway.config_path)
    assert result.returncode == 0, result.stderr
    assert "extensions whose functions count as PostgreSQL's own: btree_gin, btree_gist, citext, cube," \
           " fuzzystrmatch, hstore, intarray, isn, ltree, pg_trgm, pgcrypto, unaccent, uuid-ossp\n" in result.stdout
    config = tmp_path / "pgguard.toml"
    config.write_text('[policy]\ntrusted_extensions = ["dblink"]\n' + target.gateway.config_path.read_text())
    result = check(config)
    assert result.returncode == 2 and result.stdout == ""
    assert "[policy] trusted_extensions: dblink cannot be trusted" in result.stderr


@pytest.mark.parametrize("identity", ("analyst", "engineer"))
def test_a_function_added_to_an_extension_stays_its_owners(shadowed: Target, identity: str) -> None:
    """ALTER EXTENSION … ADD makes a function a member (pg_depend), but it keeps its owner: the extension's
    owner, who may be a database owner that installed it, cannot make its own functions trusted this way."""
    assert "user-defined function public.trgm_note() is not listed as safe" in \
        shadowed.refusal(identity, "SELECT trgm_note('x')")
    assert shadowed.rows(identity, "SELECT word_similarity('ab', 'abc') > 0") == [(True,)]



def test_asyncpg_and_psql(target: Target) -> None:
    """asyncpg looks citext up in the catalog (its introspection query, through the gateway) before it
    decodes a column of it, and binds parameters; psql sends the simple protocol."""
    session = AsyncSession(target.dsn("agent"))
    try:
        rows = session.run(session.conn.fetch(
            "SELECT o.id, c.email, o.status FROM customers c JOIN orders o ON o.customer_id = c.id"
            " WHERE o.status = $1 ORDER BY o.id", "paid"))
    finally:
        session.close()
    assert [tuple(row) for row in rows] == [(1, "***@Example.com", "PAID"), (3, "***@example.net", "Paid")]
    assert psql(target.dsn("analyst"), "SELECT count(*) FROM orders WHERE status = 'PAID'").split("\n")[2].strip() == "2"
