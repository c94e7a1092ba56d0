"""The loader's message order (pipeline/loader/order.py) against a model of torch's DataLoader."""
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
    """Batches (worker, index) in the order the loader yields them; a worker does not know
    its count in advance: its last message is cut short (or empty) where its batches end."""
    starts = starts or [0] * len(counts)
    lead = lead or [False] * len(counts)
    per_worker = []
    for w, count in enumerate(counts):
        msgs, index = [[]] if lead[w] else [], starts[w]
        for size in order.message_sizes(starts[w], group):
            if index >= count:
                break
            msgs.append([(w, i) for i in range(index, min(index + size, count))])
            index += size
        per_worker.append(msgs)
    return [b for msg in dataloader_order(per_worker) for b in msg]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=5), st.integers(1, 6), st.data())
def test_resume_from_counts_and_last_worker_continues_the_uninterrupted_order(counts, group, data):
    full = delivered(counts, group)
    assert sorted(full) == [(w, i) for w, c in enumerate(counts) for i in range(c)]
    cut = data.draw(st.integers(0, len(full)))
    done = [sum(1 for w, _ in full[:cut] if w == v) for v in range(len(counts))]  # what the state records
    last = full[cut - 1][0] if cut else 0
    nxt = order.next_worker(done, last, group, cut)
    assert delivered(counts, group, done, order.leads(len(counts), nxt)) == full[cut:]


def test_message_sizes_line_up_on_multiples_of_the_group():
    sizes = order.message_sizes(5, 4)
    assert [next(sizes) for _ in range(3)] == [3, 4, 4]
