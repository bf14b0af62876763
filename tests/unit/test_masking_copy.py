"""COPY ... TO STDOUT data masked column by column: options, the three formats, rows split across messages."""

from __future__ import annotations

import struct

import pytest

from pgguard.masking.copy import (BinaryMasker, CopyMasker, CopyOptions, CopyPlan, CopyUnreadable, CsvMasker,
                                  TextMasker, copy_masker, copy_plan, text_fields, unescape_text)
from pgguard.masking.detectors import Scrubber
from pgguard.masking.functions import MaskSpec, ValueMask, column_mask
from pgguard.masking.lineage import lineage
from pgguard.masking.plan import NULLIFY, Clearance, MaskingRefused, MaskingRules, ResultPlan, plan
from pgguard.masking.values import BINARY_FORMAT, INT4, TEXT, TEXT_FORMAT
from pgguard.wire.backend import CopyOutResponse
from test_masking_lineage import FakeCatalog

RULES = MaskingRules({"public.customers.email": MaskSpec("email"), "public.customers.ssn": MaskSpec("redact")})
ANALYST = Clearance(RULES, (), Scrubber(["card_number", "email"]), strict=True)
TYPES = {"id": INT4, "email": TEXT, "ssn": TEXT, "full_name": TEXT, "city": TEXT}
REDACT_TEXT = column_mask(MaskSpec("redact"), TEXT, TEXT_FORMAT)
CARD = b"4111 1111 1111 1111"


def copy_of(sql: str, clearance: Clearance = ANALYST, encoding: str | None = "UTF8") -> ResultPlan:
    found = lineage(sql, FakeCatalog())
    return copy_plan(found, plan(found, clearance), lambda column: TYPES.get(column.column), encoding)


def message(data: bytes) -> bytes:
    return b"d" + struct.pack("!i", len(data) + 4) + data


def run(masker: CopyMasker, data: bytes, pieces: int | None = None) -> bytes:
    """The data through the masker in CopyData messages of `pieces` bytes (all at once if None)."""
    size = pieces or max(len(data), 1)
    out = b""
    for start in range(0, len(data), size):
        sent = masker.copy_data(message(data[start:start + size]))
        if sent:
            assert sent[:1] == b"d" and struct.unpack_from("!i", sent, 1)[0] == len(sent) - 1
            out += sent[5:]
    masker.done()
    return out


def text(masks: list[ValueMask | None], exact: bool = True, **options: object) -> TextMasker:
    return TextMasker(masks, CopyOptions(**options), exact)  # type: ignore[arg-type]


def csv(masks: list[ValueMask | None], exact: bool = True, **options: object) -> CsvMasker:
    settings: dict[str, object] = {"format": "csv", "delimiter": b",", "null": b"", **options}
    return CsvMasker(masks, CopyOptions(**settings), exact)  # type: ignore[arg-type]


# --- options -------------------------------------------------------------------------------------


def options_of(sql: str) -> CopyOptions:
    result = copy_of(sql)
    assert isinstance(result, CopyPlan)
    return result.options


def test_defaults_per_format():
    assert options_of("COPY customers TO STDOUT") == CopyOptions()
    assert options_of("COPY customers TO STDOUT (FORMAT csv)") == CopyOptions("csv", b",", b"", b'"', b'"')
    assert options_of("COPY customers TO STDOUT (FORMAT binary)").format == "binary"


@pytest.mark.parametrize(("sql", "expected"), [
    ("COPY customers TO STDOUT WITH CSV HEADER", CopyOptions("csv", b",", b"", b'"', b'"', header=True)),
    ("COPY customers TO STDOUT BINARY", CopyOptions("binary")),
    ("COPY customers TO STDOUT WITH DELIMITER '|' NULL AS '\\N'", CopyOptions(delimiter=b"|")),
    ("COPY customers TO STDOUT (FORMAT csv, DELIMITER ';', NULL 'n/a', QUOTE '''', ESCAPE '\\', HEADER on,"
     " FORCE_QUOTE (email), ENCODING 'latin1')",
     CopyOptions("csv", b";", b"n/a", b"'", b"\\", header=True, encoding="latin1", force_quote=("email",))),
    ("COPY customers TO STDOUT (FORMAT csv, FORCE_QUOTE *, HEADER 0)",
     CopyOptions("csv", b",", b"", b'"', b'"', force_quote=True)),
    ("COPY customers TO STDOUT WITH CSV QUOTE '\"' FORCE QUOTE email, ssn",
     CopyOptions("csv", b",", b"", force_quote=("email", "ssn"))),
])
def test_options_new_and_old_syntax(sql, expected):
    assert options_of(sql) == expected


@pytest.mark.parametrize(("sql", "reason"), [
    ("COPY customers TO STDOUT (FORMAT csv, FORCE_NOT_NULL (email))", "FORCE_NOT_NULL"),
    ("COPY customers TO STDOUT (FREEZE)", "FREEZE"),
    ("COPY customers TO STDOUT (FORMAT xml)", "format xml"),
    ("COPY customers TO STDOUT (FORMAT csv, HEADER match)", "HEADER match"),
    ("COPY customers TO STDOUT (DELIMITER '§')", "one-byte"),
    ("COPY customers TO STDOUT (ENCODING 'SJIS')", "encoding SJIS"),
    ("COPY customers TO STDOUT (FORMAT csv, ENCODING 'win932')", "encoding win932"),
    ("COPY customers TO STDOUT (NULL '')", "NULL string"),
    ("COPY customers TO STDOUT (NULL '444-07-2101')", "NULL string"),
    ("COPY customers TO STDOUT (NULL '\\\\')", "NULL string"),
    ("COPY customers FROM STDIN", "COPY FROM"),
    ("COPY customers TO '/tmp/x'", "a file"),
    ("COPY (SELECT email FROM customers) TO PROGRAM 'cat'", "a program"),
])
def test_what_cannot_be_read_back_exactly_is_refused(sql, reason):
    with pytest.raises(MaskingRefused, match=reason):
        copy_of(sql)


def test_a_client_encoding_that_hides_ascii_in_multibyte_characters_is_refused_but_binary_is_not():
    with pytest.raises(MaskingRefused, match="encoding BIG5"):
        copy_of("COPY customers TO STDOUT (FORMAT csv)", encoding="BIG5")
    assert copy_of("COPY customers TO STDOUT (FORMAT csv, ENCODING 'UTF8')", encoding="BIG5")
    assert copy_of("COPY customers TO STDOUT (FORMAT binary)", encoding="BIG5")


def test_null_strings_no_value_prints_as_are_taken_and_without_hidden_columns_any():
    assert options_of("COPY customers TO STDOUT (NULL '\\N')").null == b"\\N"
    assert options_of("COPY customers TO STDOUT (NULL '\\x')").null == b"\\x"
    assert options_of("COPY customers TO STDOUT (FORMAT csv, NULL 'x')").null == b"x"
    assert options_of("COPY orders TO STDOUT (NULL '')").null == b""


def test_types_come_from_the_catalog_only_for_a_columns_unchanged_value():
    result = copy_of("COPY (SELECT id, email, ssn::text, lower(email), full_name FROM customers) TO STDOUT")
    assert isinstance(result, CopyPlan)
    assert result.types == (INT4, TEXT, None, None, TEXT)
    assert result.columns == (None, MaskSpec("email"), NULLIFY, NULLIFY, None)
    through_view = copy_of("COPY (SELECT * FROM contacts) TO STDOUT")
    assert isinstance(through_view, CopyPlan) and through_view.types == (None, None)


def test_copy_of_a_table_in_its_column_order():
    result = copy_of("COPY customers (ssn, id) TO STDOUT")
    assert isinstance(result, CopyPlan)
    assert result.columns == (MaskSpec("redact"), None) and result.types == (TEXT, INT4)


# --- text format ---------------------------------------------------------------------------------


def test_text_rows_masked_escaped_and_nulls_kept():
    masker = text([None, REDACT_TEXT, None])
    data = b"1\ta\\tb\\\\\tc\n2\t\\N\tx\n"
    assert run(masker, data) == b"1\t[redacted]\tc\n2\t\\N\tx\n"


@pytest.mark.parametrize("pieces", [1, 2, 3, 7, None])
def test_text_rows_split_across_messages_or_packed_in_one(pieces):
    masker = text([None, REDACT_TEXT])
    rows = b"".join(b"%d\tsecret number %d\n" % (n, n) for n in range(20))
    assert run(masker, rows, pieces) == b"".join(b"%d\t[redacted]\n" % n for n in range(20))


@pytest.mark.parametrize("masked", [b"tab\there", b"new\nline", b"back\\slash", b"cr\rx", b"pipe|x", b"\\N",
                                    b"bell\x07", b"\x08\x0c\x0b"])
def test_masked_text_is_escaped_as_postgresql_escapes_it(masked):
    masker = text([lambda value: masked, None], delimiter=b"|")
    out = run(masker, b"a|b\n")
    fields = text_fields(out[:-1], b"|")
    assert len(fields) == 2 and unescape_text(fields[0]) == masked and fields[1] == b"b"
    assert out.count(b"\n") == 1


def test_unescape_reads_every_escape_copy_from_reads():
    assert unescape_text(b"\\101\\x42\\t\\n\\\\\\q\\x") == b"AB\t\n\\qx"


def test_a_masked_value_that_is_null_prints_as_the_null_string():
    masker = text([lambda value: None, None], null=b"\\N")
    assert run(masker, b"x\ty\n") == b"\\N\ty\n"


def test_text_header_passes_and_unchanged_rows_are_the_servers_bytes():
    masker = text([None, Scrubber(["email"]).scrub_bytes], header=True)
    data = b"id\tnote\n1\tnothing here \\\\ at all\n2\tmail a.b@example.com\n"
    out = run(masker, data)
    assert out.startswith(b"id\tnote\n1\tnothing here \\\\ at all\n") and b"a.b@" not in out


def test_a_row_of_another_width_or_cut_short_ends_the_copy():
    with pytest.raises(CopyUnreadable):
        run(text([None, REDACT_TEXT]), b"1\t2\t3\n")
    with pytest.raises(CopyUnreadable, match="inside a row"):
        run(text([None, REDACT_TEXT]), b"1\t2\n3\t")
    with pytest.raises(CopyUnreadable, match="backslash"):
        run(text([None, REDACT_TEXT]), b"1\t2\\\n")


def test_in_an_uncertain_encoding_rows_that_are_not_ascii_are_all_null():
    masker = text([None, REDACT_TEXT], exact=False)
    assert run(masker, "1\tb\n\u00e9\tx\\\tq\n".encode()) == b"1\t[redacted]\n\\N\t\\N\n"


# --- CSV -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pieces", [1, 4, None])
def test_csv_quoted_fields_hold_delimiters_quotes_and_newlines_across_messages(pieces):
    masker = csv([None, REDACT_TEXT, None])
    data = b'1,"a,\n""b""",c\n2,,"x\r\ny"\n3,"",z\n'
    assert run(masker, data, pieces) == b'1,[redacted],c\n2,,"x\r\ny"\n3,[redacted],z\n'


@pytest.mark.parametrize(("masked", "written"), [
    (b"plain", b"plain"), (b"a,b", b'"a,b"'), (b'say "hi"', b'"say ""hi"""'), (b"two\nlines", b'"two\nlines"'),
    (b"cr\r", b'"cr\r"'), (b"", b'""'),
])
def test_masked_csv_values_are_quoted_when_they_need_it(masked, written):
    masker = csv([lambda value: masked, None])
    assert run(masker, b"x,y\n") == written + b",y\n"


def test_a_masked_csv_value_is_quoted_as_force_quote_says_not_as_the_value_it_replaces():
    """Fixed: the server quotes a value equal to the NULL string, and the masked value was quoted as the value
    it replaced: `NULL '444-07-2101'` showed which rows hold that SSN (an empty value too, with the default '')."""
    data = b'"444-07-2101",x,y\n555-01-0001,"",z\n'
    assert run(csv([REDACT_TEXT, REDACT_TEXT, None], null=b"444-07-2101"), data) == \
        b"[redacted],[redacted],y\n[redacted],[redacted],z\n"
    forced = CsvMasker([REDACT_TEXT, REDACT_TEXT, None], CopyOptions("csv", b",", b"", force_quote=("b",)), True,
                       frozenset({1}))
    assert run(forced, b'p,"q","r"\n') == b'[redacted],"[redacted]","r"\n'


def test_csv_with_its_own_quote_escape_and_null():
    masker = csv([lambda value: b"a'b\\c", REDACT_TEXT, None], quote=b"'", escape=b"\\", null=b"NULL")
    data = b"'it\\'s',NULL,'NULL'\n"
    assert run(masker, data) == b"'a\\'b\\\\c',NULL,'NULL'\n"
    assert run(csv([lambda value: b"NULL"], null=b"NULL"), b"x\n") == b'"NULL"\n'


def test_csv_header_names_may_be_quoted_over_lines():
    masker = csv([REDACT_TEXT, None], header=True)
    assert run(masker, b'"odd\nname",b\nsecret,1\n', 3) == b'"odd\nname",b\n[redacted],1\n'


def test_a_lone_end_of_data_marker_is_quoted_in_a_single_column():
    assert run(csv([lambda value: b"\\."]), b"x\n") == b'"\\."\n'


def test_csv_that_never_completes_a_row_ends_the_copy():
    with pytest.raises(CopyUnreadable):
        run(csv([REDACT_TEXT, None]), b'1,"unterminated\n')
    with pytest.raises(CopyUnreadable):
        run(csv([REDACT_TEXT, None]), b'1,2,3\n')


def test_csv_in_an_uncertain_encoding():
    assert run(csv([REDACT_TEXT, None], exact=False), "a,b\n\u00e9,\"q\"\n".encode()) == b"[redacted],b\n,\n"
    with pytest.raises(CopyUnreadable, match="QUOTE"):
        csv([REDACT_TEXT], exact=False, quote=b"|", escape=b"|")


# --- binary --------------------------------------------------------------------------------------


def binary(*rows: tuple[bytes | None, ...], extension: bytes = b"", flags: int = 0) -> bytes:
    out = [b"PGCOPY\n\xff\r\n\x00", struct.pack("!iI", flags, len(extension)), extension]
    for row in rows:
        out.append(struct.pack("!h", len(row)))
        out.extend(b"\xff\xff\xff\xff" if v is None else struct.pack("!i", len(v)) + v for v in row)
    out.append(b"\xff\xff")
    return b"".join(out)


@pytest.mark.parametrize("pieces", [1, 5, None])
def test_binary_fields_are_masked_and_reframed(pieces):
    hmac_int = column_mask(MaskSpec("hmac"), INT4, BINARY_FORMAT, b"k" * 32)
    masker = BinaryMasker([hmac_int, REDACT_TEXT, None])
    data = binary((struct.pack("!i", 7), b"secret", None), (None, None, b"kept"), extension=b"ext!")
    out = run(masker, data, pieces)
    pseudonym = hmac_int(struct.pack("!i", 7))
    assert pseudonym is not None and len(pseudonym) == 4
    assert out == binary((pseudonym, b"[redacted]", None), (None, None, b"kept"), extension=b"ext!")


def test_binary_unchanged_data_is_the_servers_bytes():
    data = binary((b"a", b"b"), (b"c", None))
    assert run(BinaryMasker([Scrubber(["email"]).scrub_bytes, None]), data) == data


@pytest.mark.parametrize(("data", "reason"), [
    (b"PGCOPX\n\xff\r\n\x00" + bytes(8), "signature"),
    (binary((b"x",), flags=1 << 16), "flags"),
    (binary((b"x",), flags=1), "flags"),
    (binary((b"x", b"y")), "fields"),
    (binary((b"x",)) + b"\x00\x01", "after its trailer"),
    (binary((b"x",))[:-4], "inside a row"),
])
def test_binary_data_that_does_not_frame_ends_the_copy(data, reason):
    with pytest.raises(CopyUnreadable, match=reason):
        run(BinaryMasker([REDACT_TEXT]), data)


# --- from plan to masker -------------------------------------------------------------------------


def response(width: int, fmt: int = 0) -> CopyOutResponse:
    return CopyOutResponse(fmt, [fmt] * width)


def test_a_masker_per_format_with_the_catalogs_types():
    binary_plan = copy_of("COPY customers (id, email, ssn) TO STDOUT (FORMAT binary)")
    masker = copy_masker(binary_plan, response(3, 1), ANALYST, "UTF8")
    assert isinstance(masker, BinaryMasker)
    out = run(masker, binary((b"\x00\x00\x00\x01", b"john.doe@example.com", b"444-07-2101")))
    assert out == binary((b"\x00\x00\x00\x01", b"***@example.com", b"[redacted]"))
    assert isinstance(copy_masker(copy_of("COPY customers TO STDOUT (FORMAT csv)"), response(8), ANALYST, None),
                      CsvMasker)


def test_a_hidden_column_of_unknown_type_is_null_and_free_text_of_unknown_type_scrubbed_in_place():
    planned = copy_of("COPY (SELECT ssn::text, full_name || ' ' || city FROM customers) TO STDOUT")
    masker = copy_masker(planned, response(2), ANALYST, "UTF8")
    assert masker is not None
    assert run(masker, b"444-07-2101\tcard 4111 1111 1111 1111\n") == b"\\N\tcard **** **** **** 1111\n"


def test_a_shape_other_than_lineages_hides_every_column():
    masker = copy_masker(copy_of("COPY customers (id, ssn) TO STDOUT"), response(3), ANALYST, "UTF8")
    assert masker is not None and run(masker, b"1\t2\t3\n") == b"\\N\t\\N\t\\N\n"


def test_nothing_to_mask_needs_no_masker_and_what_is_not_known_ends_the_copy():
    lax = Clearance(RULES, ("*",), None, strict=False)
    assert copy_masker(copy_of("COPY customers TO STDOUT", lax), response(8), lax, "UTF8") is None
    with pytest.raises(CopyUnreadable, match="format"):
        copy_masker(copy_of("COPY customers TO STDOUT"), response(8, 1), ANALYST, "UTF8")
    with pytest.raises(CopyUnreadable, match="did not follow"):
        copy_masker(ResultPlan(None, hide_all=True), response(1), ANALYST, "UTF8")


def test_card_numbers_in_unmasked_text_get_the_detectors():
    masker = copy_masker(copy_of("COPY customers (id, full_name) TO STDOUT (FORMAT csv)"), response(2), ANALYST,
                         "UTF8")
    assert masker is not None
    assert run(masker, b'1,"paid with ' + CARD + b', thanks"\n') == b'1,"paid with **** **** **** 1111, thanks"\n'
