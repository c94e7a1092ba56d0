"""StreamConfig(group_by_length=True): exactly once, equal steps, exact resume, less padding.

The properties are drawn over group.GROUP_BATCHES too (patched: it is a module constant), since the
small windows here hold fewer batches than its default and would otherwise sort whole windows only."""
import json
from collections import Counter
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import ResumeError, ShardStream, StreamConfig, group, make_loader, split
from tests.helpers.data import build_set, minilm_path, write_jsonl
from tests.helpers.streamkit import loader_run

COUNTS = (1, 6, 23, 50, 61)  # record counts of the pre-built sets (7 records per shard)
_SETS: dict = {}


def varied(n: int, spread: int = 23) -> list[dict]:
    """Records whose token counts spread over ~``spread`` values, in no order."""
    return [{"text": f"r{i} " + "word " * ((i * 7919) % spread), "label": i % 2} for i in range(n)]


def build_varied(root, n: int, spread: int = 23, max_records: int = 7, tokenizer: str | None = None) -> str:
    from shards.build.driver import BuildConfig, build
    from shards.build.writer import Limits
    from shards.corpus.read import CorpusSpec
    src = write_jsonl(root / f"src-{n}-{spread}" / "data.jsonl", varied(n, spread))
    out = root / f"set-{n}-{spread}"
    build([src], BuildConfig(out=str(out), format="arrow", spec=CorpusSpec(label_field="label"),
                             limits=Limits(max_records=max_records), tokenizer=tokenizer))
    return str(out)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Pre-tokenized sets of COUNTS records (built once: hypothesis draws among them)."""
    root = tmp_path_factory.mktemp("grouped")
    return {n: build_varied(root, n, tokenizer=minilm_path()) for n in COUNTS}


def worker_batches(url, rank, world, worker, workers, batch, config, seed, epoch, shuffle, start=0):
    """One worker's batches as lists of (sample_id, is_pad, length), from batch ``start``."""
    ds = ShardStream(url, rank=rank, world_size=world, shuffle=shuffle, seed=seed, config=config)
    ds.set_epoch(epoch)
    with mock.patch("pipeline.world.worker", return_value=(worker, workers)):
        out = []
        samples = ds.worker_samples(worker, workers)
        for b, _ in ds.batches(batch, {"batches": start, "samples": min(start * batch, samples)}):
            lengths = b["attention_mask"].sum(1).tolist()
            out.append(list(zip(b["sample_id"], b["is_pad"].tolist(), lengths)))
        return out


def assert_sorted_runs(batches: list, ref: list, sub: int) -> None:
    """Each batch lies in one sub-window of ``sub`` samples of the window's ungrouped order ``ref`` (all
    of it when ``sub`` is 0), and the batches of a sub-window are runs of its sorted lengths."""
    where = {(sid, pad): i // sub if sub else 0 for i, (sid, pad, _) in enumerate(ref)}
    spans: dict[int, list] = {}
    for b in batches:
        parts = {where[sid, pad] for sid, pad, _ in b}
        assert len(parts) == 1, f"a batch across sub-windows {sorted(parts)}"
        spans.setdefault(parts.pop(), []).append((min(x[2] for x in b), max(x[2] for x in b)))
    for runs in spans.values():
        runs.sort()
        assert all(a[1] <= b[0] for a, b in zip(runs, runs[1:])), runs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.sampled_from(COUNTS), world=st.integers(1, 4), workers=st.integers(1, 4), batch=st.integers(1, 9),
       buffer=st.integers(1, 40), seed=st.integers(0, 2**31), epoch=st.integers(0, 3), shuffle=st.booleans(),
       group_batches=st.integers(0, 4), data=st.data())
def test_grouped_epoch_is_exactly_once_with_equal_steps_and_resumes_anywhere(sets, n, world, workers, batch, buffer,
                                                                            seed, epoch, shuffle, group_batches, data):
    with mock.patch.object(group, "GROUP_BATCHES", group_batches):
        check_grouped_epoch(sets[n], n, world, workers, batch, buffer, seed, epoch, shuffle, data)


def check_grouped_epoch(url, n, world, workers, batch, buffer, seed, epoch, shuffle, data):
    grouped = StreamConfig(shuffle_buffer=buffer, block_size=5, group_by_length=True)
    window = group.window_size(buffer, batch)
    plain = StreamConfig(shuffle_buffer=window, block_size=5)
    real, pads, counts = Counter(), [], {}
    for rank in range(world):
        for w in range(workers):
            got = worker_batches(url, rank, world, w, workers, batch, grouped, seed, epoch, shuffle)
            counts[rank, w] = len(got)
            assert all(len(b) == batch for b in got[:-1]), "only a worker's last batch may be short"
            flat = [x for b in got for x in b]
            real.update(sid for sid, pad, _ in flat if not pad)
            pads += [sid for sid, pad, _ in flat if pad]
            # the same samples in each window as without grouping: grouping only reorders a window
            ref = [x for b in worker_batches(url, rank, world, w, workers, batch, plain, seed, epoch, shuffle)
                   for x in b]
            per_window = window // batch
            for k in range(0, len(got), per_window):
                mine, theirs = got[k:k + per_window], ref[k * batch:(k + per_window) * batch]
                assert sorted(x for b in mine for x in b) == sorted(theirs)
                assert_sorted_runs(mine, theirs, group.GROUP_BATCHES * batch)
            cut = data.draw(st.integers(0, len(got)), label="resume batch")
            assert worker_batches(url, rank, world, w, workers, batch, grouped, seed, epoch, shuffle, cut) == got[cut:]
    assert set(real.values()) == {1} and len(real) == n
    assert len(pads) == split.per_rank(n, world) * world - n and set(pads) <= set(real)
    for w, samples in enumerate(split.worker_counts(n, world, workers)):
        assert {counts[r, w] for r in range(world)} == {-(-samples // batch)}




@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.sampled_from(COUNTS), world=st.integers(1, 4), batch=st.integers(1, 9), buffer=st.integers(1, 40),
       seed=st.integers(0, 2**31), shuffle=st.booleans(), group_batches=st.integers(0, 4), data=st.data())
def test_loader_state_resumes_grouped_batches_exactly(sets, n, world, batch, buffer, seed, shuffle, group_batches, data):
    rank = data.draw(st.integers(0, world - 1), label="rank")
    kw = dict(rank=rank, world_size=world, shuffle=shuffle, seed=seed,
              config=StreamConfig(shuffle_buffer=buffer, block_size=5, group_by_length=True))
    with mock.patch.object(group, "GROUP_BATCHES", group_batches):
        full, _ = loader_run(sets[n], batch, epochs=(0, 1), **kw)
        cut = data.draw(st.integers(1, len(full)), label="cut")
        head, state = loader_run(sets[n], batch, cut=cut, epochs=(0, 1), **kw)
        assert json.loads(state)["settings"]["group_batches"] == group_batches
        tail, _ = loader_run(sets[n], batch, state=state, epochs=(0, 1), **kw)
    assert head + tail[:len(full) - cut] == full


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on 2 cores, on purpose
@pytest.mark.parametrize("workers,group_size", [pytest.param(2, 1, marks=pytest.mark.slow), (2, 3), (3, 2)])
def test_resume_at_every_batch_with_dataloader_workers(sets, workers, group_size, monkeypatch):
    monkeypatch.setattr(group, "GROUP_BATCHES", 2)  # windows of 3 batches: a sub-window of 2 and one of 1
    url = sets[61]
    kw = dict(rank=1, world_size=2, shuffle=True, seed=7,
              config=StreamConfig(shuffle_buffer=9, block_size=4, group_by_length=True))
    full, _ = loader_run(url, 3, workers, group_size=group_size, **kw)
    ids = [s for b in full for s in b]
    assert len(ids) == split.per_rank(61, 2) and len(full) == len(make_loader(ShardStream(url, **kw), 3, workers))
    for cut in range(1, len(full)):
        head, state = loader_run(url, 3, workers, cut=cut, group_size=group_size, **kw)
        tail, _ = loader_run(url, 3, workers, state=state, group_size=group_size, **kw)
        assert head + tail == full, f"cut at {cut}"


def pad_fraction(url, group_by_length: bool) -> float:
    ds = ShardStream(url, shuffle=True, seed=0,
                     config=StreamConfig(shuffle_buffer=256, group_by_length=group_by_length))
    pad = total = 0
    for b in make_loader(ds, 16):
        mask = b["attention_mask"]
        pad += int((mask == 0).sum())
        total += mask.numel()
    return pad / total


def test_grouping_cuts_the_padding_of_varied_lengths(tmp_path, minilm):
    url = build_varied(tmp_path, 600, spread=60, max_records=100)
    plain = ShardStream(url, tokenizer=minilm, max_length=64, shuffle=True, seed=0)
    grouped = ShardStream(url, tokenizer=minilm, max_length=64, shuffle=True, seed=0,
                          config=StreamConfig(shuffle_buffer=256, group_by_length=True))
    fractions = []
    for ds in (plain, grouped):
        masks = [b["attention_mask"] for b in make_loader(ds, 16)]
        fractions.append(sum(int((m == 0).sum()) for m in masks) / sum(m.numel() for m in masks))
    assert fractions[0] > 0.3 and fractions[1] < fractions[0] / 4, fractions


def test_a_changed_group_by_length_is_refused_mid_epoch_only(sets):
    url = sets[50]
    grouped = dict(shuffle=True, seed=1, config=StreamConfig(shuffle_buffer=8, group_by_length=True))
    plain = dict(shuffle=True, seed=1, config=StreamConfig(shuffle_buffer=8))
    _, state = loader_run(url, 4, cut=2, **grouped)
    with pytest.raises(ResumeError, match="group_by_length was True, now False"):
        loader_run(url, 4, state=state, **plain)
    ds = ShardStream(url, **grouped)
    loader = make_loader(ds, 4)
    ds.set_epoch(1)
    iter(loader)  # a state taken as epoch 1 starts (nothing delivered) may change the setting
    boundary = json.dumps(loader.state_dict())
    assert loader_run(url, 4, state=boundary, epochs=(1,), **plain)[0] == loader_run(url, 4, epochs=(1,), **plain)[0]


def test_a_state_from_before_the_setting_resumes_as_ungrouped(sets):
    url = sets[50]
    plain = dict(shuffle=True, seed=1, config=StreamConfig(shuffle_buffer=8))
    full, _ = loader_run(url, 4, **plain)
    head, state = loader_run(url, 4, cut=3, **plain)
    old = json.loads(state)
    del old["settings"]["group_by_length"]  # what a version before the setting wrote
    assert head + loader_run(url, 4, state=json.dumps(old), **plain)[0] == full
    with pytest.raises(ResumeError, match="group_by_length was False, now True"):
        loader_run(url, 4, state=json.dumps(old), shuffle=True, seed=1,
                   config=StreamConfig(shuffle_buffer=8, group_by_length=True))


def test_a_state_from_whole_window_grouping_is_refused_mid_epoch_only(sets):
    """A state written before sub-windows has no group_batches: it was sorted over whole windows, so
    resuming it under sub-windows would deliver another order; it must be refused, in one line."""
    url = sets[61]
    grouped = dict(shuffle=True, seed=3, config=StreamConfig(shuffle_buffer=24, group_by_length=True))

    def old_form(state: str) -> str:
        old = json.loads(state)
        del old["settings"]["group_batches"]  # what the version before sub-windows wrote
        return json.dumps(old)

    with mock.patch.object(group, "GROUP_BATCHES", 0):  # whole windows: what that version did
        full, _ = loader_run(url, 4, **grouped)
        head, state = loader_run(url, 4, cut=3, **grouped)
        assert head + loader_run(url, 4, state=old_form(state), **grouped)[0] == full  # read as 0: resumes
    with mock.patch.object(group, "GROUP_BATCHES", 2):  # windows of 6 batches of 4, two sub-windows each
        with pytest.raises(ResumeError, match=r"group_batches was 0 \(whole windows.*now 2") as err:
            loader_run(url, 4, state=old_form(state), **grouped)
        assert "\n" not in str(err.value)
        ds = ShardStream(url, **grouped)
        loader = make_loader(ds, 4)
        ds.set_epoch(1)
        iter(loader)  # a state taken as epoch 1 starts: the epoch starts afresh under sub-windows
        boundary = old_form(json.dumps(loader.state_dict()))
        fresh = loader_run(url, 4, epochs=(1,), **grouped)[0]
        assert loader_run(url, 4, state=boundary, epochs=(1,), **grouped)[0] == fresh


def test_window_index_sorts_within_sub_windows(monkeypatch):
    monkeypatch.setattr(group, "GROUP_BATCHES", 2)
    lengths = np.array([9, 1, 8, 2, 7, 3, 6, 4, 5])  # sub-windows of 2 batches of 2: 4 + 4 + 1 samples
    idx = group.window_index(lengths, 2, shuffle=False, key=(0, 0, 0, 0, 0))
    assert lengths[idx].tolist() == [1, 2, 8, 9, 3, 4, 6, 7, 5]
    idx = group.window_index(lengths, 2, shuffle=True, key=(5, 1, 0, 0, 0))
    assert sorted(idx.tolist()) == list(range(9)) and len(idx) == 9
    first = group.window_order(9, 5, 1, 0, 0, 0)  # the ungrouped order: sub-windows are cut from it
    part = {int(s): k // 4 for k, s in enumerate(first)}
    pairs = [idx[i:i + 2].tolist() for i in range(0, 8, 2)]
    assert all(part[a] == part[b] for a, b in pairs), "a batch across sub-windows"
    assert part[int(idx[-1])] == 2  # the short batch (the last sub-window's rest) stays last


def test_what_grouping_cannot_do_is_refused_in_one_line(tmp_path, sets):
    with pytest.raises(ValueError, match=r"group_by_length=1\): valid: True or False"):
        StreamConfig(group_by_length=1)
    texts = build_set(tmp_path, n=5, max_records=5)  # no token ids, no tokenizer
    with pytest.raises(ValueError, match="no token ids; pass tokenizer="):
        ShardStream(texts, config=StreamConfig(group_by_length=True))
    ds = ShardStream(sets[6], config=StreamConfig(group_by_length=True))
    with pytest.raises(ValueError, match="cannot be read a sample at a time") as err:
        iter(ds)
    assert "\n" not in str(err.value)


def test_window_index_sorts_and_keeps_the_short_batch_last():
    lengths = np.array([5, 1, 9, 3, 7, 2, 8])
    idx = group.window_index(lengths, 3, shuffle=False, key=(0, 0, 0, 0, 0))
    assert lengths[idx].tolist() == [1, 2, 3, 5, 7, 8, 9]
    idx = group.window_index(lengths, 2, shuffle=True, key=(4, 0, 0, 0, 0))
    assert sorted(idx.tolist()) == list(range(7)) and lengths[idx][-1] == 9
    pairs = [sorted(lengths[idx][i:i + 2].tolist()) for i in range(0, 6, 2)]
    assert sorted(pairs) == [[1, 2], [3, 5], [7, 8]]
    assert group.window_size(8192, 24) == 8184 and group.window_size(5, 16) == 16


def test_train_group_by_length_trains_each_sample_once_and_refuses_pack(tmp_path, capsys):
    """``pipeline.train --group-by-length``: a run audits clean; with --pack it is a one-line refusal."""
    from pipeline.train import loop as train
    from shards.audit import main as audit_main
    from tests.helpers.trainkit import shard_sets, tiny_bert, train_args

    tr, _ = shard_sets(tmp_path / "sets")
    out = tmp_path / "run"
    args = train_args(tr, None, tiny_bert(tmp_path / "bert"), out, 6, 4, "classify", "--audit", "--group-by-length")
    assert train.main(args) == 0
    capsys.readouterr()
    assert audit_main([str(out)]) == 0
    assert "exactly once" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        train.main(train_args(tr, None, "gpt2-random", tmp_path / "lm", 2, 4, "lm", "--pack", "16",
                              "--group-by-length"))
    assert stop.value.code == 2 and "--group-by-length" in capsys.readouterr().err
