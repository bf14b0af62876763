"""Approval requests and grants, behind one interface shared by every session.

`ApprovalStore` is what the rest of pgguard asks of the shared state; the
in-memory store serves one gateway. A store for several gateway replicas
(rows in PostgreSQL, changes announced with LISTEN/NOTIFY) keeps the same
methods: each transition is one conditional update, so two approvers or an
approver and the timeout cannot both win. Its methods are synchronous because
grants are consulted on the relay's hot path: such a store keeps a local
mirror that its notifications refresh.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

Status = Literal["pending", "approved", "denied", "timed_out", "cancelled"]


@dataclass(frozen=True)
class Request:
    """One held statement waiting for (or past) its decision."""

    id: str
    created_at: float
    expires_at: float
    # Who asked, as the token said: segregation of duties compares these.
    requester: str
    requester_subject: str
    requester_issuer: str
    session_id: str
    target: str
    protocol: str  # "simple" or "extended"
    sql: str
    parameters: tuple[str | None, ...]
    rule: str  # the rule's label, roles.NAME.approval[INDEX]
    rule_text: str
    approvers_needed: int
    approved_by: tuple[str, ...] = ()
    status: Status = "pending"
    decided_by: str | None = None
    reason: str | None = None
    decided_at: float | None = None
    # Seconds of elevation the approval granted, if it granted any.
    grant_seconds: int | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id, "created_at": self.created_at, "expires_at": self.expires_at,
            "age_seconds": round(time.time() - self.created_at, 1), "requester": self.requester,
            "session_id": self.session_id, "target": self.target, "protocol": self.protocol, "sql": self.sql,
            "parameters": list(self.parameters), "rule": self.rule, "rule_text": self.rule_text,
            "approvers_needed": self.approvers_needed, "approved_by": list(self.approved_by),
            "status": self.status, "decided_by": self.decided_by, "reason": self.reason,
            "grant_seconds": self.grant_seconds,
        }


@dataclass(frozen=True)
class Grant:
    """Time-boxed elevation: the requester's statements under `rule` need no approval until `until`."""

    requester_issuer: str
    requester_subject: str
    rule: str  # the rule's label, which a reload may give to another rule
    rule_text: str  # what the rule held when it was granted: the grant covers that rule only
    until: float
    by: str
    request: str


class ApprovalStore(Protocol):
    def add(self, request: Request) -> None: ...

    def get(self, request_id: str) -> Request | None: ...

    def pending(self) -> list[Request]: ...

    def pending_count(self) -> int: ...

    def approve(self, request_id: str, approver: str, grant_seconds: int | None = None) -> Request | None:
        """Add an approver to a pending request; approved once it has enough. None: not pending."""

    def close(self, request_id: str, status: Status, by: str | None, reason: str | None,
              grant_seconds: int | None = None) -> Request | None:
        """End a pending request; None when it was no longer pending."""

    def add_grant(self, grant: Grant) -> None: ...

    def grant(self, issuer: str, subject: str, rule: str, now: float) -> Grant | None: ...


@dataclass
class MemoryStore:
    """One gateway's requests and grants. Decided requests are kept for a while, for the API."""

    keep_decided: int = 1000
    _requests: dict[str, Request] = field(default_factory=dict)
    _grants: dict[tuple[str, str, str], Grant] = field(default_factory=dict)

    def add(self, request: Request) -> None:
        self._requests[request.id] = request
        decided = [key for key, value in self._requests.items() if value.status != "pending"]
        for key in decided[:max(0, len(decided) - self.keep_decided)]:
            del self._requests[key]

    def get(self, request_id: str) -> Request | None:
        return self._requests.get(request_id)

    def pending(self) -> list[Request]:
        return [request for request in self._requests.values() if request.status == "pending"]

    def pending_count(self) -> int:
        return sum(1 for request in self._requests.values() if request.status == "pending")

    def approve(self, request_id: str, approver: str, grant_seconds: int | None = None) -> Request | None:
        request = self._requests.get(request_id)
        if request is None or request.status != "pending" or approver in request.approved_by:
            return None
        approved_by = (*request.approved_by, approver)
        done = len(approved_by) >= request.approvers_needed
        request = self._requests[request_id] = replace(
            request, approved_by=approved_by, status="approved" if done else "pending",
            decided_by=", ".join(approved_by) if done else None, decided_at=time.time() if done else None,
            grant_seconds=grant_seconds if done else None)
        return request

    def close(self, request_id: str, status: Status, by: str | None, reason: str | None,
              grant_seconds: int | None = None) -> Request | None:
        request = self._requests.get(request_id)
        if request is None or request.status != "pending":
            return None
        request = self._requests[request_id] = replace(request, status=status, decided_by=by, reason=reason,
                                                       decided_at=time.time(), grant_seconds=grant_seconds)
        return request

    def add_grant(self, grant: Grant) -> None:
        self._grants[(grant.requester_issuer, grant.requester_subject, grant.rule)] = grant

    def grant(self, issuer: str, subject: str, rule: str, now: float) -> Grant | None:
        grant = self._grants.get((issuer, subject, rule))
        if grant is not None and grant.until <= now:
            del self._grants[(issuer, subject, rule)]
            return None
        return grant
