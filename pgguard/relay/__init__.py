"""The I/O around the sans-IO codec: listeners, handshakes, upstream, the relay."""
