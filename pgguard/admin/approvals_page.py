"""The approvals web page: pending requests, with approve and deny buttons.

One self-contained page (no network assets). It asks for the approver's
token, keeps it in sessionStorage (gone when the tab closes) and calls the
JSON API with it in the Authorization header. Every value is put in the page
as text, never as HTML, and a per-response nonce lets only the page's own
script and style run (Content-Security-Policy).
"""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pgguard approvals</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style nonce="{nonce}">
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; width: 100%; margin-top: 1rem; }}
th, td {{ text-align: left; border-bottom: 1px solid #ddd; padding: .4rem; vertical-align: top; }}
pre {{ margin: 0; white-space: pre-wrap; }}
#status {{ margin-top: 1rem; min-height: 1.2em; }}
.error {{ color: #a00; }}
td div {{ display: flex; gap: .3rem; margin-bottom: .3rem; }}
td button {{ min-width: 5rem; }}
</style></head>
<body>
<h1>pgguard: statements waiting for approval</h1>
<form id="login">
  <label>Approver token <input id="token" type="password" autocomplete="off" size="60"></label>
  <button id="use-token" type="submit">Use token</button>
  <button id="forget-token" type="button">Forget</button>
</form>
<div id="status"></div>
<table><thead><tr><th>Request</th><th>Requester</th><th>Statement</th><th>Rule</th><th>Age</th>
<th>Decision</th></tr></thead><tbody id="requests"></tbody></table>
<script nonce="{nonce}">
"use strict";
const KEY = "pgguard-approver-token";
const status = document.getElementById("status");
const rows = document.getElementById("requests");
function say(text, error) {{ status.textContent = text; status.className = error ? "error" : ""; }}
function token() {{ return sessionStorage.getItem(KEY) || ""; }}
async function api(path, body) {{
  const response = await fetch(path, {{
    method: body === undefined ? "GET" : "POST",
    headers: {{"Authorization": "Bearer " + token(), "Content-Type": "application/json"}},
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit", cache: "no-store",
  }});
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer;
}}
function cell(row, text, pre) {{
  const td = row.insertCell();
  const holder = pre ? document.createElement("pre") : td;
  holder.textContent = text;
  if (pre) td.appendChild(holder);
  return td;
}}
// Control and invisible formatting characters (bidirectional overrides, zero-width ones) as escapes,
// so that a requester's SQL cannot reorder or hide what the approver reads.
function visible(text) {{
  return text.replace(/[\\p{{Cc}}\\p{{Cf}}\\p{{Zl}}\\p{{Zp}}]/gu,
    c => c === "\\n" || c === "\\t" ? c : "\\\\u" + c.codePointAt(0).toString(16).padStart(4, "0"));
}}
function button(td, label, id, action) {{
  const b = document.createElement("button");
  b.textContent = label; b.id = id; b.type = "button";
  b.addEventListener("click", action);
  td.appendChild(b);
}}
async function decide(id, verb, body) {{
  try {{
    const result = await api("/api/approvals/" + encodeURIComponent(id) + "/" + verb, body);
    say("request " + id + ": " + result.status + (result.decided_by ? " by " + result.decided_by : ""));
  }} catch (e) {{ say("request " + id + ": " + e.message, true); }}
  refresh();
}}
async function refresh() {{
  if (!token()) {{ rows.replaceChildren(); say("Enter an approver's token to see pending requests."); return; }}
  let answer;
  try {{ answer = await api("/api/approvals"); }} catch (e) {{ say(e.message, true); return; }}
  rows.replaceChildren();
  for (const r of answer.pending) {{
    const row = rows.insertRow();
    row.id = "request-" + r.id;
    cell(row, r.id);
    cell(row, r.requester + " (" + r.target + ")");
    const params = r.parameters.length ? "\\nparameters: " + JSON.stringify(r.parameters) : "";
    cell(row, visible(r.sql + params), true);
    cell(row, r.rule + ": " + r.rule_text + (r.approved_by.length ? "\\napproved by " + r.approved_by.join(", ") : ""), true);
    cell(row, Math.round(r.age_seconds) + " s");
    const td = row.insertCell();
    const approving = document.createElement("div"), denying = document.createElement("div");
    td.append(approving, denying);
    const grant = document.createElement("input");
    grant.placeholder = "grant for, e.g. 30m (optional)"; grant.id = "grant-" + r.id;
    button(approving, "Approve", "approve-" + r.id,
           () => decide(r.id, "approve", grant.value ? {{grant: grant.value}} : {{}}));
    approving.appendChild(grant);
    const reason = document.createElement("input");
    reason.placeholder = "reason (optional)"; reason.id = "reason-" + r.id;
    button(denying, "Deny", "deny-" + r.id, () => decide(r.id, "deny", {{reason: reason.value}}));
    denying.appendChild(reason);
  }}
  if (!status.classList.contains("error") && !status.textContent.startsWith("request"))
    say(answer.pending.length + " pending; signed in as " + answer.approver);
}}
document.getElementById("login").addEventListener("submit", (event) => {{
  event.preventDefault();
  sessionStorage.setItem(KEY, document.getElementById("token").value.trim());
  document.getElementById("token").value = "";
  say(""); refresh();
}});
document.getElementById("forget-token").addEventListener("click", () => {{
  sessionStorage.removeItem(KEY); say(""); refresh();
}});
refresh();
setInterval(refresh, 3000);
</script>
</body></html>
"""


async def approvals_page(request: Request) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    policy = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
              "form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
    return HTMLResponse(_PAGE.format(nonce=nonce), headers={
        "Content-Security-Policy": policy, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store"})


ROUTES = [Route("/approvals/ui", approvals_page)]
