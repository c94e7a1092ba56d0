"""``OUT/model/``: a complete Hugging Face model folder — weights, config with label names, tokenizer.

    path = save(model, cfg.tokenizer, os.path.join(cfg.out, "model"))
    AutoTokenizer.from_pretrained(path); AutoModelForSequenceClassification.from_pretrained(path)
    python -m pipeline.train --model OUT/model ...      # trains on with the same tokenizer

The tokenizer saved is the one the run tokenized with (``--tokenizer``, by
default the model folder's own), so ids mean the same thing when the folder is
loaded again.  A classifier's ``config.id2label`` / ``label2id`` carry the train
manifest's ``label_names`` (set when the model is loaded, ``pipeline.train.models``).
"""
from __future__ import annotations

import os


def save(model, tokenizer_source: str, path: str) -> str:
    """Write the weights, config and the tokenizer of ``tokenizer_source`` (a folder or tokenizer.json)."""
    model.save_pretrained(path)
    hf_tokenizer(tokenizer_source).save_pretrained(path)
    return path


def hf_tokenizer(source: str):
    """A transformers fast tokenizer for a tokenizer folder, or for a bare tokenizer.json file."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if os.path.isfile(source):
        return PreTrainedTokenizerFast(tokenizer_file=source)
    return AutoTokenizer.from_pretrained(source)
