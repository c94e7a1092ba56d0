"""What each rank of ``pipeline.train`` reads: its train stream (one set, a mixture, packed) and eval stream.

    stream, train_ds, identity = train_dataset(cfg, world)   # first ShardStream, what the loader reads, ids
    eval_ds = make_stream(cfg.eval, cfg, world, shuffle=False)
"""
from __future__ import annotations

import shards
from pipeline.mix import MixedStream, parse_mixture
from pipeline.pack.stream import PackedStream
from pipeline.stream import ShardStream, StreamConfig
from pipeline.train.config import TrainConfig
from pipeline.world import World


def make_stream(url: str, cfg: TrainConfig, world: World, shuffle: bool,
                whole_documents: bool = False) -> ShardStream:
    """This rank's stream; ``whole_documents`` (for packing): no truncation, no text carried along."""
    return ShardStream(url, tokenizer=cfg.tokenizer, max_length=None if whole_documents else cfg.max_length,
                       shuffle=shuffle, seed=cfg.seed, rank=world.rank, world_size=world.world_size,
                       storage_options=cfg.storage_options,
                       config=StreamConfig(keep_text=False) if whole_documents else
                       StreamConfig(group_by_length=cfg.group_by_length and shuffle))


def train_dataset(cfg: TrainConfig, world: World):
    """(this rank's first ShardStream, what its loader reads, the identity of each train set).

    ``--train a/:0.7,b/:0.3`` mixes shard sets (pipeline.mix, stopping when the first runs out);
    with ``--pack`` the (mixed) documents are packed into LM blocks.
    """
    sources = parse_mixture(cfg.train)
    streams = [make_stream(url, cfg, world, shuffle=True, whole_documents=cfg.pack is not None)
               for url, _ in sources]
    names = {tuple(s.label_names or ()) for s in streams}
    if cfg.task == "classify" and len(names) > 1:
        raise ValueError(f"--train {cfg.train}: the mixed sets have different label names {sorted(names)}; "
                         f"build them with the same --label-names")
    docs = streams[0] if len(streams) == 1 else MixedStream(
        [(s, w) for s, (_, w) in zip(streams, sources)], seed=cfg.seed, stop="first_exhausted")
    identity = [s.manifest.identity for s in streams]  # what the data is: a resume must see the same
    return streams[0], docs if cfg.pack is None else PackedStream(docs, cfg.pack), identity


def eval_identity(cfg: TrainConfig) -> str | None:
    if not cfg.eval:
        return None
    return shards.load_manifest(cfg.eval, cfg.storage_options).identity
