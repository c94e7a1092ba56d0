"""Streaming side: ShardStream (split, shuffle, tokenize), make_loader, and the training loop.

    from pipeline import ShardStream, make_loader
    ds = ShardStream("shards/", tokenizer="path/to/tokenizer", max_length=128, shuffle=True)
    loader = make_loader(ds, batch_size=64, num_workers=2)
"""
from .collate import Collator
from .dataset import ShardStream, StreamConfig
from .loader import loader_stats, make_loader
from .mix import MixedStream, open_mixture, parse_mixture
from .pack import BlockCollator, PackedStream, lockstep
from .settings import ResumeError
from .world import World, from_env

__all__ = ["BlockCollator", "Collator", "MixedStream", "PackedStream", "ResumeError", "ShardStream", "StreamConfig",
           "World", "from_env", "loader_stats", "lockstep", "make_loader", "open_mixture", "parse_mixture"]
