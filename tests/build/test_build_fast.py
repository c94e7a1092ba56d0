"""The column-wise JSONL path (pyarrow's JSON reader, shards/corpus_jsonl.py) writes the
same bytes, counts and errors as the per-line path (``CorpusSpec(block_parse=False)``)."""
from __future__ import annotations

import dataclasses
import gzip
import json
import pathlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shards.build.driver import BuildConfig, build
from shards.build.writer import Limits
from shards.corpus import jsonl as corpus_jsonl
from shards.corpus import jsonl_check as corpus_jsonl_check
from shards.corpus.read import BadRecordError, CorpusSpec

pytestmark = pytest.mark.timeout(180)


def good(i: int, label="pos") -> bytes:
    return json.dumps({"text": f"record {i} is fine", "label": label}).encode()


# One line of every kind the per-line path treats specially: (name, line bytes).
LINES = [
    ("plain", good(0)),
    ("escaped", b'{"text": "caf\\u00e9 \\ud83d\\ude00 \\"q\\" \\\\ \\/", "label": "neg"}'),
    ("raw_utf8", '{"text": "naïve 😀 ünïcödé", "label": "neg"}'.encode()),
    ("swapped_extra", b'{"label": "neg", "text": "order swapped", "extra": {"a": [1, "b", null]}}'),
    ("padded_text", b'{"text": "  padded  ", "label": "pos"}'),
    ("nan_elsewhere", b'{"text": "nan elsewhere", "label": "pos", "x": NaN}'),
    ("huge_number_elsewhere", b'{"text": "huge", "label": "pos", "x": 1e400}'),
    ("number_text", b'{"text": 12.5, "label": "pos"}'),
    ("bool_label", b'{"text": "bool label", "label": true}'),
    ("float_label", b'{"text": "float label", "label": 1.5}'),
    ("int_label", b'{"text": "int label", "label": 1}'),
    ("unknown_label", b'{"text": "unknown label", "label": "maybe"}'),
    ("blank", b""),
    ("spaces", b"   "),
    ("malformed", b'{"text": "a", "label": "pos"'),
    ("array", b'["a", "b"]'),
    ("string", b'"just a string"'),
    ("two_objects", good(1) + b" " + good(2)),
    ("two_objects_tight", good(3) + good(4)),
    ("empty_text", b'{"text": "", "label": "pos"}'),
    ("blank_text", b'{"text": " \\t\\n ", "label": "pos"}'),
    ("unicode_space_text", b'{"text": "\\u3000\\u0085\\u00a0\\u2028\\u001c", "label": "pos"}'),
    ("escaped_nul", b'{"text": "a\\u0000b", "label": "pos"}'),
    ("raw_nul", b'{"text": "a\x00b", "label": "pos"}'),
    ("raw_control", b'{"text": "a\x01b", "label": "pos"}'),
    ("raw_tab_in_string", b'{"text": "a\tb", "label": "pos"}'),
    ("tab_between_tokens", b'{"text":\t"tab", "label": "pos"}'),
    ("crlf", good(5) + b"\r"),
    ("leading_space", b" " + good(6)),
    ("trailing_space", good(7) + b" "),
    ("no_text", b'{"label": "pos"}'),
    ("null_text", b'{"text": null, "label": "pos"}'),
    ("list_text", b'{"text": ["a"], "label": "pos"}'),
    ("object_text", b'{"text": {"a": 1}, "label": "pos"}'),
    ("no_label", b'{"text": "no label"}'),
    ("null_label", b'{"text": "null label", "label": null}'),
    ("empty_label", b'{"text": "empty label", "label": ""}'),
    ("object_label", b'{"text": "object label", "label": {"x": 1}}'),
    ("duplicate_key", b'{"text": "first", "text": "second", "label": "pos"}'),
    ("escaped_key", b'{"te\\u0078t": "escaped key", "label": "pos"}'),
    ("invalid_utf8", b'{"text": "bad \xff byte", "label": "pos"}'),
    ("utf8_surrogate", b'{"text": "bad \xed\xa0\x80", "label": "pos"}'),
    ("too_long", b'{"text": "' + b"x" * 400 + b'", "label": "pos"}'),
    ("empty_object", b"{}"),
    ("closing_extra", good(8) + b"}"),
    ("padded_label", b'{"text": "padded label", "label": " pos\\t"}'),
    ("integral_float_label", b'{"text": "integral float label", "label": 1.0}'),
    ("newline_label", b'{"text": "newline label", "label": "pos\\nneg"}'),
    ("control_label", b'{"text": "control label", "label": "p\\u0085os"}'),
    ("blank_label", b'{"text": "blank label", "label": " \\u3000"}'),
    ("lone_cr", good(9) + b"\r" + good(10)),
    ("cr_in_string", b'{"text": "a\rb", "label": "pos"}'),
    ("bool_text", b'{"text": false, "label": "pos"}'),
    ("lone_surrogate", b'{"text": "a\\ud800", "label": "pos"}'),
    ("lone_low_surrogate", b'{"text": "\\udc00 b", "label": "pos"}'),
    ("swapped_surrogates", b'{"text": "\\ude00\\ud83d", "label": "pos"}'),
    ("surrogate_after_escaped_backslash", b'{"text": "\\\\ud800\\udc00", "label": "pos"}'),
    ("surrogate_label", b'{"text": "surrogate label", "label": "p\\ud800"}'),
    ("escaped_backslash_u", b'{"text": "\\\\ud800 is text", "label": "pos"}'),
    ("surrogate_elsewhere", b'{"text": "surrogate elsewhere", "x": "\\ud800", "label": "pos"}'),
    ("duplicate_label", b'{"text": "dup label", "label": "pos", "label": "neg"}'),
    ("duplicate_other_key", b'{"text": "dup other", "x": 1, "x": 2, "label": "pos"}'),
    ("duplicate_nested_key", b'{"text": "dup nested", "m": {"text": 1, "text": 2}, "label": "pos"}'),
]
# lines that are good (or blank, which never stops a build) with labels neg/pos
RAISES = {"padded_label": False, "lone_cr": False, "escaped": False, "raw_utf8": False, "swapped_extra": False,
          "padded_text": False, "plain": False,
          "nan_elsewhere": False, "huge_number_elsewhere": False, "escaped_key": False,
          "escaped_backslash_u": False, "surrogate_elsewhere": False, "duplicate_other_key": False,
          "duplicate_nested_key": False,
          "blank": False, "spaces": False, "crlf": False, "tab_between_tokens": False, "leading_space": False,
          "trailing_space": False}
MAX_RECORD_BYTES = 300


def corpus_lines(n: int = 600, seed: int = 0) -> list[bytes]:
    """Good records with every special line sprinkled in, several times."""
    rng = random.Random(seed)
    lines = [good(i, rng.choice(["pos", "neg"])) for i in range(n)]
    for _ in range(3):
        for _, line in LINES:
            lines.insert(rng.randrange(len(lines) + 1), line)
    return lines


def write(path: pathlib.Path, lines: list[bytes], final_newline: bool = True) -> str:
    data = b"\n".join(lines) + (b"\n" if final_newline else b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    elif path.suffix == ".zst":
        import zstandard
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return str(path)


def snapshot(out) -> dict[str, bytes]:
    out = pathlib.Path(out)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def build_both(tmp_path, monkeypatch, inputs, name="b", **kw):
    """Build with the fast path, then per line; return both snapshots (and the manifest)."""
    kw.setdefault("spec", CorpusSpec(label_field="label", on_bad_record="skip", max_record_bytes=MAX_RECORD_BYTES))
    kw.setdefault("limits", Limits(max_records=37))
    snaps, manifests = [], []
    for mode in (True, False):
        spec = dataclasses.replace(kw["spec"], block_parse=mode)
        out = tmp_path / f"{name}-{mode}"
        manifests.append(build(inputs, BuildConfig(out=str(out), progress=False, **{**kw, "spec": spec})).manifest)
        snaps.append(snapshot(out))
    return snaps, manifests[0]


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few KB so a small file spans many blocks and retried pieces (this process only)."""
    monkeypatch.setattr(corpus_jsonl, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(corpus_jsonl, "MIN_PIECE_BYTES", 700)


@pytest.fixture
def fast_blocks(monkeypatch):
    """Counts blocks checked column-wise: all good, and with bad records counted vectorised."""
    seen = {"clean": 0, "with_bad": 0}
    reasons = corpus_jsonl_check._reasons

    def counting(n, masks):
        out = reasons(n, masks)
        seen["clean" if out is None else "with_bad"] += 1
        return out

    monkeypatch.setattr(corpus_jsonl_check, "_reasons", counting)
    return seen


CASES = {
    "labels_scanned": dict(),
    "label_names": dict(label_names=("neg", "pos", "true", "1")),
    "max_bytes": dict(limits=Limits(max_bytes=3000)),
    "tar": dict(format="tar"),
    "unlabelled": dict(spec=CorpusSpec(on_bad_record="skip", max_record_bytes=MAX_RECORD_BYTES)),
    "two_text_fields": dict(spec=CorpusSpec(text_fields=("text", "label"), on_bad_record="skip",
                                            max_record_bytes=MAX_RECORD_BYTES)),
    "ranges_workers2": dict(split_bytes=5000, workers=2),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("blocks", [(4096, 700), (20000, 1500)])
def test_same_bytes_as_per_line(tmp_path, monkeypatch, fast_blocks, case, blocks):
    monkeypatch.setattr(corpus_jsonl, "BLOCK_BYTES", blocks[0])
    monkeypatch.setattr(corpus_jsonl, "MIN_PIECE_BYTES", blocks[1])
    src = write(tmp_path / "in" / "mixed.jsonl", corpus_lines(2000), final_newline=blocks[0] < 5000)
    (fast, slow), manifest = build_both(tmp_path, monkeypatch, [src], **CASES[case])
    assert fast == slow
    assert manifest.num_records > 500 and sum(manifest.bad_records.values()) > 50
    if CASES[case].get("workers", 1) == 1:  # the fast path really ran (not every block per line)
        assert fast_blocks["clean"] > 0 and fast_blocks["with_bad"] > 0


def test_same_bytes_gz_zst_and_several_files(tmp_path, monkeypatch, small_blocks):
    inputs = [write(tmp_path / "in" / "a.jsonl.gz", corpus_lines(300, seed=1)),
              write(tmp_path / "in" / "b.jsonl", corpus_lines(300, seed=2), final_newline=False),
              write(tmp_path / "in" / "c.json", corpus_lines(300, seed=3)),
              write(tmp_path / "in" / "d.jsonl.zst", corpus_lines(300, seed=4), final_newline=False)]
    (fast, slow), _ = build_both(tmp_path, monkeypatch, inputs, split_bytes=7000)
    assert fast == slow


def test_same_bytes_int_labels(tmp_path, monkeypatch, small_blocks):
    lines = [json.dumps({"text": f"int {i}", "label": i % 3}).encode() for i in range(500)]
    lines[100:100] = [b'{"text": "string label", "label": "2"}', b'{"text": "bool", "label": false}']
    src = write(tmp_path / "in" / "ints.jsonl", lines)
    (fast, slow), manifest = build_both(tmp_path, monkeypatch, [src])
    assert fast == slow and manifest.label_names == ["0", "1", "2"]
    assert manifest.bad_records == {"wrong_type": 1}
    (fast, slow), _ = build_both(tmp_path, monkeypatch, [src], name="named", label_names=("2", "0"))
    assert fast == slow


def test_same_bytes_float_and_padded_labels(tmp_path, monkeypatch, small_blocks, fast_blocks):
    """Labels 1.0 / " 1 " / 1 are one class on both paths, and integral floats stay column-wise."""
    lines = [json.dumps({"text": f"float {i}", "label": float(i % 2)}).encode() for i in range(400)]
    lines[50:50] = [b'{"text": "half", "label": 1.5}', b'{"text": "padded", "label": " 1 "}',
                    b'{"text": "int", "label": 0}', b'{"text": "big", "label": 1e300}']
    src = write(tmp_path / "in" / "floats.jsonl", lines)
    (fast, slow), manifest = build_both(tmp_path, monkeypatch, [src])
    assert fast == slow and manifest.label_names == ["0", "1"] and manifest.num_records == 402
    assert manifest.bad_records == {"wrong_type": 2} and fast_blocks["clean"] > 0


@pytest.mark.timeout(300)
def test_same_bytes_pretokenized(tmp_path, monkeypatch, minilm, small_blocks):
    src = write(tmp_path / "in" / "mixed.jsonl", corpus_lines(200))
    (fast, slow), _ = build_both(tmp_path, monkeypatch, [src], tokenizer=minilm, max_length=16,
                                 limits=Limits(max_bytes=4000))
    assert fast == slow


@pytest.mark.parametrize("name", [n for n, _ in LINES if RAISES.get(n, True)])
def test_error_names_the_same_line(tmp_path, monkeypatch, name):
    line = dict(LINES)[name]
    lines = [good(i) for i in range(300)] + [line] + [good(i) for i in range(300, 310)]
    src = write(tmp_path / "in" / "one_bad.jsonl", lines)
    spec = CorpusSpec(label_field="label", max_record_bytes=MAX_RECORD_BYTES)
    messages = []
    for mode in (True, False):
        with pytest.raises(BadRecordError) as info:
            build([src], BuildConfig(out=str(tmp_path / f"o{mode}"), spec=dataclasses.replace(spec, block_parse=mode),
                                     label_names=("neg", "pos"),
                                     split_bytes=4000, progress=False))
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert "one_bad.jsonl:301: " in messages[0]


def test_clean_corpus_never_goes_per_line(tmp_path, monkeypatch):
    def per_line(*args):
        raise AssertionError("a clean block was read line by line")

    monkeypatch.setattr(corpus_jsonl._Reader, "_per_line", per_line)
    lines = [json.dumps({"text": f"rec {i} é", "label": ["a", "b"][i % 2], "id": i}).encode() for i in range(3000)]
    src = write(tmp_path / "in" / "clean.jsonl", lines)
    result = build([src], BuildConfig(out=str(tmp_path / "o"), spec=CorpusSpec(label_field="label"),
                                      progress=False))
    assert result.manifest.num_records == 3000 and result.manifest.label_names == ["a", "b"]


KINDS = [line for _, line in LINES] + [good(i) for i in range(20)]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.integers(0, len(KINDS) - 1), min_size=1, max_size=120),
       final_newline=st.booleans(), max_records=st.integers(1, 40), block=st.integers(64, 3000))
def test_any_mix_same_bytes(tmp_path_factory, monkeypatch, picks, final_newline, max_records, block):
    monkeypatch.setattr(corpus_jsonl, "BLOCK_BYTES", block)
    monkeypatch.setattr(corpus_jsonl, "MIN_PIECE_BYTES", max(block // 8, 1))
    monkeypatch.setattr(corpus_jsonl, "RETRY_PIECES", 3)
    tmp = tmp_path_factory.mktemp("mix")
    src = write(tmp / "in" / "mix.jsonl", [KINDS[k] for k in picks], final_newline)
    spec = CorpusSpec(label_field="label", on_bad_record="skip", max_record_bytes=MAX_RECORD_BYTES)
    (fast, slow), _ = build_both(tmp, monkeypatch, [src], spec=spec, limits=Limits(max_records=max_records),
                                 label_names=("neg", "pos"))
    assert fast == slow


def test_whitespace_is_pythons():
    assert corpus_jsonl_check.PY_WHITESPACE == "".join(c for c in map(chr, range(0x110000)) if c.isspace())


def test_many_invalid_utf8_lines(tmp_path, monkeypatch, fast_blocks):
    """Past MAX_UTF8_ERRORS located lines, the rest of the block goes line by line: same bytes."""
    monkeypatch.setattr(corpus_jsonl_check, "MAX_UTF8_ERRORS", 3)
    lines = [good(i) for i in range(400)]
    for k in range(0, 400, 25):
        lines[k] = '{"text": "latin-1 café %d", "label": "pos"}'.replace("%d", str(k)).encode("latin-1")
    src = write(tmp_path / "in" / "latin.jsonl", lines)
    (fast, slow), manifest = build_both(tmp_path, monkeypatch, [src])
    assert fast == slow and manifest.bad_records == {"invalid_utf8": 16}
    assert fast_blocks["clean"] > 0


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_lines_longer_than_a_read(tmp_path, monkeypatch, policy):
    """A line over max_record_bytes that spans several reads is counted and drained (or named)."""
    monkeypatch.setattr(corpus_jsonl, "BLOCK_BYTES", 64)
    long_ok = json.dumps({"text": "y" * 200, "label": "neg"}).encode()  # > a read, < the limit
    lines = [good(i) for i in range(50)] + [dict(LINES)["too_long"], long_ok] + [good(i) for i in range(50, 90)]
    src = write(tmp_path / "in" / "long.jsonl", lines, final_newline=False)
    spec = CorpusSpec(label_field="label", on_bad_record=policy, max_record_bytes=MAX_RECORD_BYTES)
    if policy == "skip":
        (fast, slow), manifest = build_both(tmp_path, monkeypatch, [src], spec=spec, split_bytes=1500)
        assert fast == slow and manifest.bad_records == {"too_long": 1} and manifest.num_records == 91
        return
    messages = []
    for mode in (True, False):
        with pytest.raises(BadRecordError) as info:
            build([src], BuildConfig(out=str(tmp_path / f"o{mode}"), spec=dataclasses.replace(spec, block_parse=mode),
                                     split_bytes=1500, progress=False))
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "long.jsonl:51: too_long" in messages[0]
