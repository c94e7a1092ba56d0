"""One-line errors for ``pipeline.train``, also under torchrun.

A user error (bad settings, a missing or corrupt shard set, a checkpoint that
does not verify or fit) ends the run with one line: what failed, where and the
fix, and exit status 2; ``--debug`` shows the Python traceback instead.  Bugs
(any other exception) keep their traceback.

Under torchrun the agent prints its own traceback and a ``ChildFailedError``
block after a rank fails, which would bury the line.  So the failing rank
(1) writes the line to torchrun's error file (``TORCHELASTIC_ERROR_FILE``), so the
block's root cause shows it instead of a link to the docs, and (2) hands it to a
small detached process that prints it once the agent has exited: it is then the
last line on the terminal.  Ranks that fail with the same line print it once.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import shards
from pipeline.train.checkpoint_files import CheckpointError
from shards import StorageError, redact

# ManifestError, TokenizerError and BadRecordError are ValueErrors; OSError covers a missing
# file or folder, a full disk and a read-only --out (its message names the path)
USER_ERRORS = (ValueError, shards.CorruptShardError, StorageError, CheckpointError, OSError)
EXIT_STATUS = 2
# printed by a detached interpreter once torchrun (pid argv[1]) has gone, gives up after 2 minutes.
# An exited torchrun stays a zombie until its parent reaps it, and a parent reading our shared
# pipe to its end reaps it only after we exit: so a zombie counts as gone (/proc state Z or X).
_PRINT_AFTER = """
import os, sys, time
pid, line, marker = int(sys.argv[1]), sys.argv[2], sys.argv[3]

def alive():
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True

end = time.monotonic() + 120
while time.monotonic() < end and alive():
    time.sleep(0.05)
try:
    os.unlink(marker)  # first: a closed terminal (EPIPE below) must not leave it behind
except OSError:
    pass
sys.stderr.write(line + "\\n")
sys.stderr.flush()
"""


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (chained newlines folded)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text += f": {exc.filename}"
    return f"pipeline.train: error: {redact(text)}"


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def report(exc: BaseException, rank: int, world_size: int) -> int:
    """Print the one line for ``exc`` (last on the terminal under torchrun); returns the exit status."""
    line = one_line(exc)
    if world_size > 1:
        line = line.replace("pipeline.train: error:", f"pipeline.train: error (rank {rank}):", 1)
    if not under_torchrun():
        print(line, file=sys.stderr, flush=True)
        return EXIT_STATUS
    _write_error_file(line)
    if not _print_after_agent(line):
        print(line, file=sys.stderr, flush=True)
    return EXIT_STATUS


def _write_error_file(line: str) -> None:
    """torchrun's root-cause block shows ``message`` of this file as the failure's traceback."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"message": line, "timestamp": int(time.time())}, f)
    except OSError:
        pass  # only decoration: the line is printed below either way


def _print_after_agent(line: str) -> bool:
    """Start the detached printer; False when it could not start (the caller prints now)."""
    agent = os.getppid()
    key = hashlib.sha256(f"{agent}:{line.split('):', 1)[-1]}".encode()).hexdigest()[:16]
    marker = os.path.join(tempfile.gettempdir(), f"pipeline-train-error-{key}")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return True  # another rank of this job reports the same line
    except OSError:
        return False
    try:
        subprocess.Popen([sys.executable, "-c", _PRINT_AFTER, str(agent), line, marker],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
                         close_fds=True)
    except OSError:
        os.unlink(marker)
        return False
    return True
