"""Masking: what a role not cleared for sensitive data receives instead.

Pure, sans-I/O building blocks the relay calls per value:

- `functions`: column masking functions (redact, null, partial, email, hmac,
  fake), configured as a `MaskSpec` and compiled per result column into a
  `ValueMask` that maps a value's wire bytes to a valid value of the same type;
- `detectors`: content detectors (card numbers, emails, SSNs, IBANs, phone
  numbers) that mask sensitive substrings inside any text, as a `Scrubber`;
- `values`: the type OIDs and wire-format details both need.

docs/masking.md describes the outputs and the choices behind them.
"""

from pgguard.masking.detectors import DETECTORS, Scrubber
from pgguard.masking.functions import FUNCTIONS, MaskSpec, ValueMask, column_mask

__all__ = ["DETECTORS", "FUNCTIONS", "MaskSpec", "Scrubber", "ValueMask", "column_mask"]
