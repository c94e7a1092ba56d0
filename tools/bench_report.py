"""Ratios, targets, the printed table and the PNG chart of a benchmark's results.

Works on the plain dict that ``tools.bench`` writes to bench.json, so a saved
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
    best_peer, best_peer_name = _best(results, "stream", PEER_STREAMS, "samples_per_s")
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
        "best_peer_stream": best_peer_name,
        "fastest_peer_writer": best_writer_name,
    }
    return out


TARGETS = [  # (ratio key, comparison, bound, what it says)
    ("otf_vs_ceiling_2proc", ">=", 0.9, "on-the-fly >= 0.9x tokenizer ceiling (2 processes)"),
    ("otf_vs_best_peer", ">=", 1.5, "on-the-fly >= 1.5x best peer"),
    ("pretok_vs_best_peer", ">=", 3.0, "pre-tokenized >= 3x best on-the-fly peer"),
    ("pretok_vs_otf", ">=", 3.0, "pre-tokenized >= 3x our on-the-fly (issue 3)"),
    ("build_vs_fastest_peer", ">=", 1.0, "build (arrow) >= fastest peer writer"),
    ("memory_10x_vs_1x_ours", "<=", 1.1, "peak PSS at 10x <= 1.1x at 1x"),
    ("ttfb_ours_s", "<=", 1.0, "time to first batch <= 1 s"),
]


def targets(results: dict, r: dict) -> list[dict]:
    values = dict(r, ttfb_ours_s=_get(results, "stream", "ours-otf", "ttfb_s"))
    out = []
    for key, op, bound, text in TARGETS:
        v = values.get(key)
        ok = None if v is None else (v >= bound if op == ">=" else v <= bound)
        out.append({"key": key, "value": v, "target": f"{op} {bound:g}", "met": ok, "what": text})
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
    pss = ("peak_pss_mb", ",.0f")
    parts.append(_table("Build JSONL -> shards", ["writer", "MB/s", "s", "shards MB"],
                        _rows(results.get("build", {}), [("mb_per_s", ",.2f"), ("seconds", ",.2f"),
                                                         (lambda r: _fmt(r.get("output_bytes", 0) / 1e6, ",.1f"), None)])))
    parts.append(_table("Tokenizer ceiling (tok(1024 texts) in a loop)", ["tokenizer", "samples/s", "tokens/s"],
                        _rows(results.get("ceiling", {}), [("samples_per_s", ",.0f"), ("tokens_per_s", ",.0f")])))
    parts.append(_table("Stream + tokenize one epoch (DataLoader, 2 workers)",
                        ["pipeline", "samples/s", "tokens/s", "ttfb s", "PSS MB", "samples"],
                        _rows(results.get("stream", {}), [("samples_per_s", ",.0f"), ("tokens_per_s", ",.0f"),
                                                          ("ttfb_s", ".2f"), pss, ("samples", ",d")])))
    mem_rows = [[n, _fmt(m.get("pss_1x_mb")), _fmt(m.get("pss_10x_mb")), _fmt(m.get("ratio"), ".2f")]
                if m.get("status") == "ok" else [n, m.get("status", "?")]
                for n, m in results.get("memory", {}).items()]
    parts.append(_table("Peak PSS, main + workers (MB)", ["pipeline", "1x", "10x", "10x/1x"], mem_rows))
    parts.append(_table("LM blocks of 128 tokens (batch 64, 2 workers)", ["pipeline", "tokens/s", "ttfb s", "tokens"],
                        _rows(results.get("lm", {}), [("tokens_per_s", ",.0f"), ("ttfb_s", ".2f"), ("tokens", ",d")])))
    r = results.get("ratios", {})
    parts.append(f"best peer stream: {r.get('best_peer_stream')}; fastest peer writer: {r.get('fastest_peer_writer')}")
    trows = [[t["what"], _fmt(t["value"], ".2f"), t["target"],
              {True: "met", False: "MISSED", None: "n/a"}[t["met"]]] for t in results.get("targets", [])]
    parts.append(_table("Targets", ["target", "value", "bound", ""], trows))
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
    streams = [(n, row["samples_per_s"] / ceil2) for n, row in results.get("stream", {}).items()
               if _ok(row) and ceil2]
    tg = [t for t in results.get("targets", []) if t["value"] is not None]
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5))
    if streams:
        names, vals = zip(*streams)
        colors = ["tab:blue" if n.startswith("ours") else "tab:gray" for n in names]
        a.barh(names, vals, color=colors)
        a.axvline(1.0, color="k", lw=0.8, ls="--")
        a.axvline(0.9, color="tab:red", lw=0.8, ls=":")
        a.set_xlabel("samples/s / tokenizer ceiling (2 processes)")
        a.set_title("Stream + tokenize, one epoch")
        a.invert_yaxis()
    if tg:
        labels = [t["key"] for t in tg]
        vals = [t["value"] for t in tg]
        colors = ["tab:green" if t["met"] else "tab:red" for t in tg]
        b.barh(labels, vals, color=colors)
        for i, t in enumerate(tg):
            bound = float(t["target"].split()[1])
            b.plot([bound, bound], [i - 0.4, i + 0.4], color="k", lw=1.5)
        b.set_xscale("log")
        b.set_title("Targets (black tick = bound; green = met)")
        b.invert_yaxis()
    meta = results["meta"]
    fig.suptitle(f"shardstream vs peers: {meta['corpus']['records']:,} records, {meta['machine']['summary']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
