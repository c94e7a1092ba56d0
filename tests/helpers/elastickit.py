"""Helpers of the hostile elastic-resume tests (tests/reliability/test_hostile_elastic_*.py): shard sets of
short, long and empty documents, packed and mixed streams per simulated rank, stretches of training under one
topology chained by elastic resumes, and the exactly-once checks."""
from __future__ import annotations

import json
import pathlib
from collections import Counter, defaultdict
from itertools import islice

import pytest

from pipeline import PackedStream, ShardStream, StreamConfig, make_loader
from pipeline.mix import MixedStream
from tests.helpers.data import write_jsonl

N = 37            # documents: not a multiple of the worlds, workers or shards below
SEQ = 5           # tokens per block: long documents span many blocks, short ones share a block
SIZES = (23, 11)  # mixture sources
EMPTY = "\u0301"  # a combining accent: MiniLM strips it, so the document is its specials only (no tokens)
SLOW = [pytest.mark.slow, pytest.mark.timeout(1800)]  # the heavy hypothesis variants


# -- data -------------------------------------------------------------------------------------------------------
def records(n: int) -> list[dict]:
    """Short documents, long ones (several blocks of SEQ) and empty ones (specials only)."""
    texts = [EMPTY if i % 7 == 3 else " ".join(f"word{i}x{j}" for j in range(4)) if i % 5 == 1 else f"doc {i} short"
             for i in range(n)]
    return [{"text": t, "label": "pos" if i % 2 else "neg"} for i, t in enumerate(texts)]


def build_docs(tmp: pathlib.Path, minilm, pretokenized: bool = True) -> str:
    from shards.build.driver import BuildConfig, build
    from shards.build.writer import Limits
    from shards.corpus.read import CorpusSpec

    src = write_jsonl(tmp / "src" / "data.jsonl", records(N))
    build([src], BuildConfig(out=str(tmp / "shards"), format="arrow", spec=CorpusSpec(label_field="label"),
                             limits=Limits(max_records=5), tokenizer=minilm if pretokenized else None))
    return str(tmp / "shards")


def packed(url, rank, world, *, shuffle=True, split=True, seq=SEQ, tokenizer=None, max_length=None, chunk_tokens=None,
           **config):
    inner = ShardStream(url, rank=rank, world_size=world, shuffle=shuffle, seed=3, tokenizer=tokenizer,
                        max_length=max_length, config=StreamConfig(shuffle_buffer=4, block_size=3, **config))
    return PackedStream(inner, seq, split_documents=split, chunk_tokens=chunk_tokens)


def mixture(urls, rank, world, *, stop="drain", shuffle=True, **config):
    config = StreamConfig(shuffle_buffer=5, block_size=3, **config)
    return MixedStream([(ShardStream(u, rank=rank, world_size=world, shuffle=shuffle, seed=2, config=config), w)
                        for u, w in zip(urls, (0.6, 0.4))], seed=2, stop=stop)


# -- in-process ranks -------------------------------------------------------------------------------------------
def drain(loader, take, collect) -> int:
    """``collect`` up to ``take`` batches of ``loader`` (None: all); the batches taken."""
    count = 0
    for batch in islice(loader, take):
        count += 1
        collect(batch)
    return count


def blocks_into(pieces, order=None):
    """A collector of packed batches: each document's tokens into ``pieces``, (document, tokens) into ``order``."""
    def collect(b):
        for row, doc_row, names in zip(b["input_ids"].numpy(), b["doc_ids"].numpy(), b["sample_ids"]):
            for k, name in enumerate(names):
                pieces[name].extend(row[doc_row == k].tolist())
                if order is not None:
                    order.append((name, int((doc_row == k).sum())))
    return collect


def samples_into(seen: Counter):
    def collect(b):
        for sid, pad, source in zip(b["sample_id"], b["is_pad"].tolist(), b["source"].tolist()):
            if not pad:
                seen[(source, sid)] += 1
    return collect


def run(make, world, workers, batch, states, take, collect) -> tuple[list, list]:
    """One stretch: every rank's loader, resumed from ``states``, takes ``take`` batches (a list: each rank's own;
    None: to its end); (each rank's saved state, each rank's batches)."""
    saved, steps = [], []
    for rank in range(world):
        ds = make(rank, world)
        loader = make_loader(ds, batch, num_workers=workers,
                             collate_fn=ds.collator() if isinstance(ds, PackedStream) else None)
        if states is not None:  # any old rank's state as ``state``; a new rank may not have existed
            loader.load_state_dict(states[min(rank, len(states) - 1)], all_ranks=states)
        steps.append(drain(loader, take[rank] if isinstance(take, list) else take, collect))
        saved.append(json.loads(json.dumps(loader.state_dict())))  # what a checkpoint holds
    return saved, steps


def run_stretch(url, world, workers, batch, states, take, **kw):
    pieces = defaultdict(list)
    saved, steps = run(lambda r, w: packed(url, r, w, **kw), world, workers, batch, states, take, blocks_into(pieces))
    return pieces, saved, steps


def chain(url, stretches, **kw):
    """(world, workers, batch, take) stretches, each resumed from the last."""
    got, states = defaultdict(list), None
    for world, workers, batch, take in stretches:
        pieces, states, _ = run_stretch(url, world, workers, batch, states, take, **kw)
        got = merged(got, pieces)
    return got, states


def mix_stretch(urls, world, workers, batch, states, take, **kw):
    seen = Counter()
    saved, steps = run(lambda r, w: mixture(urls, r, w, **kw), world, workers, batch, states, take, samples_into(seen))
    return seen, saved, steps


def mix_chain(urls, stretches, **kw):
    seen, states = Counter(), None
    for i, (world, workers, batch, take) in enumerate(stretches):
        got, states, steps = mix_stretch(urls, world, workers, batch, states, take, **kw)
        assert len(set(steps)) == 1, f"stretch {i}: ranks took {steps} batches"
        seen.update(got)
    return seen, states


def load_packed(url, state, all_ranks, batch=2):
    ds = packed(url, 0, 1)
    loader = make_loader(ds, batch, collate_fn=ds.collator())
    loader.load_state_dict(state, all_ranks=all_ranks)
    return loader


def rest_of(loader) -> dict:
    pieces = defaultdict(list)
    drain(loader, None, blocks_into(pieces))
    return pieces


def merged(*parts) -> dict:
    out = defaultdict(list)
    for part in parts:
        for name, tokens in part.items():
            out[name].extend(tokens)
    return out


def edited(state, edit):
    out = json.loads(json.dumps(state))
    edit(out)
    return out


def expected(url, **kw) -> dict[str, list[int]]:
    """Every document's tokens (specials off, separator on), by sample id: what one epoch must deliver."""
    stream = packed(url, 0, 1, **{**kw, "shuffle": False})
    found = ((item["sample_id"], stream.format.tokens(item["input_ids"])) for item in stream.stream)
    return {name: tokens.tolist() for name, tokens in found if tokens is not None}


def assert_every_token_once(url, got, **kw):
    want = expected(url, **kw)
    assert sorted(got) == sorted(want), f"missing {sorted(set(want) - set(got))[:3]}, extra {sorted(set(got) - set(want))[:3]}"
    wrong = [name for name in want if got[name] != want[name]]
    assert wrong == [], f"{len(wrong)} documents differ, e.g. {wrong[0]}: {got[wrong[0]]} vs {want[wrong[0]]}"


def every_sample(urls) -> set:
    return {(i, it["sample_id"]) for i, u in enumerate(urls) for it in ShardStream(u)}


def assert_every_sample_once(urls, seen):
    assert set(seen) == every_sample(urls), f"missing {sorted(every_sample(urls) - set(seen))[:3]}"
    assert max(seen.values()) == 1, f"twice or more: {[k for k, n in seen.items() if n > 1][:3]}"
