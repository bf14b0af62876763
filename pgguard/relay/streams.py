"""Reading whole messages off a stream during the startup phases."""

from __future__ import annotations

import trio

from pgguard.wire.framing import Frame, MessageFramer, StartupFramer



class PeerClosed(Exception):
    """The other end closed the connection."""


async def receive_frames(stream: trio.abc.ReceiveStream, framer: MessageFramer) -> list[Frame]:
    """At least one complete tagged message, however many reads that takes."""
    while True:
        data = await stream.receive_some()
        if not data:
            raise PeerClosed()
        _, frames = framer.feed(data)
        if frames:
            return frames


async def receive_packet(stream: trio.abc.ReceiveStream, framer: StartupFramer) -> bytes:
    """One complete startup-phase packet."""
    packet = framer.feed(b"")
    while packet is None:
        data = await stream.receive_some()
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
