"""Just-in-time approval through the real gateway: psql, psycopg, the CLI, the API and the webhook.

Every test deletes an order row of its own, inserted over a direct connection
(and removed afterwards if it survived), so the shared demo data is left as
it was.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from conftest import start_gateway, stop_gateway
from pgguard.audit.verify import read_records
from pgguard.config import load
from pgguard.identity.tokens import TokenService
from pgguard.wire import backend, frontend
from rawclient import RawConnection, config_edit, craft_token, login_as

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway, TLSFiles

DELETE = "DELETE FROM orders WHERE id = {}"
WAIT = 30.0


class Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def webhook() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer, test_ca: TLSFiles,
       webhook: str) -> Iterator[RunningGateway]:
    """The demo's configuration, telling the test's webhook."""
    running = start_gateway(tmp_path_factory.mktemp("approvals"), postgres, test_ca,
                            config_edit({"approvals": {"webhook_url": webhook}}))
    yield running
    stop_gateway(running)


def admin(gateway: RunningGateway) -> str:
    listen = load(gateway.config_path).gateway.admin_listen
    assert listen is not None
    return f"http://{listen.host}:{listen.port}"


def api(gateway: RunningGateway, path: str, token: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(admin(gateway) + path, method="GET" if body is None else "POST",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def cli(gateway: RunningGateway, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgguard.cli", "approvals", *args, "--admin", admin(gateway)],
                          capture_output=True, text=True, timeout=60,
                          env={"PGGUARD_TOKEN": token, "PATH": "/usr/bin:/bin"})


def held_gauge(gateway: RunningGateway) -> int:
    """/metrics' count of statements waiting for an approver."""
    with urllib.request.urlopen(admin(gateway) + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("pgguard_held_requests ")))


def token(gateway: RunningGateway, name: str) -> str:
    return gateway.identities[name].token


def pending(gateway: RunningGateway, sql: str, *, besides: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    """The pending request for `sql` (other than `besides`), once it shows up."""
    deadline = time.monotonic() + WAIT
    while True:
        status, answer = api(gateway, "/api/approvals", token(gateway, "dba"))
        assert status == 200, answer
        for request in answer["pending"]:
            if request["sql"] == sql and request["id"] not in besides:
                return request
        assert time.monotonic() < deadline, f"no pending request for {sql!r}: {answer}"
        time.sleep(0.05)


@contextmanager
def order(postgres: PostgresServer) -> Iterator[int]:
    """An order row of the test's own."""
    number = 10_000_000 + uuid.uuid4().int % 1_000_000_000
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute("INSERT INTO orders (id, customer_id, total, status, created_at) "
                     "SELECT %s, 1, 1.00, 'pending', now()", (number,))
    try:
        yield number
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute("DELETE FROM orders WHERE id = %s", (number,))


def exists(postgres: PostgresServer, number: int) -> bool:
    with psycopg.connect(postgres.dsn()) as conn:
        return conn.execute("SELECT count(*) FROM orders WHERE id = %s", (number,)).fetchone() == (1,)


class Background:
    """A client call in a thread of its own: held statements block their caller."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.result = call()
        except BaseException as exc:  # handed to the test
            self.error = exc

    def join(self) -> Any:
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the client is still waiting"
        return self.result

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()


def engineer_execute(gateway: RunningGateway, sql: str, params: tuple[Any, ...] | None = None,
                     notices: list[str] | None = None) -> Background:
    def call() -> str:
        with psycopg.connect(gateway.dsn("engineer"), autocommit=True) as conn:
            if notices is not None:
                conn.add_notice_handler(lambda diagnostic: notices.append(diagnostic.message_primary or ""))
            cursor = conn.execute(sql, params)
            return cursor.statusmessage or ""
    return Background(call)


# -- the flow ---------------------------------------------------------------------------


def test_psql_delete_is_held_until_the_dba_approves_it_with_the_cli(gw: RunningGateway,
                                                                     postgres: PostgresServer) -> None:
    with order(postgres) as number:
        sql = DELETE.format(number)
        env = {"PATH": "/usr/bin:/bin", "PGPASSWORD": token(gw, "engineer"), "LC_ALL": "C.UTF-8"}
        psql = subprocess.Popen(["psql", gw.dsn("engineer"), "-X", "-v", "ON_ERROR_STOP=1", "-c", sql],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        request = pending(gw, sql)
        assert request["requester"] == gw.identities["engineer"].user
        assert request["rule"] == "roles.engineering.approval[1]"
        assert exists(postgres, number)  # still waiting
        listed = cli(gw, token(gw, "dba"), "list")
        assert request["id"] in listed.stdout and sql in listed.stdout
        approved = cli(gw, token(gw, "dba"), "approve", request["id"])
        assert approved.returncode == 0, approved.stderr
        out, err = psql.communicate(timeout=WAIT)
        assert psql.returncode == 0, err
        assert out.strip() == "DELETE 1"
        assert f"request {request['id']}" in err and f"pgguard approvals approve {request['id']}" in err
        assert f"{admin(gw)}/approvals/ui" in err
        assert not exists(postgres, number)


def test_psycopg_delete_with_a_parameter_is_held_and_released(gw: RunningGateway, postgres: PostgresServer) -> None:
    with order(postgres) as number:
        notices: list[str] = []
        client = engineer_execute(gw, "DELETE FROM orders WHERE id = %s", (number,), notices)
        request = pending(gw, "DELETE FROM orders WHERE id = $1")
        assert request["parameters"] == [str(number)] and request["protocol"] == "extended"
        assert held_gauge(gw) >= 1
        status, answer = api(gw, f"/api/approvals/{request['id']}/approve", token(gw, "dba"), {})
        assert status == 200 and answer["status"] == "approved", answer
        assert client.join() == "DELETE 1"
        assert any(request["id"] in notice for notice in notices), notices
        assert not exists(postgres, number)


def test_a_denial_fails_the_statement_with_42501_naming_the_dba(gw: RunningGateway,
                                                                postgres: PostgresServer) -> None:
    with order(postgres) as number:
        sql = DELETE.format(number)
        client = engineer_execute(gw, sql)
        request = pending(gw, sql)
        denied = cli(gw, token(gw, "dba"), "deny", request["id"], "--reason", "change freeze")
        assert denied.returncode == 0, denied.stderr
        client.join()
        assert isinstance(client.error, psycopg.errors.InsufficientPrivilege)
        dba = gw.identities["dba"].user
        assert f"denied by {dba}: change freeze" in str(client.error)
        assert exists(postgres, number)


def test_reads_are_never_held(gw: RunningGateway) -> None:
    client = engineer_execute(gw, "SELECT count(*) FROM orders WHERE id = 1")
    client.join()
    assert client.error is None and client.result == "SELECT 1"


def test_the_webhook_hears_the_request_and_the_decision(gw: RunningGateway, postgres: PostgresServer) -> None:
    with order(postgres) as number:
        sql = DELETE.format(number)
        client = engineer_execute(gw, sql)
        request = pending(gw, sql)
        api(gw, f"/api/approvals/{request['id']}/deny", token(gw, "dba"), {"reason": "no"})
        client.join()
        deadline = time.monotonic() + WAIT
        while len([m for m in Hook.received if m["request"]["id"] == request["id"]]) < 2:
            assert time.monotonic() < deadline, Hook.received
            time.sleep(0.05)
        told = [m for m in Hook.received if m["request"]["id"] == request["id"]]
        assert sql in told[0]["text"] and told[0]["request"]["status"] == "pending"
        assert "denied by" in told[1]["text"] and told[1]["request"]["status"] == "denied"


def logged(gateway: RunningGateway, sql: str, request_id: str, events: int) -> tuple[Any, list[Any], list[Any]]:
    """The held statement's record, its request's approval records and its results, once all are written."""
    sessions = load(gateway.config_path).gateway.session_dir
    deadline = time.monotonic() + WAIT
    while True:
        for path in sessions.glob("*.pgglog"):
            records = [entry.record for entry in read_records(path)]
            held = [r for r in records if r["type"] == "statement" and r["sql"] == sql]
            approvals = [r for r in records if r["type"] == "approval" and r["request"] == request_id]
            results = [r for r in records if r["type"] == "result" and held and r["statement"] == held[0]["seq"]]
            if held and len(approvals) == events and results:
                assert held[0]["decision"] == "held" and request_id in held[0]["reason"]
                assert all(a["statement"] == held[0]["seq"] for a in approvals)
                return held[0], approvals, results
        assert time.monotonic() < deadline, "no session log with the held statement"
        time.sleep(0.1)


@pytest.mark.parametrize("decision", ["approve", "deny", "cancel"])
def test_the_session_log_records_the_hold_and_its_outcome(gw: RunningGateway, postgres: PostgresServer,
                                                          decision: str) -> None:
    with order(postgres) as number, psycopg.connect(gw.dsn("engineer"), autocommit=True) as conn:
        sql = DELETE.format(number)
        client = Background(lambda: conn.execute(sql))
        request = pending(gw, sql)
        if decision == "cancel":
            conn.cancel_safe()
        else:
            api(gw, f"/api/approvals/{request['id']}/{decision}", token(gw, "dba"), {"reason": "logged"})
        client.join()
    held, approvals, results = logged(gw, sql, request["id"], 2)
    assert held["rule"] == "roles.engineering.approval[1]"
    dba = gw.identities["dba"].user
    expected = {"approve": ("approved", dba, None), "deny": ("denied", dba, "logged"),
                "cancel": ("cancelled", None, "the client cancelled the statement")}[decision]
    assert [(a["event"], a["by"], a["reason"]) for a in approvals] == [("requested", None, None), expected]
    if decision == "approve":
        assert results[0]["command_tag"] == "DELETE 1" and results[0]["error"] is None
    else:
        assert results[0]["error"]["sqlstate"] == ("57014" if decision == "cancel" else "42501")


# -- adversarial -----------------------------------------------------------------------------


def test_an_approval_releases_only_its_own_request(gw: RunningGateway, postgres: PostgresServer) -> None:
    with order(postgres) as first, order(postgres) as second:
        one = engineer_execute(gw, DELETE.format(first))
        other = engineer_execute(gw, DELETE.format(second))
        request = pending(gw, DELETE.format(first))
        other_request = pending(gw, DELETE.format(second))
        api(gw, f"/api/approvals/{request['id']}/approve", token(gw, "dba"), {})
        assert one.join() == "DELETE 1"
        assert not exists(postgres, first)
        assert exists(postgres, second) and not other.done
        status, still = api(gw, f"/api/approvals/{other_request['id']}", token(gw, "dba"))
        assert status == 200 and still["status"] == "pending"
        api(gw, f"/api/approvals/{other_request['id']}/deny", token(gw, "dba"), {})
        other.join()
        assert exists(postgres, second)


def test_an_approval_is_used_once_and_binds_the_parameters(gw: RunningGateway, postgres: PostgresServer) -> None:
    with order(postgres) as first, order(postgres) as second:
        with psycopg.connect(gw.dsn("engineer"), autocommit=True) as conn:
            ids: set[str] = set()
            for number, decision in ((first, "approve"), (first, "deny"), (second, "deny")):
                client = Background(lambda n=number: conn.execute("DELETE FROM orders WHERE id = %s", (n,)))
                request = pending(gw, "DELETE FROM orders WHERE id = $1", besides=ids)
                ids.add(request["id"])
                assert request["parameters"] == [str(number)]
                api(gw, f"/api/approvals/{request['id']}/{decision}", token(gw, "dba"), {})
                client.join()
                assert (client.error is None) == (decision == "approve")
        # The same statement, sent again, and the same SQL with another parameter, each waited anew.
        assert len(ids) == 3
        assert not exists(postgres, first) and exists(postgres, second)


@pytest.mark.parametrize("who", ["engineer", "analyst", "expired", "garbage"])
def test_the_api_refuses_tokens_that_are_not_an_approvers(gw: RunningGateway, postgres: PostgresServer,
                                                         who: str) -> None:
    with order(postgres) as number:
        sql = DELETE.format(number)
        client = engineer_execute(gw, sql)
        request = pending(gw, sql)
        dba = gw.identities["dba"].user
        bad = {"engineer": token(gw, "engineer"), "analyst": token(gw, "analyst"), "garbage": "not-a-token",
               "expired": craft_token(gw, sub=dba, groups=["dba"], iat=int(time.time()) - 7200,
                                      nbf=int(time.time()) - 7200, exp=int(time.time()) - 3600)}[who]
        status, answer = api(gw, f"/api/approvals/{request['id']}/approve", bad, {})
        assert status == (403 if who in ("engineer", "analyst") else 401), answer
        assert api(gw, "/api/approvals", bad)[0] in (401, 403)
        assert cli(gw, bad, "approve", request["id"]).returncode == 1
        assert not client.done and exists(postgres, number)
        api(gw, f"/api/approvals/{request['id']}/deny", token(gw, "dba"), {})
        client.join()
        assert exists(postgres, number)


def test_a_held_statement_in_a_pipeline_holds_the_batch_and_a_denial_commits_nothing(
        gw: RunningGateway, postgres: PostgresServer) -> None:
    table = f"scratch_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE public.{table} (id int)")
        conn.execute(f"ALTER TABLE public.{table} OWNER TO pgguard_engineer")
    try:
        with order(postgres) as number:
            def batch() -> None:
                with psycopg.connect(gw.dsn("engineer"), autocommit=True) as conn:
                    with conn.pipeline() as pipeline:
                        conn.execute(f"INSERT INTO {table} (id) VALUES (1)")
                        conn.execute("DELETE FROM orders WHERE id = %s", (number,))
                        conn.execute(f"INSERT INTO {table} (id) VALUES (2)")
                        pipeline.sync()
            client = Background(batch)
            request = pending(gw, "DELETE FROM orders WHERE id = $1")
            assert request["parameters"] == [str(number)]
            api(gw, f"/api/approvals/{request['id']}/deny", token(gw, "dba"), {"reason": "batch"})
            client.join()
            assert isinstance(client.error, psycopg.errors.InsufficientPrivilege), client.error
            assert exists(postgres, number)
        with psycopg.connect(postgres.dsn()) as conn:
            assert conn.execute(f"SELECT count(*) FROM public.{table}").fetchone() == (0,)
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS public.{table}")


def test_cancelling_a_held_statement_withdraws_its_request(gw: RunningGateway, postgres: PostgresServer) -> None:
    with order(postgres) as number:
        sql = DELETE.format(number)
        with psycopg.connect(gw.dsn("engineer"), autocommit=True) as conn:
            client = Background(lambda: conn.execute(sql))
            request = pending(gw, sql)
            conn.cancel_safe()
            client.join()
            assert isinstance(client.error, psycopg.errors.QueryCanceled), client.error
            assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on
        status, answer = api(gw, f"/api/approvals/{request['id']}", token(gw, "dba"))
        assert answer["status"] == "cancelled"
        assert api(gw, f"/api/approvals/{request['id']}/approve", token(gw, "dba"), {})[0] == 409
        assert exists(postgres, number)


def test_a_client_that_leaves_withdraws_its_request(gw: RunningGateway, postgres: PostgresServer) -> None:
    with order(postgres) as number:
        sql = DELETE.format(number)
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
        psql = subprocess.Popen(["psql", gw.dsn("engineer"), "-X", "-c", sql], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        request = pending(gw, sql)
        psql.kill()
        psql.wait()
        deadline = time.monotonic() + WAIT
        while api(gw, f"/api/approvals/{request['id']}", token(gw, "dba"))[1]["status"] == "pending":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert api(gw, f"/api/approvals/{request['id']}", token(gw, "dba"))[1]["status"] == "cancelled"
        assert exists(postgres, number)


def test_a_grant_lets_the_same_rule_run_and_nothing_else(gw: RunningGateway, postgres: PostgresServer) -> None:
    subject = f"eng-{uuid.uuid4().hex[:8]}"  # a grant of its own, so other tests still see holds
    engineer = TokenService(load(gw.config_path).identity).issue(subject, ["engineering"], 600)
    dsn = gw.dsn("engineer", user=subject, token=engineer)
    with order(postgres) as first, order(postgres) as second, psycopg.connect(dsn, autocommit=True) as conn:
        client = Background(lambda: conn.execute(DELETE.format(first)))
        request = pending(gw, DELETE.format(first))
        approved = cli(gw, token(gw, "dba"), "approve", request["id"], "--grant", "30m")
        assert approved.returncode == 0, approved.stderr
        client.join()
        _, approvals, _ = logged(gw, DELETE.format(first), request["id"], 3)
        assert [a["event"] for a in approvals] == ["requested", "approved", "granted"]
        assert approvals[2]["reason"] == "roles.engineering.approval[1]"
        assert 0 < approvals[2]["until"] - approvals[2]["at"] <= 1800
        assert conn.execute(DELETE.format(second)).statusmessage == "DELETE 1"  # not held
        ddl = Background(lambda: conn.execute("COMMENT ON TABLE orders IS NULL"))
        other = pending(gw, "COMMENT ON TABLE orders IS NULL")
        assert other["rule"] == "roles.engineering.approval[0]"
        api(gw, f"/api/approvals/{other['id']}/deny", token(gw, "dba"), {})
        ddl.join()
        assert isinstance(ddl.error, psycopg.errors.InsufficientPrivilege)


# -- other configurations --------------------------------------------------------------------


def test_a_timeout_fails_the_statement_with_42501(gateway_factory: Callable[..., RunningGateway],
                                                  postgres: PostgresServer) -> None:
    running = gateway_factory(config_edit({"approvals": {"timeout": "1s"}}))
    with order(postgres) as number:
        client = engineer_execute(running, DELETE.format(number))
        client.join()
        assert isinstance(client.error, psycopg.errors.InsufficientPrivilege), client.error
        assert "timed out" in str(client.error)
        assert exists(postgres, number)


def test_nobody_approves_their_own_request_and_two_approvers_are_two(
        gateway_factory: Callable[..., RunningGateway], postgres: PostgresServer) -> None:
    def edit(text: str) -> str:
        text = text.replace('approver_groups = ["dba"]', 'approver_groups = ["dba", "engineering"]')
        return text.replace('{ tables = ["public.orders"], kinds = ["update", "delete"] }',
                            '{ tables = ["public.orders"], kinds = ["update", "delete"], approvers = 2 }')
    running = gateway_factory(edit)
    colleague = TokenService(load(running.config_path).identity).issue("colleague", ["engineering"], 600)
    with order(postgres) as number:
        sql = DELETE.format(number)
        client = engineer_execute(running, sql)
        request = pending(running, sql)
        assert request["approvers_needed"] == 2
        status, answer = api(running, f"/api/approvals/{request['id']}/approve", token(running, "engineer"), {})
        assert status == 403 and "segregation of duties" in answer["error"]
        status, answer = api(running, f"/api/approvals/{request['id']}/approve", colleague, {})
        assert status == 200 and answer["status"] == "pending"
        status, answer = api(running, f"/api/approvals/{request['id']}/approve", colleague, {})
        assert status == 409
        assert not client.done and exists(postgres, number)
        status, answer = api(running, f"/api/approvals/{request['id']}/approve", token(running, "dba"), {})
        assert status == 200 and answer["status"] == "approved"
        assert client.join() == "DELETE 1"
        assert not exists(postgres, number)


def test_max_pending_refuses_more_holds(gateway_factory: Callable[..., RunningGateway],
                                        postgres: PostgresServer) -> None:
    running = gateway_factory(config_edit({"approvals": {"max_pending": 1}}))
    with order(postgres) as first, order(postgres) as second:
        waiting = engineer_execute(running, DELETE.format(first))
        request = pending(running, DELETE.format(first))
        refused = engineer_execute(running, DELETE.format(second))
        refused.join()
        assert isinstance(refused.error, psycopg.errors.InsufficientPrivilege)
        assert "too many statements are waiting for approval" in str(refused.error)
        api(running, f"/api/approvals/{request['id']}/deny", token(running, "dba"), {})
        waiting.join()
        assert exists(postgres, first) and exists(postgres, second)


def test_config_path_finds_the_admin_listener(gw: RunningGateway) -> None:
    listed = subprocess.run([sys.executable, "-m", "pgguard.cli", "approvals", "list", "-c", str(gw.config_path)],
                            capture_output=True, text=True, timeout=60,
                            env={"PGGUARD_TOKEN": token(gw, "dba"), "PATH": "/usr/bin:/bin"})
    assert listed.returncode == 0, listed.stderr
    assert "pending" in listed.stderr



def test_an_asyncpg_batch_holds_each_statement_and_a_denial_undoes_the_batch(gw: RunningGateway,
                                                                             postgres: PostgresServer) -> None:
    import asyncio

    import asyncpg

    async def batch(numbers: list[int]) -> None:
        conn = await asyncpg.connect(gw.dsn("engineer"), timeout=10)
        try:
            # Pipelined: every Bind and Execute, then one Sync; one implicit transaction.
            await conn.executemany("DELETE FROM orders WHERE id = $1", [(number,) for number in numbers])
        finally:
            await conn.close()

    with order(postgres) as first, order(postgres) as second:
        client = Background(lambda: asyncio.run(batch([first, second])))
        request = pending(gw, "DELETE FROM orders WHERE id = $1")
        # asyncpg leaves the type to the server and binds binary: approvers see the bytes.
        assert request["parameters"] == [f"\\x{first:08x}"]
        api(gw, f"/api/approvals/{request['id']}/approve", token(gw, "dba"), {})
        # The approval released the first Execute only: the second, with its own parameter, waits anew.
        later = pending(gw, "DELETE FROM orders WHERE id = $1", besides={request["id"]})
        assert later["parameters"] == [f"\\x{second:08x}"]
        api(gw, f"/api/approvals/{later['id']}/deny", token(gw, "dba"), {"reason": "one is enough"})
        client.join()
        assert isinstance(client.error, asyncpg.exceptions.InsufficientPrivilegeError), client.error
        assert exists(postgres, first) and exists(postgres, second)  # nothing of the batch committed


def test_explain_and_check_show_what_is_held(gw: RunningGateway) -> None:
    def pgguard(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pgguard.cli", *args], capture_output=True, text=True,
                              timeout=60)

    explained = pgguard("explain", "-c", str(gw.config_path), "--group", "engineering", "--offline",
                        "DELETE FROM orders WHERE id = 1")
    assert explained.returncode == 0, explained.stderr
    assert "decision:  held for approval (rule roles.engineering.approval[1]: tables public.orders; " \
           "kinds delete, update)" in explained.stdout
    as_json = pgguard("explain", "-c", str(gw.config_path), "--group", "engineering", "--offline", "--json",
                      "SELECT 1; DROP TABLE tickets")
    assert [item["decision"] for item in json.loads(as_json.stdout)] == ["allowed", "held"]
    checked = pgguard("check", "-c", str(gw.config_path))
    assert "  held for approval (roles.engineering.approval[0]): classes ddl" in checked.stdout
    assert "approvals: approver groups dba; timeout 600 s; at most 100 pending" in checked.stdout


def test_engineering_ddl_runs_once_approved(gw: RunningGateway, postgres: PostgresServer) -> None:
    table = f"approved_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(gw.dsn("engineer"), autocommit=True) as conn:
            for sql in (f"CREATE TABLE public.{table} (id int)", f"DROP TABLE public.{table}"):
                client = Background(lambda sql=sql: conn.execute(sql))
                request = pending(gw, sql)
                assert request["rule"] == "roles.engineering.approval[0]"
                api(gw, f"/api/approvals/{request['id']}/approve", token(gw, "dba"), {})
                client.join()
                assert client.error is None, client.error
                with psycopg.connect(postgres.dsn()) as direct:
                    made = direct.execute(f"SELECT to_regclass('public.{table}') IS NOT NULL").fetchone()
                assert made == (sql.startswith("CREATE"),)
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS public.{table}")


def test_a_grant_expires_by_itself(gw: RunningGateway, postgres: PostgresServer) -> None:
    subject = f"eng-{uuid.uuid4().hex[:8]}"
    engineer = TokenService(load(gw.config_path).identity).issue(subject, ["engineering"], 600)
    with order(postgres) as first, order(postgres) as second, \
            psycopg.connect(gw.dsn("engineer", user=subject, token=engineer), autocommit=True) as conn:
        client = Background(lambda: conn.execute(DELETE.format(first)))
        request = pending(gw, DELETE.format(first))
        status, answer = api(gw, f"/api/approvals/{request['id']}/approve", token(gw, "dba"), {"grant": "9h"})
        assert status == 400 and "a grant lasts from 1 s to 8h" in answer["error"]  # over max_grant
        api(gw, f"/api/approvals/{request['id']}/approve", token(gw, "dba"), {"grant": "1s"})
        client.join()
        _, approvals, _ = logged(gw, DELETE.format(first), request["id"], 4)  # waits for `expired`
        assert [a["event"] for a in approvals] == ["requested", "approved", "granted", "expired"]
        later = Background(lambda: conn.execute(DELETE.format(second)))
        again = pending(gw, DELETE.format(second))  # held again
        api(gw, f"/api/approvals/{again['id']}/deny", token(gw, "dba"), {})
        later.join()
        assert exists(postgres, second)


def test_revoking_the_requesters_token_withdraws_the_request(gw: RunningGateway, postgres: PostgresServer) -> None:
    subject = f"eng-{uuid.uuid4().hex[:8]}"
    engineer = TokenService(load(gw.config_path).identity).issue(subject, ["engineering"], 600)
    with order(postgres) as number:
        sql = DELETE.format(number)

        def call() -> None:
            with psycopg.connect(gw.dsn("engineer", user=subject, token=engineer), autocommit=True) as conn:
                conn.execute(sql)
        client = Background(call)
        request = pending(gw, sql)
        revoked = subprocess.run([sys.executable, "-m", "pgguard.cli", "token", "revoke", "-c", str(gw.config_path),
                                  "--sub", subject], capture_output=True, text=True, timeout=60)
        assert revoked.returncode == 0, revoked.stderr
        client.join()
        assert isinstance(client.error, psycopg.errors.AdminShutdown), client.error
        assert api(gw, f"/api/approvals/{request['id']}", token(gw, "dba"))[1]["status"] == "cancelled"
        assert exists(postgres, number)


# -- attempts to get around a hold -------------------------------------------------------------


def untouched(postgres: PostgresServer, number: int) -> bool:
    """The test's order row is there, as `order` made it."""
    with psycopg.connect(postgres.dsn()) as conn:
        return conn.execute("SELECT total::text FROM orders WHERE id = %s", (number,)).fetchone() == ("1.00",)


def rolled_back(gateway: RunningGateway, sql: str) -> None:
    """`sql` run by the engineer in a transaction that is rolled back: a statement that should have been
    held and was not leaves the shared data as it was."""
    with psycopg.connect(gateway.dsn("engineer")) as conn:
        try:
            conn.execute(sql)
        finally:
            conn.rollback()


def held_and_denied(gateway: RunningGateway, sql: str) -> dict[str, Any]:
    """Run `sql` as the engineer; it must wait for approval. It is denied; its request."""
    client = Background(lambda: rolled_back(gateway, sql))
    request = pending(gateway, sql)
    api(gateway, f"/api/approvals/{request['id']}/deny", token(gateway, "dba"), {"reason": "no"})
    client.join()
    assert isinstance(client.error, psycopg.errors.InsufficientPrivilege), client.error
    return request


@pytest.mark.parametrize("sql", [
    "MERGE INTO orders o USING (SELECT {} AS id) s ON o.id = s.id WHEN MATCHED THEN DELETE",
    "MERGE INTO orders o USING (SELECT {} AS id) s ON o.id = s.id WHEN MATCHED THEN UPDATE SET total = 0",
    "INSERT INTO orders (id, customer_id, total, status, created_at) VALUES ({}, 1, 0, 'x', now()) "
    "ON CONFLICT (id) DO UPDATE SET total = 0",
    # Emptying the table deletes every row; CASCADE empties orders through its reference to customers.
    "TRUNCATE orders",
    "TRUNCATE customers CASCADE",
])
def test_a_delete_or_update_in_other_clothes_is_held(gw: RunningGateway, postgres: PostgresServer, sql: str) -> None:
    with order(postgres) as number:
        request = held_and_denied(gw, sql.format(number))
        assert request["rule"] == "roles.engineering.approval[1]"
        assert untouched(postgres, number)


@pytest.mark.parametrize(("prepare", "name", "shown"), [
    # A SQL PREPARE makes a statement the extended protocol's Bind runs too.
    (lambda conn: conn.execute("PREPARE gone AS DELETE FROM orders WHERE id = $1"), b"gone",
     "PREPARE gone AS DELETE FROM orders WHERE id = $1"),
    # A second Parse of the name fails (it is taken) and leaves the DELETE in place.
    (lambda conn: (conn.pgconn.prepare(b"gone", b"DELETE FROM orders WHERE id = $1"),
                   conn.pgconn.prepare(b"gone", b"SELECT $1::int")), b"gone",
     "DELETE FROM orders WHERE id = $1"),
    # The server reads a Bind's statement name in the client's encoding, as it read the PREPARE.
    (lambda conn: (conn.execute("SET client_encoding TO 'LATIN1'"),
                   conn.execute('PREPARE "g\u00f6ne" AS DELETE FROM orders WHERE id = $1')), "g\u00f6ne".encode("latin-1"),
     'PREPARE "g\u00f6ne" AS DELETE FROM orders WHERE id = $1'),
], ids=["sql-prepare", "parse-again", "latin1-name"])
def test_a_bind_of_a_prepared_delete_by_name_is_held(gw: RunningGateway, postgres: PostgresServer,
                                                     prepare: Callable[[psycopg.Connection[Any]], Any],
                                                     name: bytes, shown: str) -> None:
    with order(postgres) as number:
        def call() -> str:
            with psycopg.connect(gw.dsn("engineer")) as conn:
                try:
                    prepare(conn)
                    result = conn.pgconn.exec_prepared(name, [str(number).encode()])  # Bind, Execute, Sync
                    return (result.error_field(psycopg.pq.DiagnosticField.SQLSTATE) or b"").decode()
                finally:
                    conn.rollback()
        client = Background(call)
        request = pending(gw, shown)
        assert request["rule"] == "roles.engineering.approval[1]" and request["parameters"] == [str(number)]
        api(gw, f"/api/approvals/{request['id']}/deny", token(gw, "dba"), {})
        assert client.join() == "42501"
        assert untouched(postgres, number)


def test_a_rule_on_a_table_holds_writes_to_its_partitions(gateway_factory: Callable[..., RunningGateway],
                                                          postgres: PostgresServer) -> None:
    table = f"ledger_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE public.{table} (id int, part int) PARTITION BY LIST (part)")
        conn.execute(f"CREATE TABLE public.{table}_a PARTITION OF public.{table} FOR VALUES IN (1)")
        for name in (table, f"{table}_a"):
            conn.execute(f"ALTER TABLE public.{name} OWNER TO pgguard_engineer")
        conn.execute(f"INSERT INTO public.{table} VALUES (1, 1)")
    try:
        rule = '{ tables = ["public.orders"], kinds = ["update", "delete"] }'
        running = gateway_factory(lambda text: text.replace(
            rule, f'{rule},\n    {{ tables = ["public.{table}"], kinds = ["delete"] }}'))
        request = held_and_denied(running, f"DELETE FROM {table}_a WHERE id = 1")
        assert request["rule"] == "roles.engineering.approval[2]"
        with psycopg.connect(postgres.dsn()) as conn:
            assert conn.execute(f"SELECT count(*) FROM public.{table}").fetchone() == (1,)
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS public.{table}")


@pytest.mark.parametrize("sql", ["FETCH ALL FROM gone", "MOVE ALL IN gone"])
def test_a_fetch_of_a_portal_bound_to_a_delete_is_held(gw: RunningGateway, postgres: PostgresServer,
                                                       sql: str) -> None:
    with order(postgres) as number, login_as(gw, "engineer") as conn:
        conn.query("BEGIN")
        # Bound, not executed: the portal is a cursor that SQL can FETCH from, which runs the DELETE.
        conn.send(frontend.Parse("d", "DELETE FROM orders WHERE id = $1 RETURNING id", []),
                  frontend.Bind("gone", "d", [0], [str(number).encode()], []), frontend.Sync())
        conn.receive_until(backend.ReadyForQuery)
        fetch = Background(lambda: conn.query(sql))
        request = pending(gw, sql)
        assert request["rule"] == "roles.engineering.approval[1]"
        api(gw, f"/api/approvals/{request['id']}/deny", token(gw, "dba"), {})
        messages, _ = fetch.join()
        assert [m.code for m in messages if isinstance(m, backend.ErrorResponse)] == ["42501"]
        conn.query("ROLLBACK")
        assert untouched(postgres, number)


@pytest.mark.parametrize(("setup", "sql"), [
    # An updatable view over orders: its DELETE deletes orders' rows.
    ("CREATE VIEW public.{name} AS SELECT * FROM public.orders", "DELETE FROM {name} WHERE id = {number}"),
    # A trigger, or a rule, on a table of its own that deletes from orders.
    ("CREATE TABLE public.{name} (id int); CREATE FUNCTION public.{name}_f() RETURNS trigger LANGUAGE plpgsql AS "
     "'BEGIN DELETE FROM public.orders WHERE id = NEW.id; RETURN NEW; END'; CREATE TRIGGER t AFTER INSERT ON "
     "public.{name} FOR EACH ROW EXECUTE FUNCTION public.{name}_f()", "INSERT INTO {name} VALUES ({number})"),
    ("CREATE TABLE public.{name} (id int); CREATE RULE r AS ON INSERT TO public.{name} DO ALSO "
     "DELETE FROM public.orders WHERE id = NEW.id", "INSERT INTO {name} VALUES ({number})"),
    # A foreign key whose action deletes orders' rows when its table's are.
    ("CREATE TABLE public.{name} (id int PRIMARY KEY); INSERT INTO public.{name} VALUES ({number}); "
     "ALTER TABLE public.orders ADD CONSTRAINT {name}_fk FOREIGN KEY (id) REFERENCES public.{name} ON DELETE CASCADE "
     "NOT VALID", "DELETE FROM {name} WHERE id = {number}"),
], ids=["view", "trigger", "rule", "foreign-key"])
def test_a_write_that_reaches_orders_through_the_database_is_held(
        gateway_factory: Callable[..., RunningGateway], postgres: PostgresServer, setup: str, sql: str) -> None:
    name = f"through_{uuid.uuid4().hex[:12]}"
    with order(postgres) as number:
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(setup.format(name=name, number=number))
            conn.execute(f"ALTER TABLE public.{name} OWNER TO pgguard_engineer")
        try:
            running = gateway_factory()  # its catalog is read after the objects were made
            request = held_and_denied(running, sql.format(name=name, number=number))
            assert request["rule"] == "roles.engineering.approval[1]"
            assert untouched(postgres, number)
        finally:
            with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
                conn.execute(f"ALTER TABLE public.orders DROP CONSTRAINT IF EXISTS {name}_fk")
                kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = %s", (name,)).fetchone()
                conn.execute(f"DROP {'VIEW' if kind == ('v',) else 'TABLE'} public.{name} CASCADE")
                conn.execute(f"DROP FUNCTION IF EXISTS public.{name}_f()")


def test_the_cli_shows_control_characters_of_the_sql_as_escapes(gw: RunningGateway, postgres: PostgresServer) -> None:
    with order(postgres) as number:
        # Terminal escapes that would erase the line and print a harmless statement in its place.
        sql = f"DELETE FROM orders WHERE id = {number} /*\x1b[2K\r    SELECT 1 \u202e*/"
        client = Background(lambda: rolled_back(gw, sql))
        request = pending(gw, sql)
        listed = cli(gw, token(gw, "dba"), "list")
        assert "\x1b" not in listed.stdout and "\r" not in listed.stdout and "\u202e" not in listed.stdout
        assert f"DELETE FROM orders WHERE id = {number} /*\\u001b[2K\\u000d    SELECT 1 \\u202e*/" in listed.stdout
        api(gw, f"/api/approvals/{request['id']}/deny", token(gw, "dba"), {})
        client.join()
        assert untouched(postgres, number)


def answers(conn: RawConnection) -> list[Any]:
    """The server's messages up to ReadyForQuery, errors among them."""
    seen = []
    while not isinstance(message := conn.receive(), backend.ReadyForQuery):
        seen.append(message)
    return seen


@pytest.mark.parametrize("portal", ["gone", ""])
def test_a_failed_bind_over_a_held_portal_does_not_release_it(gw: RunningGateway, postgres: PostgresServer,
                                                              portal: str) -> None:
    with order(postgres) as number, login_as(gw, "engineer") as conn:
        def run(name: str, sql: str) -> list[str]:
            """`sql` through a portal of its own (a simple Query would drop the unnamed portal); its errors."""
            conn.send(frontend.Parse(name, sql, []), frontend.Bind(name, name, [], [], []),
                      frontend.Execute(name, 0), frontend.Sync())
            return [m.code for m in answers(conn) if isinstance(m, backend.ErrorResponse)]
        assert run("b", "BEGIN") == []
        conn.send(frontend.Parse("d", "DELETE FROM orders WHERE id = $1", []),
                  frontend.Bind(portal, "d", [0], [str(number).encode()], []), frontend.Sync())
        assert not [m for m in answers(conn) if isinstance(m, backend.ErrorResponse)]
        assert run("s", "SAVEPOINT s") == []
        # A Bind of the same portal that fails (its parameters do not fit), in a savepoint: the DELETE's
        # portal, made before the savepoint, survives the rollback to it.
        conn.send(frontend.Parse("h", "SELECT $1::int", []), frontend.Bind(portal, "h", [], [], []),
                  frontend.Sync())
        assert [m.code for m in answers(conn) if isinstance(m, backend.ErrorResponse)] == ["08P01"]
        assert run("r", "ROLLBACK TO SAVEPOINT s") == []
        execute = Background(lambda: (conn.send(frontend.Execute(portal, 0), frontend.Sync()), answers(conn))[1])
        request = pending(gw, "DELETE FROM orders WHERE id = $1")
        api(gw, f"/api/approvals/{request['id']}/deny", token(gw, "dba"), {})
        errors = [m.code for m in execute.join() if isinstance(m, backend.ErrorResponse)]
        assert errors == ["42501"]
        conn.query("ROLLBACK")
        assert untouched(postgres, number)


@pytest.mark.parametrize("outcome", ["approve", "deny"])
def test_an_extended_protocol_copy_from_stdin_held_for_approval(gateway_factory: Callable[..., RunningGateway],
                                                                outcome: str) -> None:
    """libpq's Sync right after the Execute of a COPY is kept with the held Execute; once the copy runs the server
    ignores it, and the gateway drops it (or, when the copy is denied, sends it): the next rows stay masked."""
    gateway = gateway_factory(lambda text: text.replace('kinds = ["update", "delete"]',
                                                        'kinds = ["update", "delete", "copy"]'))
    sql = "COPY orders (id, customer_id, total, status, created_at) FROM STDIN"
    with login_as(gateway, "engineer") as conn:
        conn.query("BEGIN")
        conn.send(frontend.Parse("", sql, []), frontend.Bind("", "", [], [], []), frontend.Execute("", 0),
                  frontend.Sync())
        conn.receive_until(backend.NoticeResponse)
        decided = cli(gateway, token(gateway, "dba"), outcome, pending(gateway, sql)["id"])
        assert decided.returncode == 0, decided.stderr
        if outcome == "approve":
            conn.receive_until(backend.CopyInResponse)
            conn.send(frontend.CopyData(b"999201\t1\t1.00\tnew\t2024-01-01\n"), frontend.CopyDone(), frontend.Sync())
            seen, _ = conn.receive_until(backend.ReadyForQuery)
            assert backend.CommandComplete("COPY 1") in seen
        else:
            seen = []
            while not isinstance(seen[-1:] and seen[-1], backend.ReadyForQuery):
                seen.append(conn.receive())
            errors = [m for m in seen if isinstance(m, backend.ErrorResponse)]
            assert [e.code for e in errors] == ["42501"] and "denied" in errors[0].message, seen
            conn.query("ROLLBACK")  # the denial failed the transaction, as any error would
        seen, _ = conn.query("SELECT email FROM customers ORDER BY id LIMIT 1")
        assert backend.DataRow([b"***@example.net"]) in seen, seen
        conn.query("ROLLBACK")
