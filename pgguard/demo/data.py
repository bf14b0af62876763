"""Deterministic synthetic demo data and the gateway's least-privilege upstream logins.

The data exists to show masking at work: customers carry emails, phones, card
numbers (valid Luhn, so detectors that check the digit find them) and SSNs,
and support tickets quote emails and card numbers inside free text, in the
formats people actually type. A fixed seed and a fixed "today" make every run
produce byte-identical SQL, so demos and tests are reproducible. All values
are invented; emails use the reserved example.* domains.
"""

from __future__ import annotations

import dataclasses
import random
import re
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

DATABASE = "demo"
TABLES = ("customers", "orders", "tickets")

READER = "pgguard_reader"
SUPPORT = "pgguard_support"
ENGINEER = "pgguard_engineer"
ADMIN = "pgguard_admin"
LOGINS = (READER, SUPPORT, ENGINEER, ADMIN)

CUSTOMER_COUNT = 1_200
ORDER_COUNT = 6_000
TICKET_COUNT = 1_500
SEED = 20240601
# The demo world's "now": timestamps are fixed relative to it, never to the clock.
TODAY = datetime(2024, 6, 1, 9, 0, tzinfo=timezone.utc)
HISTORY = timedelta(days=3 * 365)

FIRST_NAMES = (
    "Ada", "Alan", "Amara", "Ben", "Carla", "Chen", "Dmitri", "Elena", "Fatima", "Grace",
    "Hiro", "Ines", "Jamal", "José", "Karin", "Liam", "Maria", "Mei", "Noah", "Olga",
    "Priya", "Quinn", "Rafael", "Sara", "Tomás", "Uma", "Viktor", "Wen", "Yusuf", "Zoë",
)
LAST_NAMES = (
    "Andersen", "Bauer", "Costa", "Dubois", "Eriksen", "Fischer", "García", "Hughes", "Ivanova",
    "Jensen", "Kowalski", "Lopez", "Müller", "Nakamura", "O'Brien", "Patel", "Quintero", "Rossi",
    "Schmidt", "Tanaka", "Novak", "Vargas", "Walsh", "Xu", "Yilmaz", "Zhang", "Okafor", "Silva",
)
CITIES = (
    "Amsterdam", "Austin", "Berlin", "Boston", "Chicago", "Dublin", "Lisbon", "London", "Lyon",
    "Madrid", "Melbourne", "Montréal", "Osaka", "Oslo", "Paris", "Seattle", "Toronto", "Warsaw",
)
EMAIL_DOMAINS = ("example.com", "example.net", "example.org")
ORDER_STATUSES = ("pending", "paid", "shipped", "delivered", "refunded", "cancelled")
ORDER_STATUS_WEIGHTS = (8, 20, 15, 50, 4, 3)
TICKET_STATUSES = ("open", "pending", "closed")
TICKET_STATUS_WEIGHTS = (3, 2, 5)
CARD_STYLES = ("plain", "spaced", "dashed")

# (subject, body). Fields: {email}, {card}, {last4}, {order}, {other_email}.
TICKET_TEMPLATES = (
    ("Charged twice",
     "Hi, I was charged twice on my card {card} for order #{order}. "
     "Please refund one of the charges. You can reach me at {email}."),
    ("Update contact email",
     "Please change the email on my account to {email}; the old address no longer works."),
    ("Card declined",
     "My card {card} was declined at checkout although it is valid until next year. "
     "Could you check what went wrong?"),
    ("Where is my order?",
     "Order #{order} has not arrived yet.\nI'm writing from {email}, please reply there."),
    ("Duplicate charge (phone call)",
     "Customer called about a duplicate charge on order #{order}.\n"
     "Card on file: {card}\nContact: {email}\nAgent: refund approved."),
    ("Which card do you have on file?",
     "Can you confirm which card you have on file? I think it is {card}, the one ending in {last4}."),
    ("Wrong delivery address",
     "The delivery address on order #{order} is wrong. Please call me back, I'd rather not email."),
    ("Account shared with partner",
     "Please send receipts to both {email} and my partner at {other_email}."),
    ("Refund not received",
     "I returned order #{order} two weeks ago and the refund to card {card} hasn't shown up. "
     "My email is {email}."),
    ("Cannot log in",
     "Password reset emails never reach {email}. Checked spam too."),
)


@dataclasses.dataclass(frozen=True)
class Customer:
    id: int
    full_name: str
    email: str
    phone: str
    card_number: str
    ssn: str
    city: str
    created_at: datetime


@dataclasses.dataclass(frozen=True)
class Order:
    id: int
    customer_id: int
    total: str
    status: str
    created_at: datetime


@dataclasses.dataclass(frozen=True)
class Ticket:
    id: int
    customer_id: int
    subject: str
    body: str
    status: str


SCHEMA_SQL = """\
CREATE TABLE public.customers (
    id          serial PRIMARY KEY,
    full_name   text NOT NULL,
    email       text NOT NULL UNIQUE,
    phone       text NOT NULL,
    card_number text NOT NULL,
    ssn         text NOT NULL,
    city        text NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE TABLE public.orders (
    id          serial PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES public.customers (id),
    total       numeric(10,2) NOT NULL,
    status      text NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE TABLE public.tickets (
    id          serial PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES public.customers (id),
    subject     text NOT NULL,
    body        text NOT NULL,
    status      text NOT NULL
);
"""

# Rows are loaded with explicit ids, so the sequences must be moved past them.
FINISH_SQL = "".join(
    f"SELECT setval('public.{table}_id_seq', (SELECT max(id) FROM public.{table}));\n"
    for table in TABLES
) + """\
CREATE INDEX orders_customer_id_idx ON public.orders (customer_id);
CREATE INDEX tickets_customer_id_idx ON public.tickets (customer_id);
ANALYZE public.customers, public.orders, public.tickets;
"""


def demo_data_sql() -> str:
    """The schema and all rows as one psql script (COPY blocks): identical on every call."""
    rng = random.Random(SEED)
    customers = [_customer(rng, i) for i in range(1, CUSTOMER_COUNT + 1)]
    orders = [_order(rng, i, customers) for i in range(1, ORDER_COUNT + 1)]
    tickets = [_ticket(rng, i, customers) for i in range(1, TICKET_COUNT + 1)]
    return "".join([
        SCHEMA_SQL,
        _copy("public.customers", customers),
        _copy("public.orders", orders),
        _copy("public.tickets", tickets),
        FINISH_SQL,
    ])


def logins_sql(passwords: Mapping[str, str]) -> str:
    """SQL creating the logins the gateway holds, one per demo role, each with only what it needs.

    Run it in the demo database after `demo_data_sql()`. `passwords` maps every
    name in LOGINS to its password; they are stored as SCRAM verifiers because
    the server's password_encryption is scram-sha-256.

    - READER: SELECT on every table in public, and read-only by default, so
      even a statement the gateway let through by mistake cannot write.
    - SUPPORT: SELECT on customers, orders, tickets; writes tickets only.
    - ENGINEER: everything on public's tables and sequences, CREATE on the
      schema, and ownership of the demo tables, since PostgreSQL lets only an
      owner ALTER a table or CREATE INDEX on it (engineers run DDL).
    - ADMIN: SUPERUSER. The dba role "may do anything", including roles,
      extensions and other databases, which no owner-level grant covers.
    """
    missing = [name for name in LOGINS if name not in passwords]
    if missing:
        raise ValueError(f"no password for {', '.join(missing)}")
    creates = "".join(
        f"CREATE ROLE {name} LOGIN{' SUPERUSER' if name == ADMIN else ''}"
        f" PASSWORD {_literal(passwords[name])};\n"
        for name in LOGINS
    )
    owners = "".join(f"ALTER TABLE public.{table} OWNER TO {ENGINEER};\n" for table in TABLES)
    demo_tables = ", ".join(f"public.{table}" for table in TABLES)
    return creates + owners + f"""\
ALTER ROLE {READER} SET default_transaction_read_only = on;
GRANT USAGE ON SCHEMA public TO {READER}, {SUPPORT}, {ENGINEER};
GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READER};
GRANT SELECT ON {demo_tables} TO {SUPPORT};
GRANT INSERT, UPDATE, DELETE ON public.tickets TO {SUPPORT};
GRANT USAGE ON SEQUENCE public.tickets_id_seq TO {SUPPORT};
GRANT ALL ON ALL TABLES IN SCHEMA public TO {ENGINEER};
GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {ENGINEER};
GRANT CREATE ON SCHEMA public TO {ENGINEER};
ALTER DEFAULT PRIVILEGES FOR ROLE {ENGINEER}, {ADMIN} IN SCHEMA public GRANT SELECT ON TABLES TO {READER};
ALTER DEFAULT PRIVILEGES FOR ROLE {ADMIN} IN SCHEMA public GRANT ALL ON TABLES TO {ENGINEER};
ALTER DEFAULT PRIVILEGES FOR ROLE {ADMIN} IN SCHEMA public GRANT ALL ON SEQUENCES TO {ENGINEER};
"""


def format_card(card_number: str, style: str) -> str:
    """A 16-digit card number as people write it: plain, or in groups of four split by spaces or dashes."""
    groups = [card_number[i:i + 4] for i in range(0, len(card_number), 4)]
    separators = {"plain": "", "spaced": " ", "dashed": "-"}
    return separators[style].join(groups)


def _customer(rng: random.Random, customer_id: int) -> Customer:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    return Customer(
        id=customer_id,
        full_name=f"{first} {last}",
        email=f"{_ascii_word(first)}.{_ascii_word(last)}{customer_id}@{rng.choice(EMAIL_DOMAINS)}",
        phone=f"+1-{rng.randint(201, 989)}-555-{rng.randint(0, 9999):04d}",
        card_number=_card_number(rng),
        ssn=f"{rng.randint(100, 665):03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}",
        city=rng.choice(CITIES),
        created_at=TODAY - timedelta(seconds=rng.randrange(int(HISTORY.total_seconds()))),
    )


def _order(rng: random.Random, order_id: int, customers: Sequence[Customer]) -> Order:
    customer = rng.choice(customers)
    since_signup = int((TODAY - customer.created_at).total_seconds())
    cents = rng.randint(500, 250_000)
    return Order(
        id=order_id,
        customer_id=customer.id,
        total=f"{cents // 100}.{cents % 100:02d}",
        status=rng.choices(ORDER_STATUSES, ORDER_STATUS_WEIGHTS)[0],
        created_at=customer.created_at + timedelta(seconds=rng.randrange(since_signup + 1)),
    )


def _ticket(rng: random.Random, ticket_id: int, customers: Sequence[Customer]) -> Ticket:
    customer = rng.choice(customers)
    subject, template = rng.choice(TICKET_TEMPLATES)
    body = template.format(
        email=customer.email,
        card=format_card(customer.card_number, rng.choice(CARD_STYLES)),
        last4=customer.card_number[-4:],
        order=rng.randint(1, ORDER_COUNT),
        other_email=rng.choice(customers).email,
    )
    return Ticket(
        id=ticket_id,
        customer_id=customer.id,
        subject=subject,
        body=body,
        status=rng.choices(TICKET_STATUSES, TICKET_STATUS_WEIGHTS)[0],
    )


def _card_number(rng: random.Random) -> str:
    """16 digits with a Visa- or Mastercard-like prefix and a correct Luhn check digit."""
    prefix = rng.choice(("4", "51", "52", "53", "54", "55"))
    payload = prefix + "".join(str(rng.randrange(10)) for _ in range(15 - len(prefix)))
    return payload + _luhn_check_digit(payload)


def _luhn_check_digit(payload: str) -> str:
    total = 0
    for position, char in enumerate(reversed(payload)):
        digit = int(char)
        if position % 2 == 0:  # these get doubled once the check digit is appended
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return str(-total % 10)


def _ascii_word(name: str) -> str:
    """'Zoë' -> 'zoe', "O'Brien" -> 'obrien': names as they appear in email addresses."""
    decomposed = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z]", "", decomposed.lower())


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy(table: str, rows: Sequence[Any]) -> str:
    """A COPY ... FROM STDIN block (text format) for rows of one dataclass, columns named by its fields."""
    columns = ", ".join(field.name for field in dataclasses.fields(rows[0]))
    lines = "".join(
        "\t".join(_copy_value(value) for value in dataclasses.astuple(row)) + "\n" for row in rows
    )
    return f"COPY {table} ({columns}) FROM STDIN;\n{lines}\\.\n"


def _copy_value(value: object) -> str:
    text = value.isoformat(sep=" ") if isinstance(value, datetime) else str(value)
    return text.translate(_COPY_ESCAPES)


def _literal(text: str) -> str:
    """A SQL string literal (standard_conforming_strings is on by default)."""
    return "'" + text.replace("'", "''") + "'"
