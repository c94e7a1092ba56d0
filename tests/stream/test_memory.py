"""Peak memory of main + workers must not grow with the corpus (shards are streamed)."""
import threading
import time

import psutil
import pytest

from pipeline import ShardStream, StreamConfig, make_loader
from tests.helpers.data import write_jsonl


def peak_rss_while(fn) -> tuple[int, object]:
    """Peak summed RSS of this process and its children while ``fn`` runs."""
    me, peak, stop = psutil.Process(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], total)
            time.sleep(0.01)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        result = fn()
    finally:
        stop.set()
        t.join()
    return peak[0], result


def build(tmp_path, n, name):
    from shards.build.driver import BuildConfig
    from shards.build.driver import build as run_build
    from shards.build.writer import Limits
    from shards.corpus.read import CorpusSpec
    src = write_jsonl(tmp_path / f"{name}.jsonl",
                      ({"text": f"sample {i} " + "lorem ipsum dolor sit amet " * (i % 7 + 1), "label": i % 2}
                       for i in range(n)))
    out = str(tmp_path / name)
    run_build([src], BuildConfig(out=out, spec=CorpusSpec(label_field="label"), limits=Limits(max_bytes=1 << 20)))
    return out


def epoch(url, minilm):
    ds = ShardStream(url, tokenizer=minilm, max_length=64, shuffle=True, config=StreamConfig(keep_text=False))
    return sum(len(b["sample_id"]) for b in make_loader(ds, 64, num_workers=2))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_peak_memory_flat_from_1x_to_10x(tmp_path, minilm):
    small, large = build(tmp_path, 20_000, "x1"), build(tmp_path, 200_000, "x10")
    epoch(small, minilm)  # warm imports and page cache
    peak1, n1 = peak_rss_while(lambda: epoch(small, minilm))
    peak10, n10 = peak_rss_while(lambda: epoch(large, minilm))
    print(f"peak RSS main+workers: 1x ({n1} samples) {peak1 / 2**20:.0f} MiB, "
          f"10x ({n10} samples) {peak10 / 2**20:.0f} MiB, ratio {peak10 / peak1:.3f}")
    assert (n1, n10) == (20_000, 200_000)
    assert peak10 <= 1.15 * peak1
