"""The gateway's approvals: opening requests, deciding them, waiting for them.

Sessions open requests (through `SessionApprovals`, from the sans-IO
protocol) and wait for their outcome; approvers decide them through the
admin API. Every interface goes through that API, which admits only a
valid token (as the gateway accepts for login) of a member of an approver
group (admin/bearer.py); here, for each decision: never the requester
(segregation of duties), and one approval per person.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass

import trio

from pgguard.approvals.rules import ApprovalRule
from pgguard.approvals.store import ApprovalStore, Grant, MemoryStore, Request
from pgguard.approvals.webhook import Webhook
from pgguard.config import ApprovalsConfig
from pgguard.identity import Identity

log = logging.getLogger("pgguard.approvals")


class ApprovalError(Exception):
    """A request cannot be made or decided; `status` is the HTTP status the API answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def same_person(identity: Identity, request: Request) -> bool:
    """True when `identity` is the requester: the same subject of the same issuer, or the same user name."""
    return (identity.issuer, identity.subject) == (request.requester_issuer, request.requester_subject) \
        or identity.username == request.requester


def describe_duration(seconds: int) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class Approvals:
    def __init__(self, config: ApprovalsConfig, store: ApprovalStore | None = None) -> None:
        self.config = config
        self.store: ApprovalStore = store if store is not None else MemoryStore()
        self.webhook = Webhook(config.webhook_url)
        # Where approvers reach the admin listener; the runtime sets it once the listener is bound.
        self.admin_url = config.public_url
        # Waiters of this gateway, woken when their request is decided.
        self._decided: dict[str, trio.Event] = {}

    def reconfigure(self, config: ApprovalsConfig) -> None:
        """A reloaded [approvals]: approvers, limits and the webhook from the next request on."""
        self.config = config
        self.webhook.url = config.webhook_url
        if config.public_url:
            self.admin_url = config.public_url

    def pending_count(self) -> int:
        """Held requests now: for the metrics endpoint."""
        return self.store.pending_count()

    # -- sessions ---------------------------------------------------------------

    def open(self, identity: Identity, session_id: str, target: str, protocol: str, sql: str,
             parameters: tuple[str | None, ...], rule: ApprovalRule) -> Request:
        if self.store.pending_count() >= self.config.max_pending:
            raise ApprovalError(503, f"too many statements are waiting for approval ({self.config.max_pending});"
                                     " try again later")
        now = time.time()
        request = Request(id=secrets.token_hex(4), created_at=now, expires_at=now + self.config.timeout,
                          requester=identity.username, requester_subject=identity.subject,
                          requester_issuer=identity.issuer, session_id=session_id, target=target,
                          protocol=protocol, sql=sql, parameters=parameters, rule=rule.label,
                          rule_text=str(rule), approvers_needed=rule.approvers)
        self.store.add(request)
        self._decided[request.id] = trio.Event()
        log.info("request %s: %s's statement held by %s: %s", request.id, request.requester, rule.label, sql)
        self._announce(request, f"{request.requester} asks to run on {target} (rule {rule.label}, "
                                f"request {request.id}):\n```{sql}```" + self._how(request))
        return request

    def notice(self, request: Request) -> str:
        """The NoticeResponse text the requester sees at once."""
        return (f"pgguard: statement held for approval: request {request.id} (rule {request.rule}: "
                f"{request.rule_text}); it waits up to {describe_duration(self.config.timeout)}.{self._how(request)}")

    def _how(self, request: Request) -> str:
        how = f" An approver runs: pgguard approvals approve {request.id}"
        if self.admin_url:
            how += f" (or opens {self.admin_url}/approvals/ui)"
        return how

    async def outcome(self, request_id: str) -> Request:
        """Wait for the request's decision, or time it out."""
        request = self.store.get(request_id)
        assert request is not None
        event = self._decided.setdefault(request_id, trio.Event())
        try:
            with trio.move_on_at(trio.current_time() + max(0.0, request.expires_at - time.time())):
                await event.wait()
            timed_out = self.store.close(request_id, "timed_out", None,
                                         f"no decision within {describe_duration(self.config.timeout)}")
            if timed_out is not None:
                self._announce(timed_out, f"request {request_id} of {timed_out.requester} timed out")
            decided = self.store.get(request_id)
            assert decided is not None
            return decided
        finally:
            self._decided.pop(request_id, None)

    def withdraw(self, request_id: str, reason: str) -> Request | None:
        """The requester cancelled the statement or left: the request ends, if still pending."""
        request = self.store.close(request_id, "cancelled", None, reason)
        if request is not None:
            self._wake(request_id)
            self._announce(request, f"request {request_id} of {request.requester} withdrawn: {reason}")
        return request

    def granted(self, identity: Identity, rule: ApprovalRule) -> bool:
        """True when a grant covers `rule`: the rule of that label, with the conditions it had when granted
        (after a reload, the label may name another rule, which the grant does not cover)."""
        grant = self.store.grant(identity.issuer, identity.subject, rule.label, time.time())
        return grant is not None and grant.rule_text == str(rule)

    # -- approvers --------------------------------------------------------------

    def _decidable(self, request_id: str, approver: Identity) -> Request:
        request = self.store.get(request_id)
        if request is None:
            raise ApprovalError(404, f"no request {request_id}")
        if request.status != "pending":
            raise ApprovalError(409, f"request {request_id} is already {request.status}")
        if same_person(approver, request):
            raise ApprovalError(403, "segregation of duties: nobody may decide their own request")
        if approver.username in request.approved_by:
            raise ApprovalError(409, f"{approver.username} has approved request {request_id} already; "
                                     "another approver must approve it too")
        return request

    def approve(self, request_id: str, approver: Identity, grant_seconds: int | None = None) -> Request:
        self._decidable(request_id, approver)
        if grant_seconds is not None and not 0 < grant_seconds <= self.config.max_grant:
            raise ApprovalError(400, f"a grant lasts from 1 s to {describe_duration(self.config.max_grant)}")
        request = self.store.approve(request_id, approver.username, grant_seconds)
        if request is None:
            raise ApprovalError(409, f"request {request_id} is no longer pending")
        if request.status != "approved":
            log.info("request %s: approved by %s; %d more approver(s) needed", request_id, approver.username,
                     request.approvers_needed - len(request.approved_by))
            self._announce(request, f"request {request_id}: approved by {approver.username}, waiting for "
                                    f"{request.approvers_needed - len(request.approved_by)} more approver(s)")
            return request
        if grant_seconds is not None:
            self.store.add_grant(Grant(request.requester_issuer, request.requester_subject, request.rule,
                                       request.rule_text, time.time() + grant_seconds, approver.username,
                                       request_id))
        log.info("request %s: approved by %s%s", request_id, request.decided_by,
                 f", with a grant for {describe_duration(grant_seconds)}" if grant_seconds else "")
        self._wake(request_id)
        self._announce(request, f"request {request_id} of {request.requester}: approved by {request.decided_by}"
                                + (f"; {request.rule} granted for {describe_duration(grant_seconds)}"
                                   if grant_seconds else ""))
        return request

    def deny(self, request_id: str, approver: Identity, reason: str | None) -> Request:
        self._decidable(request_id, approver)
        request = self.store.close(request_id, "denied", approver.username, reason)
        if request is None:
            raise ApprovalError(409, f"request {request_id} is no longer pending")
        log.info("request %s: denied by %s: %s", request_id, approver.username, reason or "(no reason)")
        self._wake(request_id)
        self._announce(request, f"request {request_id} of {request.requester}: denied by {approver.username}"
                                + (f": {reason}" if reason else ""))
        return request

    def _wake(self, request_id: str) -> None:
        event = self._decided.get(request_id)
        if event is not None:
            event.set()

    def _announce(self, request: Request, text: str) -> None:
        self.webhook.send({"text": text, "request": request.as_json()})


@dataclass
class SessionApprovals:
    """One session's side of approvals, as the sans-IO protocol calls it."""

    approvals: Approvals
    identity: Identity
    session_id: str
    target: str

    def covered(self, rule: ApprovalRule) -> bool:
        """True when a grant lets this statement run without approval."""
        return self.approvals.granted(self.identity, rule)

    def open(self, protocol: str, sql: str, parameters: tuple[str | None, ...], rule: ApprovalRule) -> Request:
        return self.approvals.open(self.identity, self.session_id, self.target, protocol, sql, parameters, rule)

    def notice(self, request: Request) -> str:
        return self.approvals.notice(request)

    def withdraw(self, request_id: str, reason: str) -> bool:
        """False when the request was decided already."""
        return self.approvals.withdraw(request_id, reason) is not None
