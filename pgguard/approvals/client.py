"""`pgguard approvals list|approve ID|deny ID`: the approvals API from a terminal.

The approver's token comes from PGGUARD_TOKEN (never an argument, which
other users could read in the process list); the gateway from `--admin URL`
or from the config's `[approvals] public_url`, else its `admin_listen`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import unicodedata
import urllib.error
import urllib.request
from typing import Any

from pgguard.config import ConfigError, load


class ClientError(Exception):
    """The request could not be made, or the API refused it; the message says why."""


def admin_url(args: argparse.Namespace) -> str:
    if args.admin:
        return str(args.admin).rstrip("/")
    if not args.config:
        raise ConfigError("name the gateway's admin listener: --admin URL or -c pgguard.toml")
    config = load(args.config)
    if config.approvals.public_url:
        return config.approvals.public_url
    listen = config.gateway.admin_listen
    if listen is None:
        raise ConfigError(f"{config.path}: [gateway] admin_listen is not set, so approvals are not served")
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "") else "::1" if listen.host == "::" else listen.host
    return f"http://[{host}]:{listen.port}" if ":" in host else f"http://{host}:{listen.port}"


def call(base: str, path: str, body: dict[str, Any] | None = None) -> Any:
    token = os.environ.get("PGGUARD_TOKEN", "").strip()
    if not token:
        raise ClientError("set PGGUARD_TOKEN to the approver's token")
    request = urllib.request.Request(
        base + path, method="GET" if body is None else "POST",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (the admin URL given)
            return json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise ClientError(f"{exc.code}: {message}") from exc
    except urllib.error.URLError as exc:
        raise ClientError(f"cannot reach {base}: {exc.reason}") from exc


def _visible(text: str) -> str:
    """`text` with control and invisible formatting characters (terminal escapes, carriage returns,
    bidirectional overrides) shown as escapes, so a requester's SQL cannot redraw the approver's
    terminal or reorder what it shows. Line breaks stay, indented under the request."""
    return "".join(char if char in "\n\t" or unicodedata.category(char) not in ("Cc", "Cf", "Zl", "Zp")
                   else f"\\u{ord(char):04x}" for char in text).replace("\n", "\n    ")


def _show(request: dict[str, Any]) -> str:
    lines = [_visible(f"{request['id']}  {request['status']}  {request['requester']} on {request['target']}, "
                      f"{request['age_seconds']:.0f} s ago, rule {request['rule']} ({request['rule_text']})"),
             f"    {_visible(request['sql'])}"]
    if request["parameters"]:
        lines.append(f"    parameters: {json.dumps(request['parameters'])}")
    if request["approved_by"] and request["status"] == "pending":
        lines.append(f"    approved by {', '.join(request['approved_by'])}; "
                     f"{request['approvers_needed'] - len(request['approved_by'])} more needed")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    base = admin_url(args)
    try:
        if args.approvals_command == "list":
            answer = call(base, "/api/approvals")
            if args.json:
                print(json.dumps(answer["pending"], indent=2))
            for request in [] if args.json else answer["pending"]:
                print(_show(request))
            if not args.json:
                print(f"{len(answer['pending'])} pending", file=sys.stderr)
            return 0
        verb = args.approvals_command
        body: dict[str, Any] = {"reason": args.reason} if verb == "deny" else (
            {"grant": args.grant} if args.grant else {})
        answer = call(base, f"/api/approvals/{args.id}/{verb}", body)
    except ClientError as exc:
        print(f"pgguard: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if args.json else _show(answer))
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    approvals = commands.add_parser("approvals", help="decide statements held for approval (token in PGGUARD_TOKEN)")
    subcommands = approvals.add_subparsers(dest="approvals_command", required=True)

    def sub(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = subcommands.add_parser(name, help=help_text)
        where = parser.add_mutually_exclusive_group()
        where.add_argument("--admin", help="the admin listener's URL, e.g. http://127.0.0.1:6433")
        where.add_argument("-c", "--config", help="pgguard.toml, to find the admin listener")
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.set_defaults(func=run)
        return parser

    sub("list", "pending requests")
    approve = sub("approve", "approve a request")
    approve.add_argument("id")
    approve.add_argument("--grant", help="also let the requester run statements under the same rule for this "
                                         "long without approval, e.g. 30m")
    deny = sub("deny", "deny a request")
    deny.add_argument("id")
    deny.add_argument("--reason", default="", help="told to the requester and recorded")
