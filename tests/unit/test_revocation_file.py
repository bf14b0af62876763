"""The revocation file: what an entry revokes, how it is written, and how the gateway sees changes."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from pgguard.identity import Identity
from pgguard.identity.revocation import RevocationFile, load, revoke

NOW = time.time()
ALICE = Identity(provider="okta", issuer="https://idp.example", subject="00u1", username="alice",
                 groups=("analysts",), jti="j-1", issued_at=NOW - 60, expires_at=NOW + 600, valid_until=NOW + 630)


def test_a_jti_entry_revokes_that_token_only(tmp_path: Path) -> None:
    path = tmp_path / "revoked.json"
    entry, new = revoke(path, "jti", "j-1", "laptop stolen")
    assert new and entry.reason == "laptop stolen"
    revocations = load(path)
    assert revocations.match(ALICE) == entry
    assert revocations.match(replace(ALICE, jti="j-2")) is None
    assert revocations.match(replace(ALICE, jti=None)) is None


def test_a_sub_entry_revokes_the_tokens_issued_until_then(tmp_path: Path) -> None:
    path = tmp_path / "revoked.json"
    entry, _ = revoke(path, "sub", "00u1")
    revocations = load(path)
    assert revocations.match(ALICE) == entry
    assert revocations.match(replace(ALICE, jti=None)) == entry
    assert revocations.match(replace(ALICE, issued_at=entry.revoked_at.timestamp() + 1)) is None
    assert revocations.match(replace(ALICE, subject="00u2")) is None


def test_revoking_twice_keeps_the_first_entry(tmp_path: Path) -> None:
    path = tmp_path / "revoked.json"
    first, _ = revoke(path, "jti", "j-1", "first")
    again, new = revoke(path, "jti", "j-1", "second")
    assert not new and again == first and len(load(path)) == 1


def test_the_file_is_readable_json_and_concurrent_revocations_all_land(tmp_path: Path) -> None:
    path = tmp_path / "state" / "revoked.json"
    threads = [threading.Thread(target=revoke, args=(path, "jti", f"j-{n}")) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    document = json.loads(path.read_text())
    assert sorted(item["jti"] for item in document["revoked"]) == sorted(f"j-{n}" for n in range(16))
    assert path.stat().st_mode & 0o777 == 0o644  # the gateway may run as another user
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_a_missing_file_is_an_empty_list(tmp_path: Path) -> None:
    assert len(load(tmp_path / "absent.json")) == 0


@pytest.mark.parametrize("text", [
    "not json", "[]", '{"revoked": [{"jti": 1, "revoked_at": "2026-01-01T00:00:00+00:00"}]}',
    '{"revoked": [{"jti": "a", "sub": "b", "revoked_at": "2026-01-01T00:00:00+00:00"}]}',
    '{"revoked": [{"jti": "a", "revoked_at": "yesterday"}]}',
])
def test_a_malformed_file_is_refused_at_start(tmp_path: Path, text: str) -> None:
    path = tmp_path / "revoked.json"
    path.write_text(text)
    with pytest.raises(ValueError):
        RevocationFile(path)


async def test_the_gateway_sees_each_change_and_keeps_the_last_good_list(tmp_path: Path) -> None:
    path = tmp_path / "revoked.json"
    watched = RevocationFile(path)
    assert len(watched.current) == 0
    seen: list[int] = []

    async def follow() -> None:
        async for revocations in watched.changes():
            seen.append(len(revocations))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        with trio.fail_after(2):
            await trio.to_thread.run_sync(revoke, path, "jti", "j-1")
            while seen != [1]:
                await trio.sleep(0.01)
            good = path.read_text()
            path.write_text("{ broken")
            await trio.sleep(0.6)
            assert seen == [1] and watched.current.match(ALICE) is not None
            with pytest.raises(ValueError):  # nor does the CLI write over what it cannot read
                revoke(path, "sub", "00u9")
            path.write_text(good)
            await trio.to_thread.run_sync(revoke, path, "sub", "00u9")
            while seen[-1] != 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
