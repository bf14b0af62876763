"""Content detectors: the second net that finds sensitive values inside any text.

Column masking (`pgguard.masking.functions`) replaces the values that lineage
traces to a sensitive column. Detectors catch what lineage cannot see: a card
number a customer typed into a ticket, an email quoted in an error message.
They run on the relay's hot path, over every text value a role is not cleared
for, so:

- they scan bytes, not str: no decode and re-encode per value, and bytes that
  are not valid UTF-8 pass through as they are. The patterns are ASCII, and
  UTF-8 (like every server encoding PostgreSQL has) never uses an ASCII byte
  inside a multi-byte character, so a match is always whole characters;
- patterns are compiled once, at import, and each starts with a character set,
  which lets the regex engine skip to candidate positions in C; checksums
  (Luhn, mod 97) run in Python only on candidates;
- a value holding none of the bytes some match would need (a digit, or `@`
  for an email) costs one scan for them, and a detector is skipped when the
  data lacks the one byte all its matches contain (`@`, `-` for an SSN);
- a value shorter than the shortest text a detector can find (13 bytes for a
  card number) skips that detector, and one shorter than all of them skips
  every scan: ids and amounts cost a length check. So does a value with fewer
  digits than every find of a detector holds (13 for a card number);
- when nothing is found `scrub_bytes` returns the very object it was given,
  so the caller can tell "unchanged" by identity and forward the original
  message without copying it.

A mask replaces each sensitive byte with `*` and touches nothing else: no
separator, quote, backslash or byte outside the sensitive part changes, and the
output has exactly the input's length. That keeps containers valid: JSON
strings, array and record literals (no quote or backslash appears or goes),
COPY text and CSV (`*` is special in neither), and binary formats whose lengths
are counted outside the text (binary arrays and records, COPY binary), which
can be scrubbed in place without re-framing. A match also never starts inside
a backslash escape (`\\n`, `\\u0001`), so masking cannot break one. The one
thing length-preserving masking cannot keep valid is a card number written as
a bare JSON number (`****1111` is not a number): `scrub_json` turns such a
number into a string.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter

from pgguard.config import ConfigError

_HEX = rb"[0-9A-Fa-f]"


def _token(first: bytes, joined: bytes) -> bytes:
    """Regex for a token's first character: one of class `first` that neither
    continues a run of class `joined` nor belongs to a backslash escape.

    Without the escape rule, JSON's `\\njohn@example.com` (a newline, then the
    address) would have its `n` masked into `\\*`, which is not JSON, and the
    digits of `\\u0001` could start a card number. The guards are look-behinds
    written after the character, so that the pattern still begins with a
    character set, the form the regex engine scans for fastest.
    """
    return (
        b"[" + first + b"]"
        # Not after a `joined` character or a backslash, and not inside \uXXXX.
        b"(?:(?<![" + joined + rb"\\].)(?<!\\u.)(?<!\\u" + _HEX + rb".)"
        rb"(?<!\\u" + _HEX + rb"{2}.)(?<!\\u" + _HEX + rb"{3}.)"
        # After a backslash that does not make an escape of this character
        # (a Windows path, JSON's escaped quote).
        rb"|(?<=\\[^nrtbfvu])"
        # Right after a one-letter escape (JSON and COPY text) or \uXXXX.
        rb"|(?<=\\[nrtbfv].)|(?<=\\u" + _HEX + rb"{4}.))"
    )


_DIGITS = b"0123456789"
_DIGITS_TO_STARS = bytes.maketrans(_DIGITS, b"*" * 10)
_ALNUM = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ALNUM_TO_STARS = bytes.maketrans(_ALNUM, b"*" * len(_ALNUM))
# Everything in an email's local part but the quotes and backslashes that
# delimit a quoted one (`"john doe"@…`, or `\"john doe\"@…` inside JSON).
_LOCAL_TO_STARS = bytes(b if b in b'"\\' else ord("*") for b in range(256))

Edits = Sequence[tuple[int, bytes]]

# --- Luhn and mod 97 ------------------------------------------------------

_LUHN_PLAIN = bytes.maketrans(_DIGITS, bytes(range(10)))
_LUHN_DOUBLED = bytes.maketrans(_DIGITS, bytes((0, 2, 4, 6, 8, 1, 3, 5, 7, 9)))


def luhn_valid(digits: bytes) -> bool:
    """Whether the ASCII `digits` pass the Luhn check every payment card number passes.

    The sums run over `translate`d slices, so the whole check is a few C calls.
    """
    return (sum(digits[-1::-2].translate(_LUHN_PLAIN))
            + sum(digits[-2::-2].translate(_LUHN_DOUBLED))) % 10 == 0


_IBAN_LETTERS = {ord(c): str(10 + i) for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ")}


def iban_valid(compact: bytes) -> bool:
    """ISO 13616: the country code and check digits moved to the end, letters as 10–35, mod 97 is 1."""
    rearranged = (compact[4:] + compact[:4]).decode("ascii").upper()
    return int(rearranged.translate(_IBAN_LETTERS)) % 97 == 1


# --- Card numbers ---------------------------------------------------------

# Printed card numbers are 13–19 digits, whole or in groups split by single
# spaces or dashes (or their Unicode kin: a no-break, thin or zero-width
# space, a word joiner, a hyphen or dash, which text copied from documents
# carries), every group but the last at least four digits long
# (4-4-4-4, 4-6-5, 4-4-4-4-3, 4-4-4-1). A candidate is a chain of such groups
# (plus one shorter last group) holding at least 13 digits. Lists of small
# numbers (`1 0 1 1 0 …`, `12-34-56`) never form one, which keeps them from
# being masked at random and keeps the scan from doing work per digit.
# U+00A0, U+2000–U+2015 (spaces, zero-width ones, hyphens, dashes), U+202F,
# U+2060 and U+FEFF in UTF-8.
_CARD_SEPARATOR = rb"(?:[ \-]|\xc2\xa0|\xe2\x80[\x80-\x95\xaf]|\xe2\x81\xa0|\xef\xbb\xbf)"
_CARD = re.compile(
    # The look-ahead (a first group of four, 13 digits in all) fails fast on
    # what cannot be a card before the chain is taken apart.
    _token(b"0-9", b"0-9") + rb"(?=[0-9]{3}(?:" + _CARD_SEPARATOR + rb"?[0-9]){9})"
    + rb"[0-9]{3,}+(?:" + _CARD_SEPARATOR + rb"[0-9]{4,}+)*+(?:" + _CARD_SEPARATOR + rb"[0-9]{1,3})?+"
)
_NOT_DIGITS = bytes(byte for byte in range(256) if byte not in _DIGITS)
_GROUP = re.compile(rb"[0-9]+")
_CARD_LENGTHS = range(13, 20)
_CARD_KEEP = 4


def _card_windows(chain: bytes) -> Iterator[tuple[int, int]]:
    """The stretches of whole groups in a chain that are as long as a card number, as (start, end) offsets.

    Windows make `2024 4111 1111 1111 1111` a year and a card, and
    `4111 1111 1111 1111 12` a card and a quantity. A 25-digit number without
    separators holds none, so it is left alone: any long run of digits has a
    Luhn-valid 13–19-digit stretch somewhere, and masking inside it would
    mask every long number.
    """
    groups = [g.span() for g in _GROUP.finditer(chain)]
    for i, (start, _) in enumerate(groups):
        digits = 0
        for j in range(i, len(groups)):
            group_start, end = groups[j]
            digits += end - group_start
            if digits >= _CARD_LENGTHS.stop:
                break
            if digits in _CARD_LENGTHS:
                yield start, end


def _card_edits(match: re.Match[bytes]) -> Edits:
    """Mask every window that passes Luhn, but its last four digits.

    Overlapping valid windows are all masked, which errs towards masking.
    """
    chain = match.group()
    edits = []
    for start, end in _card_windows(chain):
        if luhn_valid(chain[start:end].translate(None, _NOT_DIGITS)):
            cut = end
            for _ in range(_CARD_KEEP):
                cut = _last_digit_before(chain, cut)
            edits.append((match.start() + start, chain[start:cut].translate(_DIGITS_TO_STARS)))
    return edits


def _last_digit_before(chain: bytes, end: int) -> int:
    """The offset of the last digit before `end` in a chain (digits and separators)."""
    end -= 1
    while chain[end] not in _DIGITS:
        end -= 1
    return end


def spoil_card_numbers(data: bytes) -> bytes:
    """`data` with digits changed so that the card detector finds no card in it.

    The fake masking function runs its made-up numbers through this, so that
    a fake can never be a real card number, nor be masked again by the
    detector. Windows are settled left to right by their last digit: it
    counts in Luhn undoubled, so each window that ends there rules out one
    of its ten values and the next free one is taken. A change reaches only
    the windows holding that digit, and those ending later are settled when
    their own last digit comes.
    """
    out = bytearray(data)
    for match in _CARD.finditer(data):
        offset = match.start()
        windows = sorted(_card_windows(match.group()), key=itemgetter(1))
        for end, ending_here in groupby(windows, key=itemgetter(1)):
            starts = [offset + start for start, _ in ending_here]
            last = offset + end - 1
            while any(luhn_valid(out[start:offset + end].translate(None, _NOT_DIGITS)) for start in starts):
                out[last] = ord("0") + (out[last] - ord("0") + 1) % 10
    return bytes(out)


# --- Email addresses ------------------------------------------------------

# Local part: the characters addresses use in practice, and any non-ASCII
# byte (internationalised addresses; also keeps a mask on whole characters).
_LOCAL = rb"A-Za-z0-9._%+\-\x80-\xff"
# Quoted local part: anything printable but what delimits JSON, CSV, arrays
# and records, so that a "quoted local part" can never span two of their
# fields (`"a",":"@x.io` is two CSV fields, not an address).
_QUOTED = rb" A-Za-z0-9._%+!#$&'*/=?^`|~\-\x80-\xff"
_LABEL = rb"[A-Za-z0-9\x80-\xff\-]"
_EMAIL = re.compile(
    _token(b'"' + _LOCAL, _LOCAL)
    + rb'(?:(?<=")[' + _QUOTED + rb']++[\\"]?"|(?<!")[' + _LOCAL + rb"]*+)"
    # The domain is only looked at, not consumed, so that the scan goes on
    # right after the `@`: in `a@x.io` glued to `b@y.io` (`a@x.iob@y.io`)
    # the second local part is found, where consuming `x.iob` would hide it.
    + rb"@(?=(?:" + _LABEL + rb"+\.)+[A-Za-z\x80-\xff])"
)


def _email_edits(match: re.Match[bytes]) -> Edits:
    """Mask the local part (the quotes of a quoted one stay); the domain is kept."""
    return ((match.start(), match.group()[:-1].translate(_LOCAL_TO_STARS)),)


# --- US Social Security numbers -------------------------------------------

# ddd-dd-dddd; area 000, 666 and 900–999, group 00 and serial 0000 are never
# issued, which rules out many dashed numbers that are not SSNs.
_SSN = re.compile(
    _token(b"0-8", b"0-9")
    + rb"[0-9]{2}(?<!000)(?<!666)-(?!00)[0-9]{2}-(?!0000)[0-9]{4}(?![0-9])"
)


def _all_digits(match: re.Match[bytes]) -> Edits:
    """Mask every digit of the match (SSNs and phone numbers keep only their punctuation)."""
    return ((match.start(), match.group().translate(_DIGITS_TO_STARS)),)


# --- IBAN -------------------------------------------------------------------

# Country code, check digits, then 11–30 letters or digits, optionally in
# space-separated groups: 15–34 characters in all. The match starts at the
# first check digit, the country code being checked behind it, so that the
# scan runs over digits rather than over every letter of a text.
_IBAN = re.compile(
    rb"[0-9](?<=" + _token(b"A-Za-z", b"A-Za-z0-9") + rb"[A-Za-z][0-9])"
    + rb"[0-9](?: ?[A-Za-z0-9]){11,30}+"
)
_IBAN_MIN, _IBAN_KEEP = 15, 4


def _iban_edits(match: re.Match[bytes]) -> Edits:
    """Mask the longest mod-97-valid IBAN at the candidate, but its country code and last four characters.

    The candidate may run on into the words after it (`… 0130 00 THANKS`), so
    ends are tried from the longest back, at group boundaries only: never in
    the middle of a group, nor of a token that carries on past the match.
    """
    data = match.string
    start, end = match.span()
    country = data[start - 2:start]
    run = match.group()
    if end < len(data) and data[end] in _ALNUM:
        run = run[:max(run.rfind(b" "), 0)]
    while len(run) >= _IBAN_MIN - 2:
        compact = country + run.replace(b" ", b"")
        if len(compact) >= _IBAN_MIN and iban_valid(compact):
            return ((start, _mask_alnum_but_last(run, _IBAN_KEEP)),)
        run = run[:max(run.rfind(b" "), 0)]
    return ()


def _mask_alnum_but_last(text: bytes, keep: int) -> bytes:
    """`text` with its letters and digits masked but the last `keep` of them."""
    cut = len(text)
    while keep:
        cut -= 1
        if text[cut] != 0x20:
            keep -= 1
    return text[:cut].translate(_ALNUM_TO_STARS) + text[cut:]


# --- Phone numbers ----------------------------------------------------------

# Conservative, since ordinary numbers are everywhere: E.164 needs its `+`
# (then 8–15 digits, spaces, dots, dashes or parentheses between them); a
# North American number needs its punctuation, (415) 555-2671, 415-555-2671
# or 415.555.2671, optionally after 1, with area code and exchange starting
# 2–9. Ten bare digits, or 415 555 2671, are too often something else.
_NANP_TAIL = rb"[2-9][0-9]{2}[.\-][0-9]{4}(?![0-9])"
_PHONE = re.compile(
    _token(rb"+(1-9", rb"0-9")
    + rb"(?:(?<=\+)[1-9](?:[ .\-()]{0,2}[0-9]){7,14}(?![0-9])"
    + rb"|(?:(?<=1)[ .\-]?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[.\-])"
    + rb"|(?<=\()[2-9][0-9]{2}\) ?"
    + rb"|(?<=[2-9])[0-9]{2}[.\-])" + _NANP_TAIL + rb")"
)


# --- The detector set -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Detector:
    """One kind of sensitive value: where its candidates are and how each is masked."""

    name: str
    pattern: re.Pattern[bytes]
    # Bytes of which every match contains at least one. A value with none of
    # any detector's is passed by one scan for them; a detector with a single
    # needle skips data without it (`in` on bytes is a memchr).
    needles: bytes
    # Replacements for one candidate, as (offset, bytes) pairs each as long as
    # what it replaces; empty when the candidate fails validation.
    edits: Callable[[re.Match[bytes]], Edits]
    # Bytes in the shortest text it can find: shorter values (ids, amounts,
    # codes) skip it without a scan.
    shortest: int
    # Digits in every text it can find: values with fewer (`Customer 12345`
    # for a card number) skip it without a scan.
    digits: int = 0


DETECTORS: dict[str, Detector] = {
    d.name: d for d in (
        Detector("card_number", _CARD, _DIGITS, _card_edits, _CARD_LENGTHS.start,  # 4222222222222
                 _CARD_LENGTHS.start),
        Detector("email", _EMAIL, b"@", _email_edits, 5),  # a@b.c
        Detector("ssn", _SSN, b"-", _all_digits, 11, 9),  # 123-45-6789
        Detector("iban", _IBAN, _DIGITS, _iban_edits, _IBAN_MIN),  # NO9386011117947
        Detector("phone", _PHONE, _DIGITS, _all_digits, 9, 8),  # +12345678
    )
}

_JSON_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+"|(-?[0-9*][0-9*.eE+\-]*)')


def _quote_masked_number(match: re.Match[bytes]) -> bytes:
    """A JSON token as it was, but a bare number holding a mask made a string."""
    number = match.group(1)
    return b'"' + number + b'"' if number is not None and b"*" in number else match.group()


class Scrubber:
    """A configured set of detectors, applied together to one value at a time."""

    __slots__ = ("names", "_detectors", "_prefilter", "_shortest")

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(dict.fromkeys(names))
        self._detectors = tuple(DETECTORS[name] for name in self.names)
        needles = bytes(sorted({b for d in self._detectors for b in d.needles}))
        self._prefilter = re.compile(b"[" + re.escape(needles) + b"]") if needles else None
        self._shortest = min((d.shortest for d in self._detectors), default=0)

    @classmethod
    def parse(cls, value: object, where: str) -> Scrubber:
        """A scrubber from a config value: a list of detector names."""
        if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
            raise ConfigError(f"{where}: expected a list of detector names, e.g. [\"card_number\", \"email\"]")
        for name in value:
            if name not in DETECTORS:
                raise ConfigError(f"{where}: unknown detector {name!r}; known: {', '.join(DETECTORS)}")
        return cls(value)

    def scrub_bytes(self, data: bytes) -> bytes:
        """`data` with every detected value masked; `data` itself when nothing was found.

        Every detector scans the original bytes and masks are only ever `*`s,
        so overlapping finds (an IBAN whose digits also pass Luhn) combine as
        the union of what each masks, whatever the detectors' order.
        """
        size = len(data)
        if size < self._shortest or self._prefilter is None or self._prefilter.search(data) is None:
            return data
        out, digits = None, -1
        for detector in self._detectors:
            if size < detector.shortest or (len(detector.needles) == 1 and detector.needles not in data):
                continue
            if detector.digits:
                if digits < 0:
                    digits = size - len(data.translate(None, _DIGITS))
                if digits < detector.digits:
                    continue
            for match in detector.pattern.finditer(data):
                for offset, replacement in detector.edits(match):
                    if out is None:
                        out = bytearray(data)
                    out[offset:offset + len(replacement)] = replacement
        return data if out is None else bytes(out)

    def scrub(self, text: str) -> str:
        """`scrub_bytes` for str (error and notice fields); `text` itself when nothing was found."""
        data = text.encode("utf-8", "surrogatepass")
        out = self.scrub_bytes(data)
        return text if out is data else out.decode("utf-8", "surrogatepass")

    def scrub_json(self, data: bytes) -> bytes:
        """`scrub_bytes` for JSON text that keeps it JSON; `data` itself when nothing was found.

        Inside strings the masks are valid as they are; a masked card number
        that was a bare JSON number is made a string. Only data with a find
        pays for the extra pass.
        """
        out = self.scrub_bytes(data)
        return out if out is data else _JSON_TOKEN.sub(_quote_masked_number, out)
