"""The PostgreSQL frontend/backend protocol 3.0, sans I/O.

Nothing in this package touches a socket: `framing` splits byte streams into
messages, `frontend` and `backend` hold one type per message with encode and
decode, and `scram` is the client side of SCRAM-SHA-256 as a pure state machine.
"""
