"""The loader's message order (pipeline/order.py) against a model of torch's DataLoader."""
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.loader import order


def dataloader_order(worker_messages: list[list]) -> list:
    """What torch's DataLoader delivers: requests go round robin to the workers still
    running; a worker that has run out answers once with a stop and is passed over."""
    pending = [list(m) for m in worker_messages]
    active = list(range(len(pending)))
    out = []
    while active:
        for w in list(active):
            if pending[w]:
                out.append(pending[w].pop(0))
            else:
                active.remove(w)
    return out


def delivered(counts, group, starts=None, lead=None):
    """Batches (worker, index) in the order the loader yields them."""
    starts = starts or [0] * len(counts)
    lead = lead or [False] * len(counts)
    per_worker = []
    for w, count in enumerate(counts):
        msgs, index = [], starts[w]
        for size in order.messages(starts[w], count, group, lead[w]):
            msgs.append([(w, i) for i in range(index, index + size)])
            index += size
        per_worker.append(msgs)
    return [b for msg in dataloader_order(per_worker) for b in msg]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=5), st.integers(1, 6), st.data())
def test_resume_continues_the_uninterrupted_order(counts, group, data):
    full = delivered(counts, group)
    assert sorted(full) == [(w, i) for w, c in enumerate(counts) for i in range(c)]
    assert [(w, f) for w, f, _ in order.schedule(counts, group)] == \
        [(msg_w, msg_i) for msg_w, msg_i in full if msg_i % group == 0]
    cut = data.draw(st.integers(0, len(full)))
    starts, lead = order.resume_point(counts, group, cut)
    assert delivered(counts, group, starts, lead) == full[cut:]
