"""Binary codecs for token arrays, and text/JSON encodings that survive any string.

Token arrays (prompt ids, response ids, loss masks, logprobs, entropies) are stored as one binary
blob each instead of JSON text: a 340-token turn is ~700 bytes instead of ~2.5 kB, and decoding is
a ``frombuffer`` instead of a parse. The format is documented here because it is part of the schema:

    byte 0      header: an ASCII ``array`` type code, with bit 7 set for a *prefix-delta* blob
    bytes 1..   the values, little-endian, of that type

Integer codes are ``B`` (uint8), ``b`` (int8), ``H`` (uint16), ``h`` (int16), ``i`` (int32), ``q``
(int64); float codes are ``f`` (float32) and ``d`` (float64). The encoder picks the smallest type that holds every value *exactly*
(a logprob list that came from a float32 tensor is stored as float32; any other float list as
float64), so decoding always gives back the very same Python values. ``None`` is stored as SQL NULL
and an empty list as a bare header byte.

A prefix-delta blob (the per-turn prompts of schema 0001-0002, read by the 0003 migration) holds
just the ids that follow the previous turn's ``prompt_ids + response_ids``.

A *run-length* blob (a transcript's per-token ``turns`` and ``sampled``, which change a few times per
turn) starts with ``R``, then an integer code, then ``value, count`` pairs of that type: a 50-turn
transcript's 12,000 turn numbers take a few hundred bytes instead of 12 kB.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np

DELTA_FLAG = 0x80
RUNS = ord("R")
_INT_CODES = ("B", "b", "H", "h", "i", "q")
_FLOAT_CODES = ("f", "d")
_ITEMSIZE = {"B": 1, "b": 1, "H": 2, "h": 2, "i": 4, "q": 8, "f": 4, "d": 8}
NUMPY_DTYPES = {"B": "<u1", "b": "<i1", "H": "<u2", "h": "<i2", "i": "<i4", "q": "<i8", "f": "<f4", "d": "<f8"}
_BIG_ENDIAN = sys.byteorder == "big"

for _code, _size in _ITEMSIZE.items():  # the format relies on these sizes; fail loudly on an odd platform
    if array(_code).itemsize != _size:
        raise RuntimeError(f"array type {_code!r} has item size {array(_code).itemsize}, expected {_size}")


class CodecError(ValueError):
    """A value cannot be stored (not integers, out of int64 range) or a blob is malformed."""


def _pack(code: str, values: array, delta: bool = False) -> bytes:
    if _BIG_ENDIAN:
        values.byteswap()
    return bytes([ord(code) | (DELTA_FLAG if delta else 0)]) + values.tobytes()


def encode_ints(values: Sequence[int] | None, *, delta: bool = False) -> bytes | None:
    """Encode integers in the smallest exact type; ``None`` stays ``None`` (SQL NULL)."""
    if values is None:
        return None
    for code in _INT_CODES:
        try:
            return _pack(code, array(code, values), delta)
        except OverflowError:
            continue
        except TypeError as exc:
            raise CodecError(f"token arrays must hold integers: {exc}") from None
    raise CodecError("integer out of the int64 range in a token array")


def encode_runs(values: Sequence[int] | None) -> bytes | None:
    """Encode integers as ``value, count`` runs (see the module docstring); ``None`` stays ``None``."""
    if values is None:
        return None
    pairs: list[int] = []
    for value, run in itertools.groupby(values):
        pairs += (value, len(list(run)))
    inner = encode_ints(pairs)
    assert inner is not None
    return bytes([RUNS]) + inner


def encode_floats(values: Sequence[float] | None) -> bytes | None:
    """Encode floats as float32 when that is exact for every value, else float64."""
    if values is None:
        return None
    try:
        single = array("f", values)
    except (TypeError, OverflowError) as exc:
        raise CodecError(f"logprob/entropy arrays must hold numbers: {exc}") from None
    as_list = values if isinstance(values, list) else list(values)
    if single.tolist() == as_list:
        return _pack("f", single)
    return _pack("d", array("d", as_list))


def _split(blob: bytes) -> tuple[str, bool, memoryview]:
    if not blob:
        raise CodecError("empty token blob (no header byte)")
    header = blob[0]
    code = chr(header & ~DELTA_FLAG)
    if code not in _ITEMSIZE:
        raise CodecError(f"unknown token blob type code {header:#x}")
    body = memoryview(blob)[1:]
    if len(body) % _ITEMSIZE[code]:
        raise CodecError(f"token blob of type {code!r} has {len(body)} bytes, not a whole number of items")
    return code, bool(header & DELTA_FLAG), body


def decode(blob: bytes | None) -> list[int] | list[float] | None:
    """Decode a blob written by :func:`encode_ints`/:func:`encode_floats` (delta blobs: the suffix only)."""
    if blob is None:
        return None
    if blob[:1] == bytes([RUNS]):
        pairs = decode(blob[1:])
        if pairs is None or len(pairs) % 2 or any(n < 1 for n in pairs[1::2]):  # type: ignore[operator]
            raise CodecError("malformed run-length blob")
        return [v for v, n in zip(pairs[::2], pairs[1::2], strict=True) for _ in range(int(n))]  # type: ignore[misc]
    code, _, body = _split(blob)
    values = array(code)
    values.frombytes(body)
    if _BIG_ENDIAN:
        values.byteswap()
    return values.tolist()


def is_delta(blob: bytes | None) -> bool:
    return blob is not None and bool(blob[0] & DELTA_FLAG)


def decode_numpy(blob: bytes) -> np.ndarray:
    """Zero-copy view of a (non-delta) blob as a numpy array of its stored type (runs: expanded)."""
    if blob[:1] == bytes([RUNS]):
        pairs = decode_numpy(blob[1:])
        return np.repeat(pairs[::2], pairs[1::2])
    code, _, body = _split(blob)
    return np.frombuffer(body, dtype=NUMPY_DTYPES[code])


def encode_prompt(prompt_ids: list[int] | None, context: list[int] | None) -> bytes | None:
    """Encode a turn's prompt, as a delta on ``context`` (previous prompt + response) when it extends it."""
    if prompt_ids is None:
        return None
    if context and len(prompt_ids) >= len(context) and prompt_ids[: len(context)] == context:
        return encode_ints(prompt_ids[len(context) :], delta=True)
    return encode_ints(prompt_ids)


def decode_prompt(blob: bytes | None, context: list[int] | None) -> list[int] | None:
    """Inverse of :func:`encode_prompt`; ``context`` must be what the encoder saw."""
    values = decode(blob)
    if values is None or not is_delta(blob):
        return values  # type: ignore[return-value]
    if context is None:
        raise CodecError("a prefix-delta prompt blob needs the previous turn's ids")
    return context + values  # type: ignore[operator]


# --- text that any database accepts --------------------------------------------------------------
# PostgreSQL text cannot hold NUL, and no UTF-8 column can hold a lone surrogate; agents may send
# both (any string is a legal action). Such strings are stored escaped behind a private-use marker
# and read back identical. Every other string (virtually all of them) is stored as is.
TEXT_MARKER = "\ue000"
_ESCAPE = re.compile("[\\\\\x00\ud800-\udfff]")
_UNESCAPE = re.compile(r"\\(\\|0|u[0-9a-f]{4})")


def _needs_escape(text: str) -> bool:
    if "\x00" in text or text.startswith(TEXT_MARKER):
        return True
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _escape_char(match: re.Match[str]) -> str:
    char = match.group(0)
    if char == "\\":
        return "\\\\"
    if char == "\x00":
        return "\\0"
    return f"\\u{ord(char):04x}"


def _unescape_char(match: re.Match[str]) -> str:
    token = match.group(1)
    if token == "\\":
        return "\\"
    if token == "0":
        return "\x00"
    return chr(int(token[1:], 16))


def escape_text(text: str | None) -> str | None:
    if text is None or not _needs_escape(text):
        return text
    return TEXT_MARKER + _ESCAPE.sub(_escape_char, text)


def unescape_text(text: str | None) -> str | None:
    if text is None or not text.startswith(TEXT_MARKER):
        return text
    return _UNESCAPE.sub(_unescape_char, text[1:])


def dump_json(value: Any, what: str = "value") -> str | None:
    """JSON text for an info/meta/config dict; ASCII-only, so NUL and surrogates come back exactly."""
    if value is None:
        return None
    try:
        return json.dumps(value, ensure_ascii=True, default=_numpy_default)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"{what} is not JSON-serialisable: {exc}") from None


def _numpy_default(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"object of type {type(value).__name__} is not JSON serializable")


def load_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)
