"""shards.tokenizer: fingerprints memoised per object and per unchanged file, never stale."""
import json
import shutil

from shards import fingerprint, load_tokenizer


def test_fingerprint_follows_the_file_not_the_cache(tmp_path, minilm):
    copy = tmp_path / "tok"
    copy.mkdir()
    shutil.copy(f"{minilm}/tokenizer.json", copy / "tokenizer.json")
    first = fingerprint(load_tokenizer(copy))
    assert fingerprint(load_tokenizer(copy)) == first == fingerprint(load_tokenizer(minilm))
    data = json.loads((copy / "tokenizer.json").read_text())
    data["added_tokens"][0]["content"] = "[PADDING]"  # a different tokenizer under the same path
    (copy / "tokenizer.json").write_text(json.dumps(data))
    assert fingerprint(load_tokenizer(copy)) != first


def test_fingerprint_ignores_padding_and_truncation(minilm):
    tok = load_tokenizer(minilm)
    before = fingerprint(tok)
    other = load_tokenizer(minilm)
    other.enable_truncation(7)
    from shards.tokenizer import _fingerprint
    assert _fingerprint(other) == before
