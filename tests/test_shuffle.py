from hypothesis import given, settings, strategies as st

from pipeline.shuffle import buffer_shuffle, rng_for


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 300), st.integers(0, 50), st.integers(0, 1000))
def test_buffer_shuffle_is_a_deterministic_permutation(n, size, seed):
    items = list(range(n))
    a = list(buffer_shuffle(iter(items), size, rng_for(seed, 0, 0, 0)))
    b = list(buffer_shuffle(iter(items), size, rng_for(seed, 0, 0, 0)))
    assert sorted(a) == items
    assert a == b


def test_buffer_shuffle_moves_items_and_depends_on_epoch():
    items = list(range(1000))
    e0 = list(buffer_shuffle(iter(items), 64, rng_for(1, 0, 0, 0)))
    e1 = list(buffer_shuffle(iter(items), 64, rng_for(1, 1, 0, 0)))
    assert e0 != items and e0 != e1
