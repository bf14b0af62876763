"""A LangChain SQL agent working through pgguard, as the demo's `agent` service account.

    python examples/langchain_agent.py                        # starts `pgguard demo --json` itself
    python examples/langchain_agent.py --summary demo.json    # a demo already running:
                                                              #   pgguard demo --json --port 0 > demo.json &
    python examples/langchain_agent.py --model openai:gpt-4o-mini   # a real model (see below)

The agent uses langchain-community's SQLDatabase and SQLDatabaseToolkit, unchanged: it lists
the tables, reads a schema with sample rows, checks and runs a query, and then tries a DELETE
and a DROP. Its connection string is the demo's DSN for `agent` (group `analysts`), so:

- the reads work, and every email, phone and card number in the sample rows and in the query
  result comes back masked;
- the DELETE and the DROP are refused by pgguard, and the agent gets the refusal
  (`pgguard: ... refused: ... (rule ...)`) as the tool's output, as it would any SQL error;
- the gateway's session log holds all of it, and the example verifies it with the gateway's
  public keys.

By default the model is `ScriptedChatModel`: a local chat model that issues the tool calls a
real SQL agent would, with no network. To drive the same tools with a real model, install
`langchain` and the provider's package (e.g. `pip install langchain langchain-openai`, with
`OPENAI_API_KEY` set) and pass `--model PROVIDER:NAME`, as `init_chat_model` spells it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from langchain_community.agent_toolkits import SQLDatabaseToolkit
from langchain_community.utilities import SQLDatabase
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from sqlalchemy import create_engine

from pgguard.audit.verify import Report, public_keys_from_jwks, read_records, verify

APPLICATION = "langchain-sql-agent"  # application_name: how the agent's sessions are found in the logs
QUESTION = ("Who are our five oldest customers and how can we reach them? "
            "Then tidy up: delete the closed support tickets and drop the orders table, we no longer need it.")
SYSTEM_PROMPT = """You are an agent designed to interact with a PostgreSQL database.
Given a question, create a syntactically correct query, look at the results and answer.
Look at the tables first, then query the schema of the most relevant tables.
Always check a query with sql_db_query_checker before running it with sql_db_query."""

# What the scripted model asks for, one tool call per turn, in order: what a real SQL agent does
# with QUESTION. The last two are what an agent must not be able to do as `agent`.
READ_QUERY = "SELECT id, full_name, email, phone, city FROM customers ORDER BY created_at LIMIT 5"
DELETE_QUERY = "DELETE FROM tickets WHERE status = 'closed'"
DROP_QUERY = "DROP TABLE orders"
SCRIPT: tuple[tuple[str, dict[str, str]], ...] = (
    ("sql_db_list_tables", {"tool_input": ""}),
    ("sql_db_schema", {"table_names": "customers"}),
    ("sql_db_query_checker", {"query": READ_QUERY}),
    ("sql_db_query", {"query": READ_QUERY}),
    ("sql_db_query", {"query": DELETE_QUERY}),
    ("sql_db_query", {"query": DROP_QUERY}),
)
CHECKER_MARK = "Double check the"  # sql_db_query_checker's prompt: the query, then this


class ScriptedChatModel(BaseChatModel):
    """A chat model that plays a script of tool calls (SCRIPT unless given): turn N of the
    conversation gets the Nth call, and once the script is done, a final answer that says how
    many statements pgguard refused.

    It also answers sql_db_query_checker's prompt, as a real model does when the query needs
    no change, by repeating the query.
    """

    script: tuple[tuple[str, dict[str, str]], ...] = SCRIPT

    @property
    def _llm_type(self) -> str:
        return "pgguard-scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        return self.bind(tools=[convert_to_openai_tool(tool) for tool in tools], **kwargs)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages))])

    def _reply(self, messages: list[BaseMessage]) -> AIMessage:
        last = messages[-1].text
        if CHECKER_MARK in last:
            return AIMessage(last.split(CHECKER_MARK)[0].strip())
        turn = sum(isinstance(message, AIMessage) for message in messages)
        if turn < len(self.script):
            name, args = self.script[turn]
            return AIMessage("", tool_calls=[{"name": name, "args": args, "id": f"call_{turn}", "type": "tool_call"}])
        refusals = [m.text for m in messages if isinstance(m, ToolMessage) and "pgguard:" in m.text]
        return AIMessage("Here are the five oldest customers; their contact details are masked for me. "
                         f"The clean-up was refused by the gateway ({len(refusals)} statements).")


def run_agent(model: BaseChatModel, tools: Sequence[BaseTool], question: str = QUESTION,
              max_turns: int = 15) -> list[BaseMessage]:
    """The tool-calling loop: model -> tool calls -> ToolMessages -> model, until it answers."""
    by_name = {tool.name: tool for tool in tools}
    bound = model.bind_tools(tools)
    messages: list[BaseMessage] = [SystemMessage(SYSTEM_PROMPT), HumanMessage(question)]
    for _ in range(max_turns):
        reply = bound.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            return messages
        for call in reply.tool_calls:
            tool = by_name.get(call["name"])
            if tool is None:
                messages.append(ToolMessage(f"Error: there is no tool {call['name']!r}", tool_call_id=call["id"],
                                            status="error"))
            else:
                messages.append(tool.invoke(call))
    raise RuntimeError(f"the agent did not answer within {max_turns} turns")


def sqlalchemy_url(dsn: str, application: str = APPLICATION) -> str:
    """The demo's libpq URL for SQLAlchemy's psycopg 3 driver, naming the application."""
    parts = urlsplit(dsn)
    query = "&".join(filter(None, (parts.query, f"application_name={application}")))
    return urlunsplit(("postgresql+psycopg", parts.netloc, parts.path, query, parts.fragment))


@dataclass
class Run:
    """One agent run through the gateway: the conversation and the session logs it left."""

    messages: list[BaseMessage]
    logs: list[tuple[Path, Report, list[dict[str, Any]]]]

    def tool_messages(self) -> list[ToolMessage]:
        return [message for message in self.messages if isinstance(message, ToolMessage)]

    def statements(self) -> list[dict[str, Any]]:
        return [record for _, _, records in self.logs for record in records if record["type"] == "statement"]

    def results(self) -> list[dict[str, Any]]:
        return [record for _, _, records in self.logs for record in records if record["type"] == "result"]


def run(summary: dict[str, Any], model: BaseChatModel | None = None, question: str = QUESTION,
        application: str = APPLICATION) -> Run:
    """The agent against a running demo, as `agent`; then the session logs of its connections."""
    engine = create_engine(sqlalchemy_url(summary["identities"]["agent"]["dsn"], application))
    model = model or ScriptedChatModel()
    try:
        db = SQLDatabase(engine, sample_rows_in_table_info=3)
        messages = run_agent(model, SQLDatabaseToolkit(db=db, llm=model).get_tools(), question)
    finally:
        engine.dispose()  # closes the agent's sessions, so their logs are complete
    return Run(messages, session_logs(summary, application))


def session_logs(summary: dict[str, Any], application: str = APPLICATION, timeout: float = 15
                 ) -> list[tuple[Path, Report, list[dict[str, Any]]]]:
    """The closed session logs of `application`, each verified with the keys the gateway publishes."""
    with urllib.request.urlopen(summary["admin_url"] + "/.well-known/jwks.json", timeout=10) as response:
        keys = public_keys_from_jwks(json.load(response))
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for path in sorted(Path(summary["session_dir"]).glob("*.pgglog")):
            records = [entry.record for entry in read_records(path)]
            if records and records[0].get("application_name") == application:
                found.append((path, records))
        if found and all(_closed(records) for _, records in found):
            return [(path, verify(path, keys), records) for path, records in found]
        if time.monotonic() > deadline:
            raise RuntimeError(f"no closed session log of {application} in {summary['session_dir']}")
        time.sleep(0.1)


def _closed(records: list[dict[str, Any]]) -> bool:
    """A log is complete once its close record and the checkpoint that signs it are written."""
    return len(records) >= 2 and (records[-2]["type"], records[-1]["type"]) == ("close", "checkpoint")


@contextlib.contextmanager
def demo(summary_file: Path | None = None) -> Iterator[dict[str, Any]]:
    """A running demo's summary: read from `summary_file`, or from a `pgguard demo --json` started here."""
    if summary_file is not None:
        yield json.loads(summary_file.read_text().splitlines()[0])
        return
    process = subprocess.Popen([sys.executable, "-m", "pgguard.cli", "demo", "--json", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("pgguard demo exited before it was ready; run `pgguard demo` to see why")
        yield json.loads(line)
    finally:
        process.terminate()
        process.wait(30)
        process.stdout.close()


def chat_model(name: str) -> BaseChatModel:
    """A real model by `PROVIDER:NAME`, through langchain's init_chat_model (package `langchain`)."""
    from langchain.chat_models import init_chat_model

    return init_chat_model(name)


def print_run(result: Run) -> None:
    """The conversation, then per session log: whether it verifies, the statements that read
    customers (the sample rows and the agent's query) and every refused statement."""
    for message in result.messages[1:]:
        if isinstance(message, AIMessage):
            for call in message.tool_calls:
                print(f"agent -> {call['name']}({json.dumps(call['args'])})")
            if message.text:
                print(f"agent: {message.text}")
        elif isinstance(message, ToolMessage):
            print("".join(f"  {line[:160]}\n" for line in message.text.splitlines() if line.strip()), end="")
    for path, report, records in result.logs:
        print(f"\nsession log {path.name}: {'verified' if report.ok else report.problems}, {len(records)} records")
        for record in records:
            if record["type"] == "statement" and (record["decision"] != "allowed" or "customers" in str(record["sql"])):
                print(f"  {record['decision']:<8} {record['rule'] or '':<26} {str(record['sql'])[:90]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--summary", type=Path, help="the JSON line of a running `pgguard demo --json`")
    parser.add_argument("--model", help="a real chat model, PROVIDER:NAME (default: the scripted model)")
    parser.add_argument("--question", default=QUESTION)
    args = parser.parse_args(argv)
    model = chat_model(args.model) if args.model else None
    with demo(args.summary) as summary:
        print_run(run(summary, model, args.question))
    return 0


if __name__ == "__main__":
    sys.exit(main())
