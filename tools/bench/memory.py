"""Run a command and sample the PSS of its whole process tree (main + DataLoader workers).

PSS (proportional set size) splits each shared page among the processes
mapping it, so summing it over main + workers counts copy-on-write pages
once, unlike RSS.  Read from /proc/PID/smaps_rollup.  Two peaks are kept:
all of PSS, and its anonymous + shmem part ("data": the heap, buffers,
tensors).  The file-backed rest is mostly shared libraries (libtorch alone is
hundreds of MB), whose PSS share changes whenever an unrelated process on the
machine maps or unmaps the same files: on a shared machine only the data
part says whether memory follows the corpus size.
"""
from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass

import psutil


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_pss: int          # bytes, max over samples of the tree's summed PSS
    peak_processes: int    # processes in the tree at that peak
    samples: int           # how many times the tree was sampled
    timed_out: bool = False
    peak_pss_data: int = 0  # bytes, max over samples of the tree's summed Pss_Anon + Pss_Shmem


def read_rollup(pid: int) -> dict[str, int]:
    """Pss, Pss_Anon, Pss_File, Pss_Shmem (bytes) of one process."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key.startswith("Pss"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def tree_pss(root: psutil.Process) -> tuple[int, int, int]:
    """(summed PSS, summed anon+shmem PSS, processes counted) of ``root`` and its descendants."""
    try:
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0, 0
    total = data = counted = 0
    for proc in procs:
        try:
            roll = read_rollup(proc.pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # exited between listing and reading: it holds no memory any more
        if "Pss" not in roll:
            continue  # a zombie has an empty rollup
        total += roll["Pss"]
        data += roll.get("Pss_Anon", roll["Pss"]) + roll.get("Pss_Shmem", 0)
        counted += 1
    return total, data, counted


class PssSampler:
    """A thread that samples ``tree_pss(pid)`` every ``interval`` seconds and keeps the peaks."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = self.peak_data = self.peak_procs = self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pss, data, procs = tree_pss(self.root)
            self.samples += 1
            if pss > self.peak:
                self.peak, self.peak_procs = pss, procs
            self.peak_data = max(self.peak_data, data)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_measured(cmd: list[str], env: dict | None = None, cwd: str | None = None, timeout: float = 1800,
                 interval: float = 0.05) -> Measured:
    """Run ``cmd`` to completion, sampling its tree's PSS; stdout/stderr are captured."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    timed_out = False
    with PssSampler(proc.pid, interval) as sampler:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_tree(proc.pid)
            out, err = proc.communicate()
    return Measured(proc.returncode, out, err, time.perf_counter() - t0, sampler.peak,
                    sampler.peak_procs, sampler.samples, timed_out, sampler.peak_data)


def _kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue
