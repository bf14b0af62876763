"""Reading whole messages off trio streams, and closing streams without fuss."""

from __future__ import annotations

import trio

from pgguard.wire.framing import Frame, MessageFramer, StartupFramer

RECEIVE_SIZE = 256 * 1024


class PeerClosed(Exception):
    """The other end closed the connection."""


async def receive_frames(stream: trio.abc.ReceiveStream, framer: MessageFramer) -> list[Frame]:
    """At least one complete tagged message, however many reads that takes."""
    while True:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise PeerClosed()
        _, frames = framer.feed(data)
        if frames:
            return frames


async def receive_packet(stream: trio.abc.ReceiveStream, framer: StartupFramer) -> bytes:
    """One complete startup-phase packet."""
    packet = framer.feed(b"")
    while packet is None:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise PeerClosed()
        packet = framer.feed(data)
    return packet


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise PeerClosed()
        data += chunk
    return data


async def close_quietly(stream: trio.abc.AsyncResource | None) -> None:
    """Close without waiting on a peer that may be gone (no TLS close_notify wait)."""
    if stream is not None:
        await trio.aclose_forcefully(stream)
