"""From a query's lineage to a masking plan, and from a plan to a row masker.

Two steps, because the two halves of the information arrive at different
times. When the statement is seen, its lineage says which output columns
derive from which table columns: that is enough to decide whether it may
run at all (fail closed) and what each output position needs. When the
server's RowDescription arrives, it fixes each column's type and format, and
names the table column of every plain column reference; only then can each
column's mask be built. A column the RowDescription ties to a sensitive
table column is masked with that column's function whatever the lineage said.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import partial
from pathlib import Path
from typing import Any

from pgguard.config import ConfigError, RoleConfig
from pgguard.masking.detectors import DETECTORS, Scrubber
from pgguard.masking.functions import MaskSpec, ValueMask, column_mask
from pgguard.masking.lineage import TOTAL_FUNCTIONS, Lineage, SourceColumn
from pgguard.masking.readings import binary_readings, float8_text_readings, is_text, text_readings
from pgguard.masking.system_columns import is_hidden
from pgguard.masking.values import BINARY_FORMAT, BYTEA, FLOAT8, JSON_TYPES, NO_FREE_TEXT, TEXT_ARRAYS, TEXT_TYPES
from pgguard.wire.backend import FieldDescription

# What a derived value of a sensitive column becomes: NULL, valid for every type.
NULLIFY = MaskSpec("null")
# Every detector: for what comes from a relation the catalog does not know
# yet, and for the messages of statements that read hidden columns.
EVERY_DETECTOR = Scrubber(DETECTORS)

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_SQL_NULL = b"\xff\xff\xff\xff"  # a value's length of -1


@dataclass(frozen=True)
class MaskingRules:
    """The [masking] section: which columns are sensitive and how each is shown."""

    columns: dict[str, MaskSpec]  # schema.table.column -> function
    key: bytes = b""

    @property
    def sensitive(self) -> tuple[SourceColumn, ...]:
        """The sensitive columns as lineage names them, in the config's order."""
        return tuple(SourceColumn(*name.rsplit(".", 1)) for name in self.columns)

    @classmethod
    def from_config(cls, table: dict[str, Any], base: Path) -> MaskingRules:
        columns = {}
        for name, value in table.get("columns", {}).items():
            if name.count(".") != 2:
                raise ConfigError(f"[masking.columns] {name!r}: expected schema.table.column")
            columns[name] = MaskSpec.parse(value, f"masking.columns.{name}")
        key = b""
        if "key_file" in table:
            try:
                key = (base / table["key_file"]).read_bytes().strip()
            except OSError as exc:
                raise ConfigError(f"[masking] key_file: {exc.strerror}") from exc
        if not key and any(spec.needs_key for spec in columns.values()):
            raise ConfigError("[masking] key_file is required by the hmac and fake functions")
        return cls(columns, key)


@dataclass(frozen=True)
class Clearance:
    """What one session's roles may see raw: the union of their clearances."""

    rules: MaskingRules
    unmasked: tuple[str, ...]
    scrubber: Scrubber | None
    strict: bool
    # A role may run anything (`statements = ["*"]`): PostgreSQL's own query texts and connection
    # strings are shown as its login's backends see them (system_columns.py).
    sees_system: bool = False

    def spec_for(self, column: SourceColumn) -> MaskSpec | None:
        """The mask a sensitive column gets in this session; None if it is shown raw."""
        name = str(column)
        if is_hidden(column.relation, column.column):
            # Cleared only by its exact name: `*` in `unmasked` is meant for the data.
            return None if self.sees_system or name in self.unmasked else NULLIFY
        spec = self.rules.columns.get(name)
        if spec is None or any(fnmatchcase(name, pattern) for pattern in self.unmasked):
            return None
        return spec

    def hidden(self, columns: Iterable[SourceColumn]) -> list[SourceColumn]:
        return sorted((c for c in columns if self.spec_for(c) is not None), key=str)

    def strictly_hidden(self, columns: Iterable[SourceColumn]) -> list[SourceColumn]:
        """The hidden columns no filter or computation may use: all of them for a strict role, and
        PostgreSQL's own query texts and connection strings for every role."""
        return [c for c in self.hidden(columns) if self.strict or is_hidden(c.relation, c.column)]

    @property
    def active(self) -> bool:
        return not self.sees_system or self.scrubber is not None or any(
            not any(fnmatchcase(name, pattern) for pattern in self.unmasked) for name in self.rules.columns)


def clearance_for(rules: MaskingRules, default_detectors: list[str], roles: Iterable[RoleConfig]) -> Clearance:
    """A session's clearance: the union of its roles' grants.

    A column is shown raw if any role is cleared for it; a detector runs only
    if every role has it (a role without `detectors` has the [masking]
    defaults, unless it is cleared for everything); inference is refused only
    if every role is strict.
    """
    unmasked: list[str] = []
    detectors: set[str] | None = None
    strict = True
    sees_system = False
    for role in roles:
        sees_system = sees_system or "*" in _strings(role.rules.get("statements", []), f"roles.{role.name}.statements")
        patterns = _strings(role.rules.get("unmasked", []), f"roles.{role.name}.unmasked")
        unmasked.extend(patterns)
        default = [] if "*" in patterns else default_detectors
        names = set(_strings(role.rules.get("detectors", default), f"roles.{role.name}.detectors"))
        detectors = names if detectors is None else detectors & names
        strict = strict and bool(role.rules.get("strict_inference", False))
    scrubber = Scrubber.parse(sorted(detectors), "roles.detectors") if detectors else None
    return Clearance(rules, tuple(unmasked), scrubber, strict, sees_system)


def _strings(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"[{where}] must be a list of strings")
    return value


@dataclass(frozen=True)
class ResultPlan:
    # Per output position: the mask, or None to pass it; None for a shape
    # lineage could not fix (then nothing sensitive was touched).
    columns: tuple[MaskSpec | None, ...] | None
    # Every column hidden, whatever the shape: for rows whose lineage is lost.
    hide_all: bool = False
    # The statement reads a column the session may not see, or changes rows that
    # hold one: its errors and notices may quote values (`ssn::date` fails with
    # the SSN in the message, a NOT NULL violation with the whole row).
    reads_hidden: bool = False
    # It reads a relation the catalog does not know yet (see Lineage.unresolved):
    # every value gets every detector.
    unresolved: bool = False

    def scrubber(self, clearance: Clearance) -> Scrubber | None:
        """The detectors for this result's values that no column mask covers."""
        return EVERY_DETECTOR if self.unresolved else clearance.scrubber

    @property
    def hides_anything(self) -> bool:
        return self.hide_all or any(spec is not None for spec in self.columns or ())


class MaskingRefused(Exception):
    """The statement would reveal a column the session may not see, or its lineage is unknown."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def plan(lineage: Lineage, clearance: Clearance) -> ResultPlan:
    """The plan for a statement's result; raises MaskingRefused where masking cannot be guaranteed."""
    touched = clearance.hidden(lineage.touched | lineage.filters)
    if lineage.uncertain and touched:
        raise MaskingRefused(f"the statement reads {_listed(touched, lineage)}, and pgguard cannot tell "
                             f"where its values end up ({lineage.uncertain[0]})")
    for targets, values in lineage.written:
        copied = clearance.hidden(values)
        if not copied:
            continue
        # A hidden value may only go where it stays masked the same way: into
        # a column this session sees masked with the same function.
        specs = {clearance.spec_for(column) for column in copied}
        specs |= {clearance.spec_for(column) for column in targets} if targets else {None}
        if None in specs or len(specs) > 1:
            where = ", ".join(sorted(map(str, targets))) if targets else \
                "a new table, a setting, a notification or columns pgguard cannot follow"
            raise MaskingRefused(f"the statement writes values of {_listed(copied, lineage)} into {where},"
                                 " where they could be read back unmasked")
    derived = clearance.hidden(lineage.derived_writes)
    if derived:
        raise MaskingRefused(f"the statement writes values derived from {_listed(derived, lineage)} into a column,"
                             " whose mask could show other parts of them; write the column's own value unchanged")
    inferred = clearance.strictly_hidden(lineage.filters)
    if inferred:
        raise MaskingRefused(f"the statement filters, groups, joins or sorts on {_listed(inferred, lineage)},"
                             " which reveals its values")
    computed = clearance.strictly_hidden(lineage.computed)
    if computed:
        uses = ", ".join(f"{column} ({lineage.computed[column]})" for column in computed)
        raise MaskingRefused(f"the statement computes with {uses}, which reveals its values: whether that fails, "
                             "how long it takes or how many rows it makes depends on them; a strict role may read "
                             "a hidden column only as itself, cast to text without a length, or through "
                             f"{'(), '.join(TOTAL_FUNCTIONS)}()")
    if lineage.columns is None:
        if touched:
            raise MaskingRefused(f"the statement reads {_listed(touched, lineage)} into columns pgguard "
                                 "cannot follow")
        return ResultPlan(None, unresolved=lineage.unresolved)
    columns = []
    for column in lineage.columns:
        hidden = clearance.hidden(column.sources)
        if not hidden:
            columns.append(None)
        elif column.direct and len(hidden) == 1:
            columns.append(clearance.spec_for(hidden[0]))
        else:
            columns.append(NULLIFY)
    return ResultPlan(tuple(columns), reads_hidden=bool(touched or clearance.hidden(lineage.changed)),
                      unresolved=lineage.unresolved)


def as_shown(spec: MaskSpec | None) -> MaskSpec | None:
    """The mask a column read as itself gets from its spec: none for a `scrub` column, whose own
    values get the detectors like any unclassified column's (only what is computed from it is NULL)."""
    return None if spec is not None and spec.function == "scrub" else spec


def _listed(columns: list[SourceColumn], lineage: Lineage) -> str:
    """Hidden columns, for a refusal, with the user-defined functions through which the statement reads them."""
    names = sorted(name for name, read in lineage.functions.items() if read.intersection(columns))
    through = f" (through {', '.join(name + '()' for name in names)})" if names else ""
    return ", ".join(map(str, columns)) + through


class RowMasker:
    """Rewrites DataRow messages, one at a time, with a mask per column.

    Only the values of masked columns are cut out; the bytes around them are
    copied in runs, and a row in which no mask changed anything (the
    detectors found nothing) is passed on as the very same object.
    """

    def __init__(self, masks: list[ValueMask | None]) -> None:
        self.masks = masks

    @property
    def masks(self) -> list[ValueMask | None]:
        return self._masks

    @masks.setter
    def masks(self, masks: list[ValueMask | None]) -> None:
        self._masks = masks
        # (position, mask) of the masked columns only, in order: the rest are skipped.
        self._masked = tuple((index, mask) for index, mask in enumerate(masks) if mask is not None)

    def mask(self, message: bytes) -> bytes:
        """A DataRow message (tag and length included) with its values masked."""
        (count,) = _INT16.unpack_from(message, 5)
        unpack = _INT32.unpack_from
        parts: list[bytes] = []
        pos, column = 7, 0
        copied = 5  # message[copied:pos] goes out as it came, unless a value in it changes
        for index, mask in self._masked:
            if index >= count:
                break
            while column < index:
                (length,) = unpack(message, pos)
                pos += 4 + length if length > 0 else 4
                column += 1
            (length,) = unpack(message, pos)
            column += 1
            start = pos + 4
            if length < 0:  # SQL NULL stays NULL
                pos = start
                continue
            pos = start + length
            value = message[start:pos]
            masked = mask(value)
            if masked is value:
                continue
            parts.append(message[copied:start - 4])
            parts.append(_SQL_NULL if masked is None else _INT32.pack(len(masked)) + masked)
            copied = pos
        if not parts:
            return message
        parts.append(message[copied:])
        body = b"".join(parts)
        return b"D" + _INT32.pack(len(body) + 4) + body


def row_masker(result: ResultPlan, fields: list[FieldDescription], formats: list[int] | None,
               clearance: Clearance, table_column: Callable[[int, int], SourceColumn | None]) -> RowMasker | None:
    """The masker for a result, once RowDescription fixed its types; None when nothing needs masking.

    `formats` are the result formats the client asked for in Bind (one for
    all, or one per column), overriding RowDescription's, which a Describe of
    a statement reports as text. `table_column` maps RowDescription's table
    OID and attribute number to the table column, where the server gives one.
    """
    planned = result.columns
    misaligned = planned is not None and len(planned) != len(fields)
    scrubber = result.scrubber(clearance)
    masks: list[ValueMask | None] = []
    for index, field in enumerate(fields):
        fmt = _format(formats, index, field.format)
        spec: MaskSpec | None = None
        source = table_column(field.table_oid, field.column_number) if field.table_oid else None
        if source is not None:
            spec = clearance.spec_for(source)
        if planned is not None and as_shown(spec) is None:  # lineage may know it for derived: NULL
            spec = NULLIFY if misaligned else planned[index]
        spec = as_shown(spec)
        if spec is not None:
            masks.append(column_mask(spec, field.type_oid, fmt, clearance.rules.key))
        elif scrubber is not None:
            masks.append(detector_mask(scrubber, field.type_oid, fmt))
        else:
            masks.append(None)
    return RowMasker(masks) if any(mask is not None for mask in masks) else None


def detector_mask(scrubber: Scrubber, type_oid: int | None, fmt: int) -> ValueMask | None:
    """The content detectors for a column of a type (None: unknown, no RowDescription seen) and format.

    Text and JSON are masked in place, as are text arrays in text format and
    bytea (in text format its hex is decoded first, or the client's decoding
    would reveal what the hex hides). A value of any other type in which a
    detector finds something, in any way a client may read it (an array or
    record holding free text, a card number cast to bigint, numeric, float8 or
    money; see readings.py), becomes NULL, the one value every type admits.
    Types that hold no free text are skipped.
    """
    binary = fmt == BINARY_FORMAT
    if type_oid in TEXT_TYPES:
        return scrubber.scrub_bytes
    if type_oid in JSON_TYPES:
        return scrubber.scrub_json
    if type_oid in NO_FREE_TEXT:
        return None
    if type_oid == BYTEA:
        return partial(_scrub_bytea_binary if binary else _scrub_bytea_text, scrubber)
    if type_oid in TEXT_ARRAYS and not binary:
        return scrubber.scrub_bytes
    if binary:
        return partial(_null_if_found, scrubber, partial(binary_readings, type_oid))
    return partial(_null_if_found, scrubber, float8_text_readings if type_oid == FLOAT8 else text_readings)


def _null_if_found(scrubber: Scrubber, readings: Callable[[bytes], Iterable[bytes]], value: bytes) -> bytes | None:
    for seen in readings(value):
        if scrubber.scrub_bytes(seen) is not seen:
            return None
    return value


def _scrub_bytea_binary(scrubber: Scrubber, value: bytes) -> bytes:
    return scrubber.scrub_bytes(value) if is_text(value) else value


def _scrub_bytea_text(scrubber: Scrubber, value: bytes) -> bytes | None:
    """bytea in text format: hex (`\\x…`, the default) is scrubbed as the bytes it stands for."""
    if not value.startswith(b"\\x"):
        # bytea_output = escape: printable bytes are themselves, so a find is
        # visible in the text; the value cannot be masked in place.
        return _null_if_found(scrubber, text_readings, value)
    try:
        raw = bytes.fromhex(value[2:].decode("ascii"))
    except ValueError:
        return None
    if not is_text(raw):
        return value
    scrubbed = scrubber.scrub_bytes(raw)
    return value if scrubbed is raw else b"\\x" + scrubbed.hex().encode("ascii")


def _format(formats: list[int] | None, index: int, described: int) -> int:
    if not formats:
        return described
    return formats[0] if len(formats) == 1 else formats[index]
