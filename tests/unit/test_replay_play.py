"""Playback keeps the session's timing, scaled by --speed and capped by --max-gap, and stops
when the viewer asks."""

from __future__ import annotations

import io
import os
import select
from pathlib import Path

import pytest
from rich.console import Console

from replay.play import KeyboardPacer, play
from replay.transcript import load
from test_replay_transcript import HELD, held_session, write_log


class Recorder:
    """A pacer that waits for nothing and remembers what it was asked to wait."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.waits: list[float] = []
        self.stop_after = stop_after

    def wait(self, seconds: float) -> bool:
        self.waits.append(round(seconds, 6))
        return self.stop_after is None or len(self.waits) < self.stop_after


@pytest.fixture
def session_path(tmp_path: Path) -> Path:
    return write_log(tmp_path, HELD, held_session())


def played(path: Path, pacer: Recorder, **options: float | None) -> str:
    out = io.StringIO()
    play(load(path), Console(file=out, markup=False, highlight=False, width=200), pacer, **options)  # type: ignore[arg-type]
    return out.getvalue()


def test_waits_follow_the_recorded_times(session_path: Path) -> None:
    pacer = Recorder()
    text = played(session_path, pacer)
    # statement at +1, its result at +1.1, the held DELETE at +10 (its request at the same time),
    # the notice at +10.1, the approval at +40 ...
    assert pacer.waits[:5] == [1.0, 0.1, 8.9, 0.1, 29.9]
    assert text.index("SELECT id, email FROM customers") < text.index("DELETE FROM orders") < text.index(
        "approved by dana") < text.index("DROP TABLE tickets")


def test_speed_and_max_gap(session_path: Path) -> None:
    fast = Recorder()
    played(session_path, fast, speed=10)
    assert fast.waits[:3] == [0.1, 0.01, 0.89]
    capped = Recorder()
    played(session_path, capped, max_gap=2)
    assert max(capped.waits) == 2 and capped.waits[:3] == [1.0, 0.1, 2]


def test_the_viewer_can_stop(session_path: Path) -> None:
    text = played(session_path, Recorder(stop_after=3))
    assert "SELECT id, email FROM customers" in text and "DELETE FROM orders" not in text


def test_a_key_skips_the_wait_and_q_stops() -> None:
    read, write = os.pipe()
    try:
        pacer = KeyboardPacer(read)
        os.write(write, b" ")
        assert pacer.wait(3600) is True  # a key: the hour-long gap is skipped
        assert select.select([read], [], [], 0)[0] == []  # and the key was taken
        os.write(write, b"q")
        assert pacer.wait(3600) is False
        assert pacer.wait(0) is True  # no key: the wait runs out
    finally:
        os.close(read)
        os.close(write)
