import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.shuffle import window_order


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 300), st.integers(-5, 1000), st.integers(0, 3), st.integers(0, 3), st.integers(0, 3),
       st.integers(0, 50))
def test_window_order_is_a_deterministic_permutation(n, seed, epoch, rank, worker, window):
    a = window_order(n, seed, epoch, rank, worker, window)
    assert sorted(a.tolist()) == list(range(n))
    assert np.array_equal(a, window_order(n, seed, epoch, rank, worker, window))


def test_window_order_depends_on_every_key():
    base = window_order(1000, 1, 0, 0, 0, 0)
    assert not np.array_equal(base, np.arange(1000))
    for key in [(2, 0, 0, 0, 0), (1, 1, 0, 0, 0), (1, 0, 1, 0, 0), (1, 0, 0, 1, 0), (1, 0, 0, 0, 1)]:
        assert not np.array_equal(base, window_order(1000, *key))
