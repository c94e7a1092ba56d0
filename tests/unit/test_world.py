"""Who am I in a multi-node job: from_env, the per-process thread count, every node's start line."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

import pytest
import torch

from pipeline.train import loop as train
from pipeline.world import World, from_env, intra_op_threads
from tests.helpers.data import ROOT
from tests.helpers.trainkit import ENV, shard_sets, tiny_bert, train_args

TORCHRUN = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1"}


def test_from_env_reads_node_and_local_world():
    w = from_env(TORCHRUN)
    assert (w.rank, w.world_size, w.local_rank, w.local_world_size, w.group_rank) == (3, 4, 1, 2, 1)
    assert w.multi_node and w.omp_num_threads is None
    assert from_env({**TORCHRUN, "OMP_NUM_THREADS": "3"}).omp_num_threads == "3"
    one = from_env({})
    assert (one.local_world_size, one.group_rank, one.multi_node) == (1, 0, False)
    assert from_env({"RANK": "1", "WORLD_SIZE": "2"}).local_world_size == 2  # not torchrun: assume one host


@pytest.mark.parametrize("env,needle", [({"GROUP_RANK": "x"}, "GROUP_RANK='x'"),
                                        ({"LOCAL_WORLD_SIZE": "1"}, "local rank 1 / local world size 1")])
def test_from_env_refuses_bad_values_in_one_line(env, needle):
    with pytest.raises(ValueError, match="^[^\n]*$") as exc:
        from_env({**TORCHRUN, **env})
    assert needle in str(exc.value)


def test_threads_split_the_cpus_between_the_processes_of_a_host():
    w = World(0, 4, 0, local_world_size=2)
    assert intra_op_threads(w, 16, 2) == (8, "16 cpus / 2 processes on this host")
    assert intra_op_threads(World(0, 2), 16, 2)[0] == 8  # two loopback "nodes": LOCAL_WORLD_SIZE 1, same host
    assert intra_op_threads(w, 3, 4)[0] == 1  # never 0
    assert intra_op_threads(World(), 6, 1) == (6, "6 cpus / 1 process on this host")
    assert intra_op_threads(World(omp_num_threads="2"), 16, 1) == (None, "OMP_NUM_THREADS=2")


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_announce_sets_threads_unless_omp_num_threads(keep_threads, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.node")
    cpus = len(os.sched_getaffinity(0))
    train.announce(World(0, 2, 0, local_world_size=2), torch.device("cpu"))
    assert torch.get_num_threads() == max(1, cpus // 2)
    torch.set_num_threads(1)
    train.announce(World(omp_num_threads="5"), torch.device("cpu"))
    assert torch.get_num_threads() == 1  # left to OMP_NUM_THREADS (torch read it at start-up)
    assert "(OMP_NUM_THREADS=5)" in caplog.text


@pytest.mark.timeout(120)
def test_one_process_run_prints_the_start_line(tmp_path, monkeypatch, capsys, keep_threads):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    tr, _ = shard_sets(tmp_path, n_train=8, n_eval=2)
    assert train.main(train_args(tr, None, tiny_bert(tmp_path / "bert"), tmp_path / "run", 1, 4)) == 0
    cpus = len(os.sched_getaffinity(0))
    out = capsys.readouterr().out
    assert (f"[rank 0] start: rank 0/1 node 0 ({socket.gethostname()}) local rank 0/1, 1 process(es) on this "
            f"host, {cpus} torch threads ({cpus} cpus / 1 process on this host)") in out
    assert "[rank 0] step 1/1 epoch 0 loss" in out
    assert torch.get_num_threads() == cpus


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.timeout(300)
def test_two_loopback_nodes_each_print_start_and_progress(tmp_path):
    """Two torchrun agents on this machine (--nnodes 2): node 1's first process prints too, and
    the two processes split the cpus although each node has LOCAL_WORLD_SIZE 1."""
    tr, _ = shard_sets(tmp_path)
    args = train_args(tr, None, tiny_bert(tmp_path / "bert"), tmp_path / "run", 2, 4)
    env = {k: v for k, v in ENV.items() if k != "OMP_NUM_THREADS"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--node_rank", str(n), "--master_addr", "127.0.0.1", "--master_port", str(port),
                               "-m", "pipeline.train", *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for n in (0, 1)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    cpus = len(os.sched_getaffinity(0))
    for rank, out in enumerate(outs):
        assert (f"[rank {rank} node {rank}] start: rank {rank}/2 node {rank} ({socket.gethostname()}) local rank 0/1, "
                f"2 process(es) on this host, {max(1, cpus // 2)} torch threads") in out, out
        assert f"[rank {rank} node {rank}] step 2/2 epoch 0" in out, out
