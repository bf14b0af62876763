"""Just-in-time approval: statements that wait in the gateway until someone else approves them.

`rules.py` reads the roles' `approval` rules, `store.py` keeps requests and
grants behind the `ApprovalStore` interface, `service.py` opens, decides and
waits for requests, and `webhook.py` tells the outside world. The hold itself
is in `relay/protocol.py` (sans I/O) and `relay/session.py`; docs/approvals.md
describes the whole.
"""
