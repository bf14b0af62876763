"""Session-log records: what the constructors keep, what the limits clip, and the encoding."""

from __future__ import annotations

from pgguard.audit import records
from pgguard.audit.records import Limits, RowCapture, clip_text
from pgguard.identity import Identity

LIMITS = Limits(max_rows=3, max_cell_bytes=8, max_values_bytes=20, max_text_bytes=12)


def identity() -> Identity:
    return Identity(provider="pgguard", issuer="https://idp.example", subject="u-1", username="alice",
                    groups=("analysts",), jti="j-1", issued_at=1000.0, expires_at=2000.0, valid_until=2030.0,
                    roles=("analyst",))


def test_a_header_names_the_session_the_identity_and_the_connection() -> None:
    record = records.header(session_id="s1", identity=identity(), client_address="10.0.0.7:50000",
                            application_name="psql", target="demo", tls=("TLSv1.3", "TLS_AES_256_GCM_SHA384"),
                            at=1234.5)
    assert record["type"] == "header" and record["format"] == records.FORMAT_VERSION
    assert record["identity"] == {"provider": "pgguard", "issuer": "https://idp.example", "subject": "u-1",
                                  "username": "alice", "groups": ["analysts"], "roles": ["analyst"],
                                  "jti": "j-1", "expires_at": 2000.0}
    assert record["tls"] == {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}
    assert record["at"] == 1234.5
    plaintext = records.header(session_id="s1", identity=identity(), client_address="unix", application_name=None,
                               target="demo", tls=None)
    assert plaintext["tls"] is None and isinstance(plaintext["at"], float)


def test_text_is_clipped_by_its_utf8_size_without_splitting_a_character() -> None:
    assert clip_text("select 1", 12) == "select 1"
    assert clip_text("ééééé", 12) == "ééééé"  # 10 bytes
    clipped = clip_text("éééééé", 11)  # 12 bytes; the 6th character would be cut in half
    assert clipped == {"truncated": 12, "head": "ééééé"}
    assert clip_text("x" * 100, 12) == {"truncated": 100, "head": "x" * 12}


def test_a_statement_keeps_its_decision_and_clips_sql_and_parameters() -> None:
    record = records.statement(protocol="extended", sql="select * from customers where id = $1",
                               parameters=[b"12345678", b"123456789", None, "ab", b"x" * 30, b"y"], decision="refused",
                               rule="roles.analyst.tables", reason="writes public.orders",
                               classes=("select",), limits=LIMITS)
    assert record["sql"] == {"truncated": 37, "head": "select * fro"}
    # 8 bytes fit; 9 are over the cell limit; None stays None; then the 20-byte budget runs out.
    assert record["parameters"] == [b"12345678", {"truncated": 9, "head": b"12345678"}, None, "ab",
                                    {"truncated": 30, "head": b"xx"}, {"truncated": 1, "head": b""}]
    assert (record["decision"], record["rule"], record["classes"]) == ("refused", "roles.analyst.tables", ["select"])
    assert records.statement(protocol="simple", sql="select 1", decision="allowed",
                             limits=LIMITS)["parameters"] is None


def test_rows_are_captured_up_to_the_caps_and_counted_past_them() -> None:
    capture = RowCapture(LIMITS)
    for number in range(5):
        capture.add([str(number).encode(), None])
    assert capture.count == 5 and capture.truncated
    assert capture.rows == [[b"0", None], [b"1", None], [b"2", None]]
    wide = RowCapture(LIMITS)
    wide.add([b"a" * 8, b"b" * 8, b"c" * 8])  # 24 bytes: the 20-byte budget ends in the third cell
    wide.add([b"d"])
    assert wide.rows == [[b"a" * 8, b"b" * 8, {"truncated": 8, "head": b"cccc"}]]
    assert wide.count == 2 and wide.truncated


def test_a_result_carries_its_columns_rows_tag_and_error() -> None:
    capture = RowCapture(LIMITS)
    capture.add([b"1", b"alice"])
    record = records.result(statement=3, columns=[("id", 23, 0), ("name", 25, 0)], rows=capture,
                            command_tag="SELECT 1", duration_ms=1.5, limits=LIMITS)
    assert record["columns"] == [["id", 23, 0], ["name", 25, 0]]
    assert (record["row_count"], record["rows"], record["rows_truncated"]) == (1, [[b"1", b"alice"]], False)
    failed = records.result(statement=4, error=("22012", "division by zero!"), duration_ms=0.2, limits=LIMITS)
    assert failed["error"] == {"sqlstate": "22012", "message": {"truncated": 17, "head": "division by "}}
    assert (failed["row_count"], failed["rows"], failed["command_tag"]) == (0, [], None)


def test_records_survive_encoding_with_bytes_and_strings_apart() -> None:
    capture = RowCapture(Limits())
    capture.add([b"\x00\xff binary", None])
    record = records.result(statement=1, columns=[("c", 17, 1)], rows=capture, command_tag="SELECT 1",
                            duration_ms=0.1, limits=Limits())
    decoded = records.decode(records.encode(record))
    assert decoded == {**record, "columns": [["c", 17, 1]]}
    assert isinstance(decoded["rows"][0][0], bytes) and isinstance(decoded["command_tag"], str)


def test_decode_refuses_what_is_not_one_map() -> None:
    for payload in (records.encode([1, 2]), b"\xc1", records.encode({"a": 1}) + b"\x00", b""):
        try:
            records.decode(payload)
        except ValueError:
            continue
        raise AssertionError(f"{payload!r} decoded")


def test_a_row_whose_size_is_given_is_kept_or_clipped_as_one_whose_values_are_looked_at() -> None:
    rows = [[b"a" * 8], [b"a" * 4, None, b"b" * 4], [b"a" * 9], [b"a" * 5, b"b" * 5], [b"c" * 8, b"d" * 8]]
    told, looked = RowCapture(LIMITS), RowCapture(LIMITS)
    for row in rows:
        told.add(list(row), sum(len(value) for value in row if value is not None))
        looked.add(list(row))
    # 8, then 8 (16 of the 20-byte budget), then a 9-byte cell clipped to the 4 bytes left.
    assert told.rows == looked.rows == [[b"a" * 8], [b"a" * 4, None, b"b" * 4], [{"truncated": 9, "head": b"aaaa"}]]
    assert (told.count, told.truncated) == (looked.count, looked.truncated) == (5, True)
