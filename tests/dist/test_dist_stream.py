"""Two real processes (torchrun, gloo) with two DataLoader workers each: every id exactly once."""
import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from tests.helpers.data import ROOT, build_set


@pytest.mark.dist
@pytest.mark.timeout(180)
def test_two_ranks_gloo_every_sample_once(tmp_path):
    url = build_set(tmp_path, n=101, max_records=6)
    out = tmp_path / "ids.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(ROOT / "tests" / "dist_stream_main.py"), url, str(out)],
                   check=True, env=env, timeout=170)
    ranks = json.loads(out.read_text())
    counts = Counter(i for r in ranks for i in r["ids"])
    assert len(counts) == 101 and set(counts.values()) == {1}
    assert ranks[0]["steps"] == ranks[1]["steps"]
    assert not set(ranks[0]["ids"]) & set(ranks[1]["ids"])
