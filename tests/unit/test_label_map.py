"""Named labels: ``shards build --label-map`` and the counts per label that ``shards inspect`` shows."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from shards.build.driver import BuildConfig, build
from shards.cli import main
from shards.corpus.labels import parse_label_map
from shards.corpus.read import CorpusSpec
from shards.manifest import Manifest, ManifestError, load_manifest
from shards.reader import iter_shard

pytestmark = pytest.mark.timeout(120)
ROOT = pathlib.Path(__file__).resolve().parents[2]
AG_MAP = "1=World,2=Sports,3=Business,4=Sci/Tech"


def shards_cmd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shards", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=100)


def ag_news_csv(path: pathlib.Path) -> dict[str, int]:
    """A 4-class AG-News-like CSV (label first, classes 1..4, one " 2 " with spaces); records per class."""
    rows = [("3", "Stocks rally"), ("1", "Talks resume"), (" 2 ", "Cup final tonight"), ("4", "New chip"),
            ("3", "Bank merger"), ("3", "Oil prices"), ("1", "Election day"), ("4", "Rover lands")]
    path.write_text("label,title\n" + "".join(f'"{lab}",{text}\n' for lab, text in rows))
    return {"World": 2, "Sports": 1, "Business": 3, "Sci/Tech": 2}


def test_label_map_on_a_4_class_csv_names_labels_and_inspect_counts_them(tmp_path):
    src = tmp_path / "train.csv"
    counts = ag_news_csv(src)
    out = tmp_path / "out"
    run = shards_cmd("build", str(src), "--out", str(out), "--text-field", "title", "--label-field", "label",
                     "--label-map", AG_MAP, "--max-records", "3", "--no-progress")
    assert run.returncode == 0, run.stderr
    m = load_manifest(str(out))
    assert m.label_names == ["World", "Sports", "Business", "Sci/Tech"]  # ids in the map's order
    assert m.label_counts == [counts[n] for n in m.label_names]
    ids = {r["title"]: r["label"] for r in _records(m, out)}
    assert ids["Talks resume"] == 0 and ids["Cup final tonight"] == 1 and ids["Rover lands"] == 3

    shown = shards_cmd("inspect", str(out), "-n", "0")
    assert shown.returncode == 0, shown.stderr
    for i, name in enumerate(m.label_names):
        line = next(x for x in shown.stdout.splitlines() if f" {name} " in x)
        assert line.split()[:3] == [str(i), name, str(counts[name])]
    summary = next(x for x in shown.stdout.splitlines() if x.startswith("per shard"))
    assert "records min 2 / median 3 / max 3" in summary and "bytes min" in summary
    print(shown.stdout)


def _records(m: Manifest, out) -> list[dict]:
    rows = []
    for i in range(len(m.shards)):
        for batch in iter_shard(m, str(out), i, None, verify="none"):
            rows += [{"title": batch.text[j], "label": int(batch.label[j])} for j in range(len(batch))]
    return rows


@pytest.mark.parametrize("block_parse", [True, False])
def test_label_map_file_normalises_raw_values_and_counts_unknown_ones(tmp_path, block_parse):
    """1, "1 " and 1.0 all find "1"; a value not in the map is unknown_label (counted under skip)."""
    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps({"text": f"t{i}", "label": lab}) + "\n"
                           for i, lab in enumerate([1, "1 ", 1.0, 2, "3", 2])))
    (tmp_path / "labels.json").write_text(json.dumps({" 2": "two", "1": "one"}))
    spec = CorpusSpec(label_field="label", on_bad_record="skip", block_parse=block_parse)
    m = build([str(src)], BuildConfig(out=str(tmp_path / "out"), spec=spec,
                                      label_map=parse_label_map(str(tmp_path / "labels.json")))).manifest
    assert m.label_names == ["two", "one"]
    assert m.label_counts == [2, 3] and m.bad_records == {"unknown_label": 1}
    assert m.continued_lines == 0


def test_unknown_raw_value_under_error_names_file_line_and_the_map(tmp_path, capsys):
    src = tmp_path / "a.csv"
    src.write_text("text,label\nok,1\nbad,7\n")
    code = main(["build", str(src), "--out", str(tmp_path / "o"), "--label-field", "label",
                 "--label-map", "1=a,2=b", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"{src}:3: unknown_label: '7'" in err and "--label-map" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (["--label-map", "1=a,2=b", "--label-names", "1,2"], "--label-map and --label-names both given"),
    (["--label-map", "1=a,2=a"], "name(s) 'a' given to more than one raw value"),
    (["--label-map", "1=a, 1 =b"], "'1' listed more than once"),
    (["--label-map", "1=a,2"], "entry '2' has no '='"),
    (["--label-map", "1=a,2="], "'2' maps to ''"),
    (["--label-map", "missing.json"], "missing.json: no such file"),
    (["--label-names", "1, 1"], None),  # _csv_list strips: the API call below checks the rule itself
])
def test_bad_label_options_are_one_line_errors(tmp_path, capsys, args, message):
    src = tmp_path / "a.csv"
    src.write_text("text,label\nok,1\n")
    code = main(["build", str(src), "--out", str(tmp_path / "o"), "--label-field", "label", *args, "--no-progress"])
    err = capsys.readouterr().err
    if message is None:
        assert code == 2 and "'1' listed more than once" in err
        return
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_label_map_needs_a_label_field(tmp_path, capsys):
    src = tmp_path / "a.csv"
    src.write_text("text,label\nok,1\n")
    assert main(["build", str(src), "--out", str(tmp_path / "o"), "--label-map", "1=a", "--no-progress"]) == 2
    assert "--label-map needs --label-field" in capsys.readouterr().err


def test_label_names_duplicates_compare_by_the_label_rule(tmp_path):
    src = tmp_path / "a.csv"
    src.write_text("text,label\nok,1\n")
    with pytest.raises(ValueError, match="'1' listed more than once"):
        build([str(src)], BuildConfig(out=str(tmp_path / "o"), spec=CorpusSpec(label_field="label"),
                                      label_names=("1", " 1")))


def test_manifest_label_counts_are_validated_and_optional(tmp_path, capsys):
    good = {"version": 1, "format": "arrow", "num_records": 3, "fields": ["text", "label"],
            "label_names": ["a", "b"], "shards": [{"path": "s.arrow", "num_records": 3, "num_bytes": 1,
                                                    "sha256": "0" * 64}]}
    assert Manifest.from_dict(good).label_counts is None  # a manifest from before the key
    assert Manifest.from_dict({**good, "label_counts": [1, 2]}).label_counts == [1, 2]
    for counts in ([1, 1], [3], [1, -1], "12", [1.0, 2]):
        with pytest.raises(ManifestError, match="label_counts"):
            Manifest.from_dict({**good, "label_counts": counts})
    for continued in (-1, "2", True):
        with pytest.raises(ManifestError, match="continued_lines"):
            Manifest.from_dict({**good, "continued_lines": continued})
    out = tmp_path / "old"
    out.mkdir()
    (out / "index.json").write_text(json.dumps({**good, "num_records": 0, "shards": []}))
    assert main(["inspect", str(out), "-n", "0"]) == 0
    assert "counts per label are not in this manifest" in capsys.readouterr().out
