"""Elastic mid-epoch resume of a PackedStream (pipeline/elastic.py ``partial``, pack/stream.py):
blocks saved at (world W, workers K, batch B) resume at (W', K', B'), and every token of every
document is trained exactly once across the change(s), including a document a worker had begun.

Ranks are simulated in-process, each with its own loader; a rank stops after ``take`` batches
(or at its end: under DDP, pack.lockstep gives it filler batches)."""
import json
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import PackedStream, ResumeError, ShardStream, StreamConfig, make_loader
from pipeline.elastic import Segment, partials, records_at
from tests.helpers.data import build_set

pytestmark = pytest.mark.timeout(300)
N = 41  # documents: not a multiple of the worlds, batches or shards below
SEQ = 11


@pytest.fixture(scope="module")
def url(tmp_path_factory, minilm):
    return build_set(tmp_path_factory.mktemp("elastic-pack"), n=N, max_records=6, tokenizer=minilm)


def packed(url, rank, world, shuffle=True, seed=7, split=True):
    config = StreamConfig(shuffle_buffer=5, block_size=3)
    inner = ShardStream(url, rank=rank, world_size=world, shuffle=shuffle, seed=seed, config=config)
    return PackedStream(inner, SEQ, split_documents=split)


def expected(url) -> dict[str, list[int]]:
    """Every document's tokens (specials off, separator on), by sample id."""
    stream = packed(url, 0, 1, shuffle=False)
    out = {}
    for item in stream.stream:
        tokens = stream.format.tokens(item["input_ids"])
        if tokens is not None:
            out[item["sample_id"]] = tokens.tolist()
    return out


def run_stretch(url, world, workers, batch, states, take, **kw):
    """Every rank's tokens per document in this stretch, and each rank's saved state."""
    pieces, saved = defaultdict(list), []
    for rank in range(world):
        ds = packed(url, rank, world, **kw)
        loader = make_loader(ds, batch, num_workers=workers, collate_fn=ds.collator())
        if states is not None:
            loader.load_state_dict(states[min(rank, len(states) - 1)], all_ranks=states)
        for count, b in enumerate(loader, start=1):
            ids, docs = b["input_ids"].numpy(), b["doc_ids"].numpy()
            for row, doc_row, names in zip(ids, docs, b["sample_ids"]):
                for k, name in enumerate(names):
                    pieces[name].extend(row[doc_row == k].tolist())
            if count == take:
                break
        saved.append(json.loads(json.dumps(loader.state_dict())))
    return pieces, saved


def chain(url, stretches, **kw):
    """(world, workers, batch, take) stretches, each resumed from the last; the last runs to its end."""
    got, states, all_states = defaultdict(list), None, []
    for i, (world, workers, batch, take) in enumerate(stretches):
        pieces, states = run_stretch(url, world, workers, batch, states, None if i == len(stretches) - 1 else take,
                                     **kw)
        for name, tokens in pieces.items():
            got[name].extend(tokens)
        all_states.append(states)
    return got, all_states


def assert_every_token_once(url, got):
    want = expected(url)
    assert sorted(got) == sorted(want)
    wrong = [name for name in want if got[name] != want[name]]
    assert wrong == [], f"{len(wrong)} documents differ, e.g. {wrong[0]}: {got[wrong[0]]} vs {want[wrong[0]]}"


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("before, after", [((2, 2, 2), (1, 0, 3)), ((2, 0, 2), (3, 2, 1)), ((3, 2, 1), (2, 0, 4))])
def test_a_changed_topology_packs_every_token_once(url, shuffle, before, after):
    got, states = chain(url, [(*before, 2), (*after, None)], shuffle=shuffle)
    assert_every_token_once(url, got)
    assert all(len(s["segments"]) == 1 and s["segments"][0]["batch_size"] == 1 for s in states[1])


def test_chained_two_one_three_with_a_document_begun_at_each_change(url):
    got, states = chain(url, [(2, 2, 2, 2), (1, 0, 3, 3), (3, 2, 2, None)])
    assert_every_token_once(url, got)
    assert [len(s["segments"]) for s in states[2]] == [2, 2, 2]
    begun = [seg.get("partial", []) for seg in states[2][0]["segments"]]
    assert any(begun), "no stretch stopped inside a document: the test proves nothing about partials"


def test_a_same_topology_resume_inside_the_new_stretch_keeps_the_partial_skip(url):
    first, states1 = run_stretch(url, 2, 0, 2, None, 2)
    second, states2 = run_stretch(url, 1, 0, 3, states1, 1)
    third, _ = run_stretch(url, 1, 0, 3, states2, None)  # a plain resume that carries the segments
    got = defaultdict(list)
    for part in (first, second, third):
        for name, tokens in part.items():
            got[name].extend(tokens)
    assert_every_token_once(url, got)


def test_a_document_begun_is_recorded_with_its_epoch_position(url):
    _, states = run_stretch(url, 2, 0, 2, None, 1)
    ds = packed(url, 0, 1)
    loader = make_loader(ds, 3, collate_fn=ds.collator())
    loader.load_state_dict(states[0], all_ranks=states)
    seg = loader.state_dict()["segments"][0]
    offsets = [w["offset"] for s in states for w in s["workers"]]
    assert len(seg.get("partial", [])) == sum(o > 0 for o in offsets)
    base = ds.stream
    found = partials(N, [Segment.from_json(seg)], base.seed, 0, True)
    shard, record = records_at(base.manifest.shard_sizes, 3, base.seed, 0, True, list(found))
    assert all(0 <= r < 6 for r in record.tolist()) and len(shard) == len(found)


def test_a_tampered_partial_is_refused_in_one_line(url):
    _, states = run_stretch(url, 2, 0, 2, None, 1)
    ds = packed(url, 0, 1)
    loader = make_loader(ds, 3, collate_fn=ds.collator())
    loader.load_state_dict(states[0], all_ranks=states)
    saved = json.loads(json.dumps(loader.state_dict()))
    saved["segments"][0]["partial"] = [[0, 1]]  # epoch position 0 was delivered whole
    again = packed(url, 0, 1)
    with pytest.raises(ResumeError, match="partial document at epoch position 0") as e:
        make_loader(again, 3, collate_fn=again.collator()).load_state_dict(saved)
    assert "\n" not in str(e.value)
    saved["segments"][0]["partial"] = [[1, "x"]]
    with pytest.raises(ResumeError, match="Segment.partial"):
        make_loader(again, 3, collate_fn=again.collator()).load_state_dict(saved)


def test_the_segments_refuse_other_changes_with_the_topology(url):
    _, states = run_stretch(url, 2, 0, 2, None, 1)
    other = PackedStream(ShardStream(url, rank=0, world_size=1, shuffle=True, seed=7,
                                     config=StreamConfig(shuffle_buffer=5, block_size=3)), SEQ + 1)
    with pytest.raises(ResumeError, match="seq_len was 11, now 12"):
        make_loader(other, 2, collate_fn=other.collator()).load_state_dict(states[0], all_ranks=states)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(1, 3), st.sampled_from([0, 2]), st.integers(1, 4), st.integers(0, 4)),
                min_size=2, max_size=3), st.booleans(), st.booleans())
def test_topology_chains_pack_every_token_once(url, changes, shuffle, split):
    got, _ = chain(url, changes, shuffle=shuffle, split=split)
    assert_every_token_once(url, got)


def test_docs_skip_begun_drops_the_emitted_tokens_only():
    from pipeline.pack.cut import Docs
    lengths = np.array([3, 4, 2])
    z = np.zeros(3, np.int64)
    docs = Docs(np.arange(9, dtype=np.int32), lengths, z, np.array([0, 0, 1]), np.array([0, 1, 0]), z - 1, z, z)
    out = docs.skip_begun({(0, 1): 3, (5, 5): 1})
    assert out.tokens.tolist() == [0, 1, 2, 6, 7, 8] and out.lengths.tolist() == [3, 1, 2]
    assert out.offsets.tolist() == [0, 3, 0]
    assert out.skip_first(0) is out
    assert out.part(1, 3, np.array([0, 0])).tokens.tolist() == [6, 7, 8]
    with pytest.raises(ValueError, match="emitted, but it has 4"):
        docs.skip_begun({(0, 1): 4})
