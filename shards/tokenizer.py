"""HF fast tokenizers: loading, batched encoding, and the fingerprint in manifests.

Everything works on a ``tokenizers.Tokenizer`` (the Rust object behind every
``transformers`` fast tokenizer), so shards never needs torch or transformers
when a ``tokenizer.json`` is present.
"""
from __future__ import annotations

import hashlib
import json
import os
import weakref

import numpy as np

from shards.formats.ragged import Ragged


class TokenizerError(ValueError):
    """A tokenizer could not be loaded or does not match the shards."""


def load_tokenizer(source):
    """A ``tokenizers.Tokenizer`` without padding or truncation.

    ``source``: a local directory or ``tokenizer.json`` path, a
    ``tokenizers.Tokenizer``, or a ``transformers`` fast tokenizer.
    """
    from tokenizers import Tokenizer

    if isinstance(source, Tokenizer):
        tok = Tokenizer.from_str(source.to_str())
    elif hasattr(source, "backend_tokenizer"):
        tok = Tokenizer.from_str(source.backend_tokenizer.to_str())
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if os.path.isfile(file) and file.endswith(".json"):
            tok = Tokenizer.from_file(file)
            _remember_file(tok, file)
        elif os.path.isdir(path):
            tok = _from_transformers(path)
        else:
            raise TokenizerError(f"tokenizer {path}: no such directory or tokenizer.json; pass a local "
                                 f"HF tokenizer directory (e.g. the bundled MiniLM model folder)")
    else:
        raise TokenizerError(f"tokenizer of type {type(source).__name__} is not supported; pass a path, "
                             f"a tokenizers.Tokenizer or a transformers fast tokenizer")
    tok.no_padding()
    tok.no_truncation()
    return tok


def _from_transformers(path: str):
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise TokenizerError(f"tokenizer {path}: has no tokenizer.json and transformers is not installed "
                             f"to convert it") from exc
    fast = AutoTokenizer.from_pretrained(path, use_fast=True)
    if not getattr(fast, "is_fast", False):
        raise TokenizerError(f"tokenizer {path}: only fast (Rust) tokenizers are supported")
    return load_tokenizer(fast)


# Memos keyed by the tokenizer object (weakly: a stream's tokenizer is freed with it) and by the
# unchanged tokenizer.json it was read from, so each stream that loads it does not pay ~40 ms.
_FINGERPRINTS: "weakref.WeakKeyDictionary[object, str]" = weakref.WeakKeyDictionary()
_FILES: "weakref.WeakKeyDictionary[object, tuple]" = weakref.WeakKeyDictionary()  # tok -> (path, mtime, size)
_FILE_FINGERPRINTS: dict[tuple, str] = {}


def _remember_file(tok, file: str) -> None:
    st = os.stat(file)
    _FILES[tok] = (os.path.abspath(file), st.st_mtime_ns, st.st_size)


def fingerprint(tok) -> str:
    """sha256 of the tokenizer's serialized vocabulary, model and pipeline (memoised)."""
    digest = _FINGERPRINTS.get(tok)
    if digest is not None:
        return digest
    file_key = _FILES.get(tok)
    digest = _FILE_FINGERPRINTS.get(file_key) if file_key else None
    if digest is None:
        digest = _fingerprint(tok)
        if file_key:
            _FILE_FINGERPRINTS[file_key] = digest
    _FINGERPRINTS[tok] = digest
    return digest


def _fingerprint(tok) -> str:
    data = json.loads(tok.to_str())
    data.pop("padding", None)
    data.pop("truncation", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def special_ids(tok) -> dict[str, int | None]:
    """Ids of the separator (end of document) and padding tokens, where known."""
    def first_known(tokens):  # token_to_id: no copy of the whole vocabulary
        return next((i for i in map(tok.token_to_id, tokens) if i is not None), None)

    sep = first_known(("<|endoftext|>", "</s>", "[SEP]", "<eos>"))
    pad = first_known(("[PAD]", "<pad>", "<|endoftext|>"))
    return {"sep": sep, "pad": 0 if pad is None else pad}


def encode_batch(tok, texts: list[str], max_length: int | None = None,
                 add_special_tokens: bool = True) -> list[np.ndarray]:
    """Token ids per text (int32), truncated to ``max_length`` (special tokens kept)."""
    return [np.asarray(ids, dtype=np.int32) for ids in _encode(tok, texts, max_length, add_special_tokens)]


def encode_ragged(tok, texts: list[str], max_length: int | None = None,
                  add_special_tokens: bool = True) -> Ragged:
    """``encode_batch`` as one flat array + offsets (no per-text arrays)."""
    return Ragged.from_lists(_encode(tok, texts, max_length, add_special_tokens))


def _encode(tok, texts: list[str], max_length: int | None, add_special_tokens: bool) -> list[list[int]]:
    current = tok.truncation  # a dict, or None; set only on change (each set rebuilds Rust state)
    if max_length is not None and (current is None or current["max_length"] != max_length):
        tok.enable_truncation(max_length)
    elif max_length is None and current is not None:
        tok.no_truncation()
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return [e.ids for e in encode(texts, add_special_tokens=add_special_tokens)]
