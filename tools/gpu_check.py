"""GPU readiness: does the loader keep one GPU busy?

    .venv/bin/python -m tools.gpu_check                       # on a CUDA machine (or tools/gpu_check.sh)
    .venv/bin/python -m tools.gpu_check --json gpu.json       # the figures as JSON too
    .venv/bin/python -m tools.gpu_check --device cpu --smoke  # the same code, tiny sizes, on CPU (< 1 min)

Four training cases, each a real forward + backward + AdamW step in bf16 autocast
(``--precision``; on CPU the default is fp32, as CPU bf16 is emulated and slow):

- ``classify``: the bundled MiniLM (``pipeline.train.models.load_model``), batch 256,
  ``max_length`` 128, on SST-2 (``../shared/corpora/sst2/train.tsv``) or, when
  absent, a generated sentiment corpus (``tools.make_corpus``);
- ``lm``: a GPT-2-small-sized causal LM (12 layers, 768 wide, 12 heads, random
  init, the MiniLM vocabulary) on packed blocks of 1024 tokens (``PackedStream``),
  batch 16, on WikiText-2 (valid + test, repeated until there are enough tokens),
  else SST-2's sentences, else generated sentences;

each from text shards tokenized on the fly and from shards pre-tokenized at build
time (both built here with ``shards.build.driver`` in a temporary folder), through
``make_loader(..., num_workers=K)`` (``--num-workers``; default 4 on GPU, 2 on CPU).

The data-wait fraction is the time the step loop blocks in ``next()`` on the loader
divided by the wall time of the measured steps (``pipeline.train.metrics.Meter``, as
``pipeline.train`` reports it), after ``--warmup`` steps that absorb worker start-up
and CUDA warm-up.  The loop is ``pipeline.train``'s: batch to the device
(pinned, non-blocking), forward, ``loss.item()``, backward, step.  Wall time starts
and ends on ``torch.cuda.synchronize()``; CUDA events around every step give the GPU
time per step and the GPU-idle fraction (1 - GPU busy / wall, which also holds
Python launch overhead).  The target is a data-wait under 1 %.  Exit status 0 (with
``--strict``: 1 when a case misses the target).
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time

from tools.gpu_check_data import build_set, classify_corpus, lm_corpus

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPORA = ROOT.parent / "shared" / "corpora"
TARGET = 0.01  # data-wait fraction
CASES = ("classify/on-the-fly", "classify/pre-tokenized", "lm/on-the-fly", "lm/pre-tokenized")
log = logging.getLogger("tools.gpu_check")


# -- settings ---------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes (2-layer models, small batches, few steps): a quick check that it runs")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: 4 on GPU, 2 on CPU)")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    p.add_argument("--steps", type=int, default=None, help="measured steps per case (default 100; smoke 3)")
    p.add_argument("--warmup", type=int, default=None, help="steps before measuring (default 10; smoke 1)")
    p.add_argument("--cls-batch", type=int, default=None, help="classification batch (default 256; smoke 8)")
    p.add_argument("--max-length", type=int, default=128, help="classification max_length")
    p.add_argument("--lm-batch", type=int, default=None, help="LM blocks per batch (default 16; smoke 2)")
    p.add_argument("--seq-len", type=int, default=None, help="LM block length (default 1024; smoke 128)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                   help="bf16 autocast or plain fp32 (default: bf16; fp32 on CPU, where bf16 is emulated and "
                        "several times slower)")
    p.add_argument("--corpora", default=str(CORPORA), help="folder of the real corpora (sst2/, wikitext-2/)")
    p.add_argument("--work", default=None, help="folder for corpora and shards (default: a temp dir, removed)")
    p.add_argument("--build-workers", type=int, default=None,
                   help="shards build workers (default: min(4, CPUs); smoke 1)")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write the figures to OUT")
    p.add_argument("--strict", action="store_true", help="exit 1 when any case misses the < 1 %% target")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    big = not args.smoke
    defaults = {"steps": 100 if big else 3, "warmup": 10 if big else 1, "cls_batch": 256 if big else 8,
                "lm_batch": 16 if big else 2, "seq_len": 1024 if big else 128}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        p.error(f"--cases {','.join(unknown)}: valid: {', '.join(CASES)}")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


def model_sizes(smoke: bool) -> dict:
    """GPT-2 small, or a 2-layer toy for the smoke run; MiniLM keeps 2 of its 6 layers in a smoke run."""
    if smoke:
        return {"minilm_layers": 2, "n_layer": 2, "n_embd": 64, "n_head": 2}
    return {"minilm_layers": None, "n_layer": 12, "n_embd": 768, "n_head": 12}


# -- corpora and shards -----------------------------------------------------------


# -- devices and timing -------------------------------------------------------------
def pick_device(name: str | None):
    import torch

    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: error: --device cuda but torch sees no CUDA device "
                         f"(torch {torch.__version__}); pass --device cpu for the smoke run")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(loader, step, device, warmup: int, steps: int) -> dict:
    """Run ``warmup`` then ``steps`` steps of ``step(batch) -> (samples, tokens)`` over ``loader``.

    The measured window starts and ends synchronised with the device; the loop's
    time blocked in ``next()`` is the data wait (``pipeline.train.metrics.Meter``).
    """
    import torch

    from pipeline.train import metrics

    it = iter(loader)
    t0 = time.perf_counter()
    for done in range(warmup):
        batch = next(it, None)
        if batch is None:
            raise RuntimeError(f"the corpus ran out after {done} warm-up steps; pass fewer --warmup/--steps")
        step(batch)
    synchronize(device)
    warm_s = time.perf_counter() - t0
    cuda = device.type == "cuda"
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(steps)] if cuda else []
    meter = metrics.Meter(1)  # its clock starts now
    for i in range(steps):
        t = meter.clock()
        batch = next(it, None)
        meter.waited(t)
        if batch is None:  # the corpus ran out: report the steps done
            log.warning("the loader ran out after %d of %d measured steps", i, steps)
            break
        if cuda:
            events[i][0].record()
        samples, tokens, loss = step(batch)
        if cuda:
            events[i][1].record()
        meter.step(loss, samples, tokens)
    synchronize(device)
    if meter.steps == 0:
        raise RuntimeError("no measured step: the corpus is too small for --warmup")
    summary = metrics.summarise(metrics.totals(meter), 1, meter.steps)
    wall = summary["train_seconds"]
    out = {"steps": meter.steps, "warmup": warmup, "warmup_s": warm_s, "wall_s": wall,
           "samples": meter.samples, "tokens": meter.tokens, "data_wait_s": meter.wait_s,
           "data_wait_fraction": summary["data_wait_fraction"], "samples_per_s": summary["samples_per_s"],
           "tokens_per_s": summary["tokens_per_s"], "step_ms": 1000 * wall / meter.steps,
           "final_loss": meter.losses[-1], "gpu_step_ms": None, "gpu_idle_fraction": None}
    if cuda:
        gpu_ms = [a.elapsed_time(b) for a, b in events[:meter.steps]]
        out["gpu_step_ms"] = sum(gpu_ms) / len(gpu_ms)
        out["gpu_idle_fraction"] = max(0.0, 1 - sum(gpu_ms) / 1000 / wall)
    del it
    gc.collect()
    return out


# -- the two workloads ------------------------------------------------------------------
def classify_model(label_names, sizes, device):
    import torch

    from pipeline.train import models

    model = models.load_model("classify", "minilm", num_labels=len(label_names), label_names=label_names)
    if sizes["minilm_layers"]:
        base = getattr(model, model.base_model_prefix)
        base.encoder.layer = torch.nn.ModuleList(list(base.encoder.layer)[:sizes["minilm_layers"]])
        model.config.num_hidden_layers = sizes["minilm_layers"]
    return model.to(device).train()


def lm_model(vocab_size: int, seq_len: int, pad_id: int, sizes, device, seed: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=max(seq_len, 1024), n_layer=sizes["n_layer"],
                        n_embd=sizes["n_embd"], n_head=sizes["n_head"], pad_token_id=pad_id,
                        bos_token_id=pad_id, eos_token_id=pad_id, use_cache=False)
    return GPT2LMHeadModel(config).to(device).train()


def optimizer(model, device):
    import torch

    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=device.type == "cuda")


def classify_step(model, opt, device, precision: str):
    from pipeline.train import models
    from pipeline.train.evaluate import autocast

    def step(batch):
        ids = batch["input_ids"].to(device, non_blocking=True)
        mask = batch["attention_mask"].to(device, non_blocking=True)
        with autocast(precision, device):
            logits = model(input_ids=ids, attention_mask=mask).logits
            loss, n = models.classify_loss(logits, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens = int(batch["attention_mask"][~batch["is_pad"]].sum())
        return n, tokens, loss.item()

    return step


def lm_step(model, opt, device, precision: str):
    from pipeline.train import models
    from pipeline.train.evaluate import autocast

    def step(batch):
        ids = batch["input_ids"].to(device, non_blocking=True)
        positions = batch["position_ids"].to(device, non_blocking=True)
        labels = models.lm_labels(batch).to(device, non_blocking=True)
        with autocast(precision, device):
            logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
            summed, count = models.lm_loss(logits, labels)
        loss = summed / max(count, 1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return int((~batch["is_pad"]).sum()), int(batch["num_tokens"]), loss.item()

    return step


def run_classify(args, work, device, sizes, wanted, tok_dir, corpus_note) -> list[dict]:
    from pipeline import ShardStream, StreamConfig, make_loader

    corpus, note = classify_corpus(args, work)
    corpus_note["classify"] = note
    text = build_set([corpus], work / "cls-text", args, label=True) if "classify/on-the-fly" in wanted else None
    pretok = build_set([corpus], work / "cls-tok", args, label=True, tokenizer=tok_dir,
                       max_length=args.max_length) if "classify/pre-tokenized" in wanted else None
    labels = ShardStream(text or pretok).label_names or ["0", "1"]
    model = classify_model(labels, sizes, device)
    step = classify_step(model, optimizer(model, device), device, args.precision)
    rows = []
    for mode, url, tok in (("on-the-fly", text, tok_dir), ("pre-tokenized", pretok, None)):
        case = f"classify/{mode}"
        if case not in wanted:
            continue
        ds = ShardStream(url, tokenizer=tok, max_length=args.max_length, shuffle=True, seed=args.seed,
                         config=StreamConfig(keep_text=False))
        loader = make_loader(ds, args.cls_batch, num_workers=args.num_workers, pin_memory=device.type == "cuda")
        log.info("%s: batch %d, max_length %d, %d workers", case, args.cls_batch, args.max_length, args.num_workers)
        res = measure(loader, step, device, args.warmup, args.steps)
        rows.append({"case": case, "task": "classify", "tokenization": mode, "model": "MiniLM-L6" + (
            f" (first {sizes['minilm_layers']} layers)" if sizes["minilm_layers"] else ""),
            "batch_size": args.cls_batch, "max_length": args.max_length, **res})
        del loader, ds
        gc.collect()
    del model, step
    return rows


def run_lm(args, work, device, sizes, wanted, tok_dir, corpus_note) -> list[dict]:
    import shards
    from pipeline import ShardStream, StreamConfig, make_loader
    from pipeline.pack.stream import PackedStream

    paths, note = lm_corpus(args, work)
    corpus_note["lm"] = note
    text = build_set(paths, work / "lm-text", args) if "lm/on-the-fly" in wanted else None
    pretok = build_set(paths, work / "lm-tok", args, tokenizer=tok_dir) if "lm/pre-tokenized" in wanted else None
    tok = shards.load_tokenizer(tok_dir)
    pad_id = int(shards.special_ids(tok).get("pad", 0))
    model = lm_model(tok.get_vocab_size(), args.seq_len, pad_id, sizes, device, args.seed)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    step = lm_step(model, optimizer(model, device), device, args.precision)
    rows = []
    for mode, url, stream_tok in (("on-the-fly", text, tok_dir), ("pre-tokenized", pretok, None)):
        case = f"lm/{mode}"
        if case not in wanted:
            continue
        docs = ShardStream(url, tokenizer=stream_tok, shuffle=True, seed=args.seed,
                           config=StreamConfig(keep_text=False))
        blocks = PackedStream(docs, seq_len=args.seq_len, tokenizer=tok_dir)
        loader = make_loader(blocks, args.lm_batch, num_workers=args.num_workers, collate_fn=blocks.collator(),
                             pin_memory=device.type == "cuda")
        log.info("%s: %d x %d tokens, %d workers", case, args.lm_batch, args.seq_len, args.num_workers)
        res = measure(loader, step, device, args.warmup, args.steps)
        rows.append({"case": case, "task": "lm", "tokenization": mode,
                     "model": f"GPT-2 {sizes['n_layer']}x{sizes['n_embd']} ({params:.0f}M params, random init)",
                     "batch_size": args.lm_batch, "seq_len": args.seq_len, **res})
        del loader, blocks, docs
        gc.collect()
    del model, step
    return rows


# -- output -----------------------------------------------------------------------------
def rate(row: dict) -> str:
    if row["task"] == "lm":
        return f"{row['tokens_per_s']:,.0f} tokens/s"
    return f"{row['samples_per_s']:,.0f} samples/s"


def table(rows: list[dict]) -> str:
    head = ("case", "throughput", "step ms", "GPU ms", "data-wait", "target < 1 %")
    body = [(r["case"], rate(r), f"{r['step_ms']:.1f}",
             "-" if r["gpu_step_ms"] is None else f"{r['gpu_step_ms']:.1f}",
             f"{r['data_wait_fraction']:.2%}", "met" if r["target_met"] else "missed") for r in rows]
    widths = [max(len(str(x[i])) for x in (head, *body)) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(x, widths)))
             for x in (head, *body)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def header(meta: dict) -> str:
    lines = [f"gpu_check: {meta['device_name']} ({meta['device']}), torch {meta['torch']}, "
             f"{meta['precision']}, {meta['num_workers']} loader workers, "
             f"warm-up {meta['warmup']} + {meta['steps']} measured steps"
             + (", SMOKE sizes" if meta["smoke"] else "")]
    for task, note in meta["corpora"].items():
        lines.append(f"  corpus {task}: {note}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    log.setLevel(logging.INFO)
    from pipeline.train import quiet

    quiet.quiet_transformers()
    import torch

    from pipeline.train.models import minilm_dir

    device = pick_device(args.device)
    if args.num_workers is None:
        args.num_workers = 4 if device.type == "cuda" else 2
    if args.precision is None:
        args.precision = "bf16" if device.type == "cuda" else "fp32"
    sizes = model_sizes(args.smoke)
    tok_dir = minilm_dir()
    work = pathlib.Path(args.work) if args.work else pathlib.Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus_note: dict = {}
    t0 = time.perf_counter()
    try:
        rows = []
        if any(c.startswith("classify/") for c in args.cases):
            rows += run_classify(args, work, device, sizes, args.cases, tok_dir, corpus_note)
        if any(c.startswith("lm/") for c in args.cases):
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows += run_lm(args, work, device, sizes, args.cases, tok_dir, corpus_note)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    for row in rows:
        row["target_met"] = row["data_wait_fraction"] < TARGET
    meta = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else "CPU", "torch": torch.__version__, "num_workers": args.num_workers, "smoke": args.smoke,
            "warmup": args.warmup, "steps": args.steps, "precision": args.precision, "target": TARGET,
            "corpora": corpus_note, "sizes": sizes, "cpus": os.cpu_count(),
            "seconds": time.perf_counter() - t0,
            "command": "python -m tools.gpu_check " + " ".join(sys.argv[1:] if argv is None else argv)}
    print(header(meta))
    print(table(rows))
    if args.json_out:
        from pipeline.train.metrics import write_json

        write_json(args.json_out, {"meta": meta, "cases": rows})
        print(f"figures written to {args.json_out}")
    return 1 if args.strict and not all(r["target_met"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
