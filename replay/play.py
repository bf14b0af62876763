"""Playing a session back with its original timing, as if watching it happen.

Each statement, result, notice and approval appears when it happened, relative to the
session's start: the wait between two events is their distance in time divided by `speed`,
and at most `max_gap` seconds, so that an agent's hour of idling does not take an hour to
watch. On a terminal, any key ends the current wait and `q` stops. The waiting is a `Pacer`
of its own, so that the player can be run, and tested, without a clock.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.text import Text

from replay.render_text import ending_lines, event_lines, header_lines
from replay.transcript import Session


class Pacer(Protocol):
    def wait(self, seconds: float) -> bool:
        """Waits up to `seconds`; False to stop playing."""


class Sleeper:
    """Waits the whole time; nothing can cut it short."""

    def wait(self, seconds: float) -> bool:
        time.sleep(seconds)
        return True


class KeyboardPacer:
    """Waits until the time is up or a key is pressed: any key skips the wait, `q` stops."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def wait(self, seconds: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], seconds)
        return not ready or os.read(self.fd, 1) not in (b"q", b"Q")


@contextmanager
def pacer() -> Iterator[Pacer]:
    """Keys on a terminal (read one at a time, not echoed), plain sleeps otherwise."""
    if not sys.stdin.isatty():
        yield Sleeper()
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield KeyboardPacer(fd)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def play(session: Session, out: Console, pace: Pacer, *, speed: float = 1.0, max_gap: float | None = None) -> bool:
    """Prints the session event by event at its pace; False if the viewer stopped it."""
    for line in header_lines(session):
        out.print(line)
    if isinstance(pace, KeyboardPacer):
        out.print(Text("(any key skips a wait, q stops)", style="dim"))
    previous = session.started
    for at, event, _ in session.timeline:
        gap = max(0.0, at - previous) / speed
        previous = max(previous, at)
        if max_gap is not None:
            gap = min(gap, max_gap)
        if gap > 0 and not pace.wait(gap):
            return False
        for line in event_lines(event):
            out.print(line)
    for line in ending_lines(session):
        out.print(line)
    return True
