"""RowMasker: DataRow messages rewritten value by value, and passed on whole when nothing changes."""

from __future__ import annotations

from pgguard.masking.detectors import Scrubber
from pgguard.masking.functions import MaskSpec, column_mask
from pgguard.masking.plan import RowMasker
from pgguard.masking.values import TEXT, TEXT_FORMAT
from pgguard.wire.backend import DataRow

SCRUB = Scrubber(["card_number", "email"]).scrub_bytes
PARTIAL = column_mask(MaskSpec("partial"), TEXT, TEXT_FORMAT)
NULL = column_mask(MaskSpec("null"), TEXT, TEXT_FORMAT)


def masked(masker: RowMasker, *values: bytes | None) -> list[bytes | None]:
    return DataRow.decode(masker.mask(DataRow(list(values)).encode())[5:]).values


def test_a_row_no_mask_changes_is_passed_on_as_it_came() -> None:
    row = DataRow([b"1", b"Customer 12345", None, b"nothing to find"]).encode()
    assert RowMasker([None, SCRUB, SCRUB, SCRUB]).mask(row) is row


def test_masked_values_are_rewritten_and_the_others_kept_around_them() -> None:
    masker = RowMasker([None, PARTIAL, None, SCRUB, None])
    assert masked(masker, b"1", b"+1 555 0012345", b"kept", b"mail jo@example.com", b"") == [
        b"1", b"+* *** ***2345", b"kept", b"mail **@example.com", b""]


def test_null_stays_null_and_a_mask_may_make_a_value_null() -> None:
    masker = RowMasker([PARTIAL, NULL, None])
    assert masked(masker, None, b"secret", b"x") == [None, None, b"x"]


def test_rows_wider_or_narrower_than_the_masks() -> None:
    masker = RowMasker([None, PARTIAL])
    assert masked(masker, b"a", b"12345678", b"after") == [b"a", b"****5678", b"after"]
    assert masked(masker, b"a") == [b"a"]


def test_masks_can_be_replaced_between_rows() -> None:
    masker = RowMasker([])
    row = DataRow([b"12345678"]).encode()
    assert masker.mask(row) is row
    masker.masks = [PARTIAL]
    assert masked(masker, b"12345678") == [b"****5678"]
