"""The tokenize stage of a ShardStream: a Chunk's texts encoded in one call to the fast tokenizer
(``shards.encode_ragged``), or its stored ids (pre-tokenized shards) cut to ``max_length``."""
from __future__ import annotations

import tokenizers  # noqa: F401  (~20 ms: imported with the pipeline, not inside the first batch's load_tokenizer)

import shards
from pipeline.chunk import Chunk


def tokenized(ds, chunk: Chunk, keep_text: bool) -> Chunk:
    """``chunk`` with token ids (when the stream has a tokenizer or stored ids), without its texts
    unless ``keep_text``."""
    if ds.tokenizer is not None and not ds.pretokenized:
        chunk = chunk.with_ids(shards.encode_ragged(ds.tokenizer, chunk.text, ds.max_length,
                                                    ds.config.add_special_tokens))
    elif chunk.ids is not None and ds.max_length is not None:
        chunk = chunk.with_ids(chunk.ids.truncate(ds.max_length))
    return chunk if keep_text else chunk.without_text()
