"""Rows that ResultMasking cannot pair with a request it was told about are NULL, never passed on raw.

The relay tells ResultMasking every request it forwards, and the server answers them in order. Were
the two ever to disagree (the server skipping a request the relay counted, as a Sync sent during
COPY FROM STDIN once was), rows would reach a request that produces none: they are NULL.
"""

from __future__ import annotations

import pytest
from test_masking_lineage import FakeCatalog

from pgguard.masking.detectors import Scrubber
from pgguard.masking.functions import MaskSpec
from pgguard.masking.lineage import lineages
from pgguard.masking.plan import Clearance, MaskingRules
from pgguard.masking.results import ResultMasking
from pgguard.policy.catalog import EMPTY
from pgguard.wire import backend
from pgguard.wire.backend import DataRow, FieldDescription
from pgguard.wire.framing import Frame

RULES = MaskingRules({"public.customers.email": MaskSpec("email")})
ANALYST = Clearance(RULES, (), Scrubber(["email"]), strict=True)
FIELDS = [FieldDescription("n", 0, 0, 25, -1, -1, 0)]
ROW = DataRow([b"ben@example.net is raw"])


def masking() -> ResultMasking:
    return ResultMasking(ANALYST, lambda sql: lineages(sql, FakeCatalog()), lambda: EMPTY, lambda: 0)


def answer(masking: ResultMasking, *messages: backend.Message) -> list[backend.Message]:
    out = []
    for message in messages:
        data = message.encode()
        out.append(backend.decode_backend(Frame(data[0], masking.server(data[0], data))))
    return out


@pytest.mark.parametrize("asked", ["nothing", "sync", "parse", "call"])
def test_rows_answering_a_request_that_returns_none_are_null(asked: str) -> None:
    result = masking()
    if asked == "sync":
        result.sync()
    elif asked == "parse":
        result.parse("", "SELECT 1")
    elif asked == "call":
        result.function_call()
    rows = answer(result, backend.RowDescription(FIELDS), ROW, ROW)
    assert rows[1:] == [DataRow([None]), DataRow([None])]


def test_rows_without_a_row_description_answering_nothing_are_null() -> None:
    assert answer(masking(), ROW) == [DataRow([None])]


def test_rows_of_a_query_it_was_told_about_are_masked_by_its_plan() -> None:
    result = masking()
    result.query("SELECT 'ben@example.net is raw' AS n")
    assert answer(result, backend.RowDescription(FIELDS), ROW)[1:] == [DataRow([b"***@example.net is raw"])]
