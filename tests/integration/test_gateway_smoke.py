"""The gateway in front of a real server, with the most common client."""

import psycopg


def test_psycopg_over_tls_reaches_the_target_as_the_roles_login(gateway):
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        row = conn.execute("SELECT current_user, count(*) FROM customers GROUP BY 1").fetchone()
    assert row == ("pgguard_reader", 1200)
