"""Run under torchrun by tests/test_dist_stream.py: each rank streams its part and all-gathers ids."""
import json
import sys

import torch.distributed as dist

from pipeline import ShardStream, make_loader
from pipeline.world import from_env


def main(url: str, out: str) -> None:
    dist.init_process_group("gloo")
    me = from_env()
    ds = ShardStream(url, shuffle=True, seed=11)  # rank / world size from the process group
    assert ds.world.rank == me.rank and ds.world.world_size == me.world_size
    ids, steps = [], 0
    for batch in make_loader(ds, 4, num_workers=2):
        steps += 1
        ids += [s for s, pad in zip(batch["sample_id"], batch["is_pad"].tolist()) if not pad]
    gathered = [None] * me.world_size
    dist.all_gather_object(gathered, {"rank": me.rank, "ids": ids, "steps": steps})
    if me.rank == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
