"""Label sets fixed at build time: ``--label-names`` and ``--label-map``.

* ``--label-names A,B,...`` lists the label values in id order (A is 0); other values are
  ``unknown_label`` bad records.  The stored names are the values.
* ``--label-map 1=World,2=Sports,...`` (or ``--label-map labels.json``, a JSON object
  ``{"1": "World", ...}``) maps raw values to names: ids follow the map's order (the first
  entry is id 0), the manifest's ``label_names`` are the names, and a raw value not in the
  map is ``unknown_label``.  Each raw value and each name appears once (merging two raw
  values into one class is refused, so an id never hides two sources).

Raw values (``--label-names`` values and ``--label-map`` keys) are normalised by the corpus
label rule (:func:`shards.corpus.records.normalize_label`) before they are compared, so
``1`` and `` 1 `` are one value, and a record's ``1``, ``"1 "`` or ``1.0`` finds ``1=``.
The two options are exclusive: a map already fixes the set and the order.
"""
from __future__ import annotations

import json
import os

from shards.corpus.records import normalize_label


def normalized_values(names, option: str = "--label-names") -> list[str]:
    """The raw label values normalised by the corpus label rule; a duplicate or unusable one is refused."""
    values = []
    for name in names:
        value, why = normalize_label(name)
        if value is None:
            raise ValueError(f"{option}: label value {name!r} {why[1]}; give non-empty values without "
                             f"line breaks")
        values.append(value)
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise ValueError(f"{option} {','.join(map(str, names))}: {', '.join(map(repr, twice))} listed more "
                         f"than once (values are compared stripped of surrounding spaces); name each label "
                         f"once, in id order")
    return values


def check_label_names(names) -> None:
    """Refuse a ``--label-names`` list with a value twice (as the corpus label rule compares them)."""
    if names is not None:
        normalized_values(names)


def parse_label_map(text: str) -> tuple[tuple[str, str], ...]:
    """``--label-map``: ``RAW=NAME,RAW=NAME,...`` or the path of a JSON object file, as (raw, name) pairs
    in the map's order, raw values normalised; see the module docstring."""
    if text.endswith(".json") or os.path.isfile(text):
        pairs = _json_pairs(text)
    else:
        pairs = []
        for item in (x for x in text.split(",") if x.strip()):
            raw, eq, name = item.partition("=")
            if not eq:
                raise ValueError(f"--label-map: entry {item.strip()!r} has no '='; write RAW=NAME pairs "
                                 f"(e.g. 1=World,2=Sports) or the path of a JSON file {{\"1\": \"World\"}}")
            pairs.append((raw, name))
    return check_label_map(pairs)


def check_label_map(pairs) -> tuple[tuple[str, str], ...]:
    """(raw, name) pairs with raw values normalised; an empty map, a raw value or a name twice is refused."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("--label-map is empty; give RAW=NAME pairs, e.g. 1=World,2=Sports")
    raws = normalized_values([raw for raw, _ in pairs], "--label-map")
    names = [name.strip() if isinstance(name, str) else name for _, name in pairs]
    for raw, name in zip(raws, names):
        if not isinstance(name, str) or not name:
            raise ValueError(f"--label-map: {raw!r} maps to {name!r}; each name must be a non-empty string")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"--label-map: name(s) {', '.join(map(repr, twice))} given to more than one raw "
                         f"value; give each name once (merge the classes in the corpus if you mean to)")
    return tuple(zip(raws, names))


def _json_pairs(path: str) -> list[tuple[str, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as exc:
        raise ValueError(f"--label-map {path}: no such file; give RAW=NAME pairs or a JSON file") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"--label-map {path}: not valid JSON ({exc}); write an object "
                         f"{{\"1\": \"World\", ...}}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"--label-map {path}: expected a JSON object raw -> name, got {type(data).__name__}")
    return list(data.items())
