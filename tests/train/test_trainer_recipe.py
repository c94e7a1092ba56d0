"""The README's "Hugging Face Trainer" example runs as written: the python block is taken from
README.md and run in a fresh interpreter, next to a tiny shard set at the path it names."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.helpers.data import ROOT, build_set

SECTION = "## Hugging Face Trainer"


def readme_example() -> str:
    """The first python code block of the README's Trainer section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.find(f"\n{SECTION}\n")
    assert start >= 0, f"README.md has no {SECTION!r} section"
    section = text[start + 1:].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, f"README.md {SECTION!r} holds no ```python block"
    return found.group(1)


def test_readme_example_is_complete():
    code = readme_example()
    compile(code, "README.md", "exec")  # a syntax error in the block fails here, fast
    for needed in ("TrainerCollator", "dataloader_num_workers=2", "remove_unused_columns=False", "max_steps="):
        assert needed in code, f"the README example lost {needed!r}"


@pytest.mark.slow  # full MiniLM, 5 steps of 16, 2 workers: ~110 s on the shared 2-core machine
@pytest.mark.timeout(300)
def test_readme_trainer_example_runs(tmp_path):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    code, n = re.subn(r"max_steps=\d+", "max_steps=5", readme_example())
    assert n == 1, "the README example sets max_steps once"
    build_set(tmp_path / "data", n=60, max_records=16, name="sst2-train")  # the path the example reads
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"trained 5 steps, loss \d", out.stdout), out.stdout[-2000:]
    model = tmp_path / "runs" / "trainer" / "model"
    config = json.loads((model / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    assert (model / "tokenizer.json").is_file() or (model / "vocab.txt").is_file()
