"""One record's fields: the text and label rules every reader applies (txt, jsonl, csv, tsv, parquet).

Text: each ``--text-field`` must be a string (a JSON string, a CSV field, a parquet
string).  A number, boolean, list or object is ``wrong_type``; a missing or null
field is ``missing_field``.  Text is kept as it is (never stripped); several fields
are joined with a newline; text that is empty after ``str.strip()`` is
``empty_text``; a NUL character is ``nul_byte``.

Labels, ONE rule for every reader (so ``1``, ``1.0``, ``"1"`` and ``" 1 "`` are one class):

* a string is stripped of surrounding whitespace (``str.strip()``);
* an integer, or a float with an integral value (``1.0``, below 2**53 where floats are exact
  integers), becomes its decimal form ``"1"``;
* a boolean, any other float (``1.5``, ``NaN``, ``1e300``), a list or an object is
  ``wrong_type`` (a boolean is refused rather than guessed as ``"true"``/``"1"``/``"True"``);
* a missing or null label, or one that is empty after stripping, is ``missing_field``;
* a label holding a line break or another control character is ``bad_label`` (it is
  what a broken CSV quote folding several rows into one field looks like).

Text or a label holding a lone surrogate (a JSON ``"\\ud800"`` escape with no pair: valid
JSON, but no Unicode character, so UTF-8 cannot hold it) is ``invalid_utf8``.  A JSON
object naming a field the build reads (a text field or the label field) twice is
``duplicate_key``: which of the two values is meant cannot be known.
"""
from __future__ import annotations

import json
import math
import re
from typing import Iterable, Iterator

from shards.corpus.spec import BLANK, BadRecords, CorpusSpec, Raw

# control characters and line breaks that no label may hold (the fast JSONL path uses the same class)
LABEL_BAD_CHARS = "\x00-\x1f\x7f-\x9f\u2028\u2029"
_LABEL_BAD = re.compile(f"[{LABEL_BAD_CHARS}]")
EXACT_FLOAT = 2.0 ** 53  # a float label from here up is not an exact integer


def decode(data: bytes, where, line: int, bad: BadRecords) -> str | None:
    """UTF-8 text of a line, or None after counting it (NUL byte, invalid UTF-8)."""
    if b"\x00" in data:
        bad.add("nul_byte", where(line))
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad.add("invalid_utf8", where(line), f"byte {exc.start}")
        return None


def txt_records(lines: Iterable[tuple[bytes, int]], bad: BadRecords, where) -> Iterator[Raw]:
    """One record per non-blank line; blank lines are counted as ``blank_line``."""
    for data, line in lines:
        if not data.strip():
            bad.add(BLANK, where(line))
            continue
        text = decode(data, where, line, bad)
        if text is not None:
            yield Raw(text, None, line)


class _Repeated(dict):
    """A JSON object that named a key twice (the last value kept, as ``dict`` does); ``keys_twice``
    are those keys."""

    keys_twice: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    repeated = _Repeated(obj)
    seen: set[str] = set()
    repeated.keys_twice = tuple(k for k, _ in pairs if k in seen or seen.add(k))
    return repeated


# one decoder for every line: object_pairs_hook sees the keys json.loads would merge
_DECODER = json.JSONDecoder(object_pairs_hook=_object)


def _loads(text: str):
    """``json.loads(text)`` (the same errors), objects naming a key twice marked."""
    if text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return _DECODER.decode(text)


def _read_twice(obj: dict, spec: CorpusSpec) -> list[str]:
    """The fields the build reads that the object names more than once."""
    if type(obj) is not _Repeated:
        return []
    wanted = (*spec.text_fields, spec.label_field)
    return [k for k in dict.fromkeys(obj.keys_twice) if k in wanted]


def jsonl_records(lines: Iterable[tuple[bytes, int]], spec: CorpusSpec, bad: BadRecords, where
                  ) -> Iterator[Raw]:
    """Records of JSONL lines, one JSON object per line."""
    for data, line in lines:
        if not data.strip():
            bad.add(BLANK, where(line))
            continue
        text = decode(data, where, line, bad)
        if text is None:
            continue
        try:
            obj = _loads(text)
        except json.JSONDecodeError as exc:
            bad.add("malformed_json", where(line), str(exc))
            continue
        if not isinstance(obj, dict):
            bad.add("malformed_json", where(line), f"expected an object, got {type(obj).__name__}")
            continue
        twice = _read_twice(obj, spec)
        if twice:
            bad.add("duplicate_key", where(line), f"the object names {', '.join(map(repr, twice))} more than "
                                                  f"once; which value is meant is unknown: keep one")
            continue
        record = from_mapping(obj, spec, bad, where, line)
        if record is not None:
            yield record


def from_mapping(obj: dict, spec: CorpusSpec, bad: BadRecords, where, line: int, lines: int = 1) -> Raw | None:
    """The record of one object (a JSON line, a CSV row of ``lines`` lines, a parquet row), or None
    after counting why not."""
    parts = []
    for name in spec.text_fields:
        value = obj.get(name)
        if value is None:
            bad.add("missing_field", where(line), f"no field {name!r} (fields: {', '.join(map(str, obj))})", lines)
            return None
        if not isinstance(value, str):
            bad.add("wrong_type", where(line), f"field {name!r} is a {_type(value)}, not a string", lines)
            return None
        parts.append(value)
    text = "\n".join(parts)
    if not text.isascii() and _lone_surrogate(text):
        bad.add("invalid_utf8", where(line), f"the text {_surrogate_detail(text)}", lines)
        return None
    if not text.strip():
        bad.add("empty_text", where(line), lines=lines)
        return None
    if "\x00" in text:
        bad.add("nul_byte", where(line), lines=lines)
        return None
    label = None
    if spec.label_field is not None:
        label, why = normalize_label(obj.get(spec.label_field))
        if label is None:
            reason, detail = why
            bad.add(reason, where(line), f"label field {spec.label_field!r} {detail}", lines)
            return None
    return Raw(text, label, line)


def normalize_label(value) -> tuple[str | None, tuple[str, str] | None]:
    """(label, None) by the module's label rule, or (None, (reason, detail))."""
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None, ("missing_field", "is empty")
        if _LABEL_BAD.search(value):
            return None, ("bad_label", f"holds a line break or control character: {value[:40]!r}")
        if not value.isascii() and _lone_surrogate(value):
            return None, ("invalid_utf8", _surrogate_detail(value))
        return value, None
    if value is None:
        return None, ("missing_field", "is missing or null")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), None
    if isinstance(value, float) and math.isfinite(value) and value == int(value) and abs(value) < EXACT_FLOAT:
        return str(int(value)), None
    return None, ("wrong_type", f"is a {_type(value)} ({str(value)[:40]}); labels are strings or integers")


def _lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (from a ``\\udXXX`` JSON escape): not encodable as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _surrogate_detail(text: str) -> str:
    at = next(i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff")
    return (f"holds a lone surrogate \\u{ord(text[at]):04x} at character {at} (a JSON escape of half a "
            f"UTF-16 pair, not a character; UTF-8 cannot hold it): fix the writer of the file")


def _type(value) -> str:
    if isinstance(value, dict):
        return "object"
    return {bool: "boolean", int: "number", float: "number", list: "list"}.get(type(value), type(value).__name__)
