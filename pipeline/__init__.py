"""Streaming side: ShardStream (split, shuffle, tokenize), make_loader, and the training loop.

    from pipeline import ShardStream, make_loader
    ds = ShardStream("shards/", tokenizer="path/to/tokenizer", max_length=128, shuffle=True)
    loader = make_loader(ds, batch_size=64, num_workers=2)

With ``transformers.Trainer``: ``data_collator=TrainerCollator.for_stream(ds)`` (hf.py).
"""
import shards as _shards

if getattr(_shards, "__file__", None) is None:
    # A folder named shards/ without __init__.py, earlier on sys.path (the working directory),
    # became a namespace package in place of ours; every later import would fail obscurely.
    raise ImportError(f"'shards' resolved to the folder {', '.join(dict.fromkeys(map(str, _shards.__path__)))}, not the shardstream "
                      f"package: a local folder named shards/ shadows it; rename that folder or run from another "
                      f"directory")

from pipeline.collate import Collator  # noqa: E402  (after the check above, which names the cause)
from pipeline.hf import TrainerCollator  # noqa: E402
from pipeline.loader.make import loader_stats, make_loader  # noqa: E402
from pipeline.mix import MixedStream, open_mixture, parse_mixture  # noqa: E402
from pipeline.pack.stream import BlockCollator, PackedStream, lockstep  # noqa: E402
from pipeline.settings import ResumeError  # noqa: E402
from pipeline.stream import ShardStream, StreamConfig  # noqa: E402
from pipeline.world import World, from_env  # noqa: E402

__all__ = ["BlockCollator", "Collator", "MixedStream", "PackedStream", "ResumeError", "ShardStream", "StreamConfig",
           "TrainerCollator", "World", "from_env", "loader_stats", "lockstep", "make_loader", "open_mixture",
           "parse_mixture"]
