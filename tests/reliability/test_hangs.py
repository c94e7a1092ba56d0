"""Hang guards: a consumer that breaks out mid-epoch frees its workers; a dying worker raises."""
import os
import signal
import time

import psutil
import pytest

from pipeline import ShardStream, StreamConfig, make_loader
from tests.helpers.data import build_set


def worker_pids() -> set[int]:
    return {c.pid for c in psutil.Process().children(recursive=True)}


@pytest.mark.timeout(60)
def test_workers_exit_after_consumer_breaks_mid_epoch(tmp_path):
    url = build_set(tmp_path, n=400, max_records=10)
    before = worker_pids()
    loader = make_loader(ShardStream(url), 4, num_workers=2)
    it = iter(loader)
    next(it), next(it)
    started = worker_pids() - before
    assert len(started) >= 2
    t0 = time.monotonic()
    del it, loader  # the stateful loader keeps its iterator (for state_dict) until it goes
    deadline = t0 + 10
    while time.monotonic() < deadline and (started & worker_pids()):
        time.sleep(0.05)
    print(f"workers gone {time.monotonic() - t0:.2f} s after the consumer broke out")
    assert not (started & worker_pids()), "DataLoader workers still alive 10 s after the consumer left"


EARLY_EXIT = """
import sys
from pipeline import ShardStream, make_loader
for i, batch in enumerate(make_loader(ShardStream(sys.argv[1]), 4, num_workers=2)):
    if i == 2:
        break
print("broke out")
"""


@pytest.mark.timeout(60)
def test_a_program_that_breaks_out_exits_promptly(tmp_path):
    import subprocess
    import sys

    from tests.helpers.data import ROOT
    url = build_set(tmp_path, n=400, max_records=10)
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", EARLY_EXIT, url], cwd=ROOT, capture_output=True,
                          text=True, timeout=45)
    print(f"process exited {time.monotonic() - t0:.2f} s after start (incl. imports)")
    assert done.returncode == 0 and "broke out" in done.stdout, done.stderr[-2000:]


class DyingStream(ShardStream):
    """Kills its own worker process after a few chunks of samples, as an OOM killer would."""

    def chunks(self, *args, **kwargs):
        for i, chunk in enumerate(super().chunks(*args, **kwargs)):
            if i == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            yield chunk


@pytest.mark.timeout(60)
def test_a_dead_worker_raises_in_the_main_process(tmp_path):
    url = build_set(tmp_path, n=200, max_records=10)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="(?i)worker"):
        for _ in make_loader(DyingStream(url, config=StreamConfig(tokenize_batch=8)), 2, num_workers=2):
            pass
    print(f"worker death surfaced as an error after {time.monotonic() - t0:.2f} s")
