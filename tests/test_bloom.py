"""models.state.bloom.RotatingBloom: no false negatives while remembered, bounded false positives."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.state.bloom import RotatingBloom


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=2**64 - 1), min_size=1, max_size=300, unique=True)
)
def test_no_false_negatives_within_capacity(keys: list[int]) -> None:
    b = RotatingBloom(bits_log2=16, probes=5, capacity=1000)
    arr = np.array(keys, dtype=np.uint64)
    b.add(arr)
    assert b.contains(arr).all()


def test_false_positive_rate_near_theory() -> None:
    rng = np.random.default_rng(7)
    b = RotatingBloom(bits_log2=20, probes=7, capacity=100_000, generations=2)
    b.add(rng.integers(1, 2**63, size=100_000, dtype=np.uint64))
    probe = rng.integers(2**63, 2**64 - 1, size=200_000, dtype=np.uint64)
    fpr = b.contains(probe).mean()
    k, m, n = 7, 2**20, 100_000
    theory = (1 - np.exp(-k * n / m)) ** k
    assert fpr < 3 * theory + 1e-4, (fpr, theory)


def test_rotation_forgets_old_generations() -> None:
    b = RotatingBloom(bits_log2=16, probes=4, capacity=100, generations=2)
    first = np.arange(1, 101, dtype=np.uint64) * np.uint64(7919)
    b.add(first)
    second = np.arange(1000, 1100, dtype=np.uint64) * np.uint64(104729)
    b.add(second)  # fills generation 2 (first stays remembered)
    assert b.contains(first).all() and b.contains(second).all()
    third = np.arange(5000, 5101, dtype=np.uint64) * np.uint64(1299709)
    b.add(third)  # rotates: the oldest generation (first) is cleared
    assert b.rotations >= 2
    assert b.contains(third).all()
    assert b.contains(first).mean() < 0.2


@pytest.mark.parametrize("kw", [{"bits_log2": 4}, {"probes": 0}, {"generations": 1}])
def test_bad_parameters(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        RotatingBloom(**kw)
