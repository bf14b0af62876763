"""[policy] trusted_extensions and untrusted_extensions, and extension membership as the catalog reads it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from helpers import offline_demo_config
from pgguard.config import ConfigError, load
from pgguard.policy.catalog import Catalog
from pgguard.policy.extensions import BUILT_IN, TrustedExtensions, trusted_extensions
from pgguard.policy.guard import Decision, Policy, SessionGuard


def test_the_built_in_list_is_the_default() -> None:
    assert trusted_extensions({}).names == BUILT_IN
    assert {"citext", "hstore", "pg_trgm", "uuid-ossp", "pgcrypto"} <= BUILT_IN
    assert not {"dblink", "postgres_fdw", "tablefunc", "file_fdw", "pageinspect", "adminpack"} & BUILT_IN


def test_names_are_added_and_taken_off() -> None:
    chosen = trusted_extensions({"trusted_extensions": ["postgis"], "untrusted_extensions": ["pgcrypto"]})
    assert "postgis" in chosen.names and "pgcrypto" not in chosen.names and "citext" in chosen.names


@pytest.mark.parametrize(("table", "expected"), [
    ({"trusted_extensions": ["dblink"]}, "dblink cannot be trusted: it connects to other servers"),
    ({"trusted_extensions": ["tablefunc"]}, "tablefunc cannot be trusted: crosstab()"),
    ({"untrusted_extensions": ["postgis"]}, "postgis is not on the built-in list"),
    ({"trusted_extensions": ["x"], "untrusted_extensions": ["x"]}, "not on the built-in list"),
    ({"trusted_extensions": "citext"}, "must be a list of extension names"),
    ({"trusted_extensions": ["a b"]}, "must be a list of extension names"),
    ({"trust": ["citext"]}, "unknown key(s) trust"),
])
def test_what_the_section_refuses(table: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        trusted_extensions(table)
    assert expected in str(caught.value)


def test_load_checks_the_section(tmp_path: Path) -> None:
    config = offline_demo_config(tmp_path)
    config.write_text('[policy]\ntrusted_extensions = ["plpython3u"]\n' + config.read_text())
    with pytest.raises(ConfigError, match="plpython3u cannot be trusted"):
        load(config)
    config.write_text(config.read_text().replace('"plpython3u"', '"postgis"'))
    assert "postgis" in Policy(load(config)).extensions.names


def test_members_that_keep_their_argument_are_not_trusted() -> None:
    trusted = TrustedExtensions(BUILT_IN)
    assert trusted.trusts("pg_trgm", "public.similarity")
    assert not trusted.trusts("pg_trgm", "public.set_limit")
    assert not trusted.trusts("isn", "isn_weak")
    assert not trusted.trusts("", "public.similarity")


ROUTINES = [
    # kind, schema, name, function schema, function, language, returns set, definition, its extension, the function's
    ["f", "public", "similarity", "public", "similarity", "c", "f", None, "pg_trgm", "pg_trgm"],
    ["f", "public", "similarity", "public", "similarity", "sql", "f", "CREATE FUNCTION …", None, None],
    ["f", "public", "levenshtein", "public", "levenshtein", "c", "f", None, "fuzzystrmatch", "fuzzystrmatch"],
    ["f", "public", "replaced", "public", "replaced", "plpgsql", "f", "CREATE FUNCTION …", "citext", "citext"],
    ["o", "public", "=", "public", "citext_eq", "c", "f", None, "citext", "citext"],
    ["o", "public", "->", "public", "fetchval", "c", "f", None, "hstore", "citext"],
    ["o", "public", "~~", "pg_catalog", "textlike", "internal", "f", None, "citext", None],
]


def test_membership_is_per_object_of_a_name() -> None:
    """A name is trusted only when every object of it is a trusted extension's own code."""
    members = Catalog.from_rows([]).with_routines(ROUTINES).members
    trusted = TrustedExtensions(BUILT_IN)
    assert members[("f", "public.similarity")] == {"pg_trgm", ""}
    assert not trusted.trusts_all(members[("f", "public.similarity")], "public.similarity")
    assert trusted.trusts_all(members[("f", "public.levenshtein")], "public.levenshtein")
    assert members[("f", "public.replaced")] == {""}  # a member in PL/pgSQL is not the extension's C code
    assert trusted.trusts_all(members[("o", "public.=")], "public.=")
    assert members[("o", "public.->")] == {""}  # its function is another extension's
    assert members[("o", "public.~~")] == {"citext"}  # PostgreSQL's own function
    assert not trusted.trusts_all(None, "public.unknown")


def test_a_default_that_calls_an_extensions_function_writes_nothing_only_where_it_is_trusted(tmp_path: Path) -> None:
    """Reaches are the snapshot's, trust is the policy's: the guard checks each extension call per session."""
    catalog = Catalog.from_rows(
        [("s", "pg_catalog", ""), ("s", "public", ""), ("r", "pg_catalog", "pg_class"),
         ("f", "public", "uuid_generate_v4")]
    ).with_routines([["f", "public", "uuid_generate_v4", "public", "uuid_generate_v4", "c", "f", None,
                      "uuid-ossp", "uuid-ossp"]]
                    ).with_reaches([], [], [], [], [["public", "things", "default", "id", "public.uuid_generate_v4()"]])
    (reach,) = catalog.reaches["public.things"]
    assert reach.writes == () and reach.extension_calls == {("public.uuid_generate_v4", "uuid-ossp")}
    assert catalog.writes_further == frozenset()
    policy = Policy(load(offline_demo_config(tmp_path)))
    # A role that may write every table, with the demo engineers' approval rules (UPDATE or DELETE of orders).
    policy.scopes["everywhere"] = replace(policy.scopes["engineering"], role="everywhere", write=("*",))

    def decide(role: str, sql: str) -> Decision:
        return SessionGuard(policy, [role], "pgguard_engineer", lambda: catalog).check_query(sql)[-1]

    assert decide("engineering", "INSERT INTO things (label) VALUES ('x')").allowed
    assert decide("everywhere", "UPDATE things SET label = 'y'").approval is None
    policy.extensions = TrustedExtensions(BUILT_IN - {"uuid-ossp"})
    refused = decide("engineering", "INSERT INTO things (label) VALUES ('x')")
    assert not refused.allowed and "calls public.uuid_generate_v4() of extension uuid-ossp, not trusted" in refused.reason
    # What an untrusted extension's function writes pgguard cannot tell: it may write public.orders.
    assert decide("everywhere", "UPDATE things SET label = 'y'").approval is not None
