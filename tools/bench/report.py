"""Ratios, targets, the printed table and the PNG chart of a benchmark's results.

Works on the plain dict that ``tools.bench.main`` writes to bench.json, so a saved
bench.json can be re-rendered: ``python -m tools.bench --report bench.json``.
"""
from __future__ import annotations

PEER_WRITERS = ("webdataset", "hf-datasets", "mosaic", "litdata")
PEER_STREAMS = ("webdataset", "hf-datasets", "mosaic", "litdata")


def _ok(row: dict | None) -> bool:
    return bool(row) and row.get("status") == "ok"


def _get(results: dict, section: str, name: str, key: str):
    row = results.get(section, {}).get(name)
    if not _ok(row) or not isinstance(row.get(key), (int, float)):
        return None
    return row[key]


def _ratio(a, b):
    return a / b if a is not None and b else None


def _best(results: dict, section: str, names, key: str):
    rates = [(_get(results, section, n, key), n) for n in names]
    rates = [(r, n) for r, n in rates if r is not None]
    return max(rates) if rates else (None, None)


def ratios(results: dict) -> dict:
    """Every ratio the targets and the chart use (None where a side is missing)."""
    s = lambda name: _get(results, "stream", name, "samples_per_s")  # noqa: E731
    ceil2 = _get(results, "ceiling", "tokenizers-2proc", "samples_per_s")
    ceil1 = _get(results, "ceiling", "tokenizers-1proc", "samples_per_s")
    c = lambda name: _get(results, "stream", name, "samples_per_cpu_s")  # noqa: E731
    best_peer, best_peer_name = _best(results, "stream", PEER_STREAMS, "samples_per_s")
    best_peer_cpu, _ = _best(results, "stream", PEER_STREAMS, "samples_per_cpu_s")
    best_writer, best_writer_name = _best(results, "build", PEER_WRITERS, "mb_per_s")
    mem = results.get("memory", {})
    out = {
        "otf_vs_ceiling_2proc": _ratio(s("ours-otf"), ceil2),
        "otf_vs_ceiling_1proc": _ratio(s("ours-otf"), ceil1),
        "otf_vs_best_peer": _ratio(s("ours-otf"), best_peer),
        "otf_vs_mapstyle": _ratio(s("ours-otf"), s("map-style")),
        "mapstyle_vs_ceiling_2proc": _ratio(s("map-style"), ceil2),
        "pretok_vs_best_peer": _ratio(s("ours-pretok"), best_peer),
        "pretok_vs_otf": _ratio(s("ours-pretok"), s("ours-otf")),
        "build_vs_fastest_peer": _ratio(_get(results, "build", "ours-arrow", "mb_per_s"), best_writer),
        "build_vs_pyarrow_floor": _ratio(_get(results, "build", "ours-arrow", "mb_per_s"),
                                         _get(results, "build", "pyarrow-floor", "mb_per_s")),
        "memory_10x_vs_1x_ours": (mem.get("ours-otf") or {}).get("ratio"),
        "memory_10x_vs_1x_mapstyle": (mem.get("map-style") or {}).get("ratio"),
        "lm_ours_vs_memmap_uint16": _ratio(_get(results, "lm", "ours-packed", "tokens_per_s"),
                                           _get(results, "lm", "memmap-uint16", "tokens_per_s")),
        "lm_ours_vs_litdata_tokens": _ratio(_get(results, "lm", "ours-packed", "tokens_per_s"),
                                            _get(results, "lm", "litdata-tokens", "tokens_per_s")),
        # the same ratios by CPU time (main + workers): far less disturbed by other users of the machine
        "otf_vs_ceiling_cpu": _ratio(c("ours-otf"), _get(results, "ceiling", "tokenizers-1proc", "samples_per_cpu_s")),
        "otf_vs_best_peer_cpu": _ratio(c("ours-otf"), best_peer_cpu),
        "pretok_vs_best_peer_cpu": _ratio(c("ours-pretok"), best_peer_cpu),
        "pretok_vs_otf_cpu": _ratio(c("ours-pretok"), c("ours-otf")),
        "otf_vs_mapstyle_cpu": _ratio(c("ours-otf"), c("map-style")),
        "best_peer_stream": best_peer_name,
        "fastest_peer_writer": best_writer_name,
    }
    return out


TARGETS = [  # (ratio key, comparison, bound, what it says, the same ratio by CPU time)
    ("otf_vs_ceiling_2proc", ">=", 0.9, "on-the-fly >= 0.9x tokenizer ceiling (2 processes)", "otf_vs_ceiling_cpu"),
    ("otf_vs_best_peer", ">=", 1.5, "on-the-fly >= 1.5x best peer", "otf_vs_best_peer_cpu"),
    ("pretok_vs_best_peer", ">=", 3.0, "pre-tokenized >= 3x best on-the-fly peer", "pretok_vs_best_peer_cpu"),
    ("pretok_vs_otf", ">=", 3.0, "pre-tokenized >= 3x our on-the-fly", "pretok_vs_otf_cpu"),
    ("build_vs_fastest_peer", ">=", 1.0, "build (arrow) >= fastest peer writer", None),
    ("memory_10x_vs_1x_ours", "<=", 1.1, "peak PSS (data) at 10x <= 1.1x at 1x", None),
    ("ttfb_ours_s", "<=", 1.0, "time to first batch <= 1 s", None),
]


def _met(v, op, bound):
    return None if v is None else (v >= bound if op == ">=" else v <= bound)


def targets(results: dict, r: dict) -> list[dict]:
    values = dict(r, ttfb_ours_s=_get(results, "stream", "ours-otf", "ttfb_s"))
    out = []
    for key, op, bound, text, cpu_key in TARGETS:
        v = values.get(key)
        row = {"key": key, "value": v, "target": f"{op} {bound:g}", "met": _met(v, op, bound), "what": text}
        if cpu_key:
            row.update(cpu_value=values.get(cpu_key), cpu_met=_met(values.get(cpu_key), op, bound))
        out.append(row)
    return out


def mismatches(results: dict) -> list[str]:
    out = []
    for section in ("stream",):
        for name, row in results.get(section, {}).items():
            exp, got = row.get("expected_samples"), row.get("samples")
            if _ok(row) and exp is not None and got != exp:
                out.append(f"{section}/{name}: {got} samples per epoch, expected {exp}")
    return out


# -- text table ------------------------------------------------------------------
def _median(v) -> float:
    import statistics

    return statistics.median(v) if isinstance(v, list) else float(v or 0)


def _fmt(v, spec=",.0f") -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return "/".join(_fmt(x, spec) for x in v)
    return format(v, spec)


def _rows(section: dict, cols) -> list[list[str]]:
    rows = []
    for name, row in section.items():
        if not _ok(row):
            rows.append([name, row.get("status", "?")])  # a short row: printed as "name  status"
            continue
        rows.append([name] + [_fmt(row.get(k), spec) if not callable(k) else k(row) for k, spec in cols])
    return rows


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    full = [r for r in rows if len(r) == len(header)]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *full)] if full else [len(h) for h in header]
    lines = [title, "  " + "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    for r in rows:
        if len(r) == len(header):
            lines.append("  " + "  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)
                                          for i, (x, w) in enumerate(zip(r, widths))))
        else:
            lines.append(f"  {r[0].ljust(widths[0])}  {r[1]}")
    return "\n".join(lines)


def render(results: dict) -> str:
    meta = results["meta"]
    parts = [f"shardstream benchmark: {meta['corpus']['records']:,} records ({meta['corpus']['source']} x"
             f"{meta['scale']:g}, {meta['corpus']['bytes'] / 1e6:.1f} MB JSONL), batch {meta['settings']['batch']}, "
             f"{meta['settings']['workers']} workers, max_length {meta['settings']['max_length']}, median of "
             f"{meta['reps']} reps; {meta['machine']['summary']}"]
    pss = ("peak_pss_data_mb", ",.0f")
    parts.append(_table("Build JSONL -> shards", ["writer", "MB/s", "s", "shards MB"],
                        _rows(results.get("build", {}), [("mb_per_s", ",.2f"), ("seconds", ",.2f"),
                                                         (lambda r: _fmt(_median(r.get("output_bytes")) / 1e6, ",.1f"), None)])))
    parts.append(_table("Tokenizer ceiling (tok(1024 texts) in a loop)",
                        ["tokenizer", "samples/s", "tokens/s", "samples/CPU-s"],
                        _rows(results.get("ceiling", {}), [("samples_per_s", ",.0f"), ("tokens_per_s", ",.0f"),
                                                           ("samples_per_cpu_s", ",.0f")])))
    parts.append(_table("Stream + tokenize one epoch (DataLoader, 2 workers)",
                        ["pipeline", "samples/s", "tokens/s", "samples/CPU-s", "ttfb s", "data MB", "samples"],
                        _rows(results.get("stream", {}), [("samples_per_s", ",.0f"), ("tokens_per_s", ",.0f"),
                                                          ("samples_per_cpu_s", ",.0f"), ("ttfb_s", ".2f"), pss,
                                                          ("samples", ",d")])))
    mem_rows = [[n, _fmt(m.get("data_1x_mb")), _fmt(m.get("data_10x_mb")), _fmt(m.get("ratio"), ".2f"),
                 _fmt(m.get("pss_1x_mb")), _fmt(m.get("pss_10x_mb")), _fmt(m.get("ratio_total"), ".2f")]
                if m.get("status") == "ok" else [n, m.get("status", "?")]
                for n, m in results.get("memory", {}).items()]
    parts.append(_table("Peak PSS of main + workers, MB: data (anon+shmem) and total (incl. shared libraries)",
                        ["pipeline", "data 1x", "data 10x", "10x/1x", "total 1x", "total 10x", "10x/1x"], mem_rows))
    lm_cpu = (lambda r: _fmt(r["tokens"] / r["cpu_s"] if r.get("cpu_s") and isinstance(r.get("tokens"), int)
                             else None), None)
    parts.append(_table("LM blocks of 128 tokens (batch 64, 2 workers)",
                        ["pipeline", "tokens/s", "tokens/CPU-s", "ttfb s", "tokens"],
                        _rows(results.get("lm", {}), [("tokens_per_s", ",.0f"), lm_cpu, ("ttfb_s", ".2f"),
                                                      ("tokens", ",d")])))
    r = results.get("ratios", {})
    parts.append(f"best peer stream: {r.get('best_peer_stream')}; fastest peer writer: {r.get('fastest_peer_writer')}")
    word = {True: "met", False: "MISSED", None: "n/a"}
    trows = [[t["what"], _fmt(t["value"], ".2f"), t["target"], word[t["met"]],
              _fmt(t.get("cpu_value"), ".2f"), word[t.get("cpu_met")] if "cpu_value" in t else ""]
             for t in results.get("targets", [])]
    parts.append(_table("Targets (wall time; and by CPU time of main + workers)",
                        ["target", "value", "bound", "", "by CPU", ""], trows))
    if results.get("mismatches"):
        parts.append("Sample-count mismatches:\n" + "\n".join("  " + m for m in results["mismatches"]))
    return "\n\n".join(parts)


# -- chart -----------------------------------------------------------------------
def plot(results: dict, path: str) -> None:
    """Two panels: each pipeline's rate relative to the 2-process ceiling, and the target ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ceil2 = _get(results, "ceiling", "tokenizers-2proc", "samples_per_s")
    ceil_cpu = _get(results, "ceiling", "tokenizers-1proc", "samples_per_cpu_s")
    rows = [(n, row["samples_per_s"] / ceil2 if ceil2 else 0,
             row.get("samples_per_cpu_s", 0) / ceil_cpu if ceil_cpu else 0)
            for n, row in results.get("stream", {}).items() if _ok(row)]
    tg = [t for t in results.get("targets", []) if t["value"] is not None]
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5.5))
    if rows:
        names = [r[0] for r in rows]
        y = range(len(rows))
        a.barh([i - 0.2 for i in y], [r[1] for r in rows], height=0.4, color="tab:blue", label="wall: / ceiling, 2 procs")
        a.barh([i + 0.2 for i in y], [r[2] for r in rows], height=0.4, color="tab:orange",
               label="CPU: samples per CPU-s / ceiling's")
        a.set_yticks(list(y), names)
        a.axvline(1.0, color="k", lw=0.8, ls="--")
        a.axvline(0.9, color="tab:red", lw=0.8, ls=":")
        a.set_xlabel("fraction of the raw tokenizer ceiling")
        a.set_title("Stream + tokenize, one epoch")
        a.legend(fontsize=8, loc="lower right")
        a.invert_yaxis()
    if tg:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        labels = [t["key"] for t in tg]
        colors = ["tab:green" if t["met"] else "tab:red" for t in tg]
        b.barh(labels, [t["value"] for t in tg], color=colors)
        for i, t in enumerate(tg):
            bound = float(t["target"].split()[1])
            b.plot([bound, bound], [i - 0.4, i + 0.4], color="k", lw=1.5)
        b.set_xscale("log")
        b.set_xticks([0.2, 0.5, 1, 2, 3, 5, 10])
        b.xaxis.set_major_formatter(ScalarFormatter())
        b.xaxis.set_minor_formatter(NullFormatter())
        b.set_title("Targets, wall time (black tick = bound; green = met)")
        b.invert_yaxis()
    meta = results["meta"]
    fig.suptitle(f"shardstream vs peers: {meta['corpus']['records']:,} records, {meta['machine']['summary']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
