import pytest

from searche1_jax.shapes import ceil_div, next_pow2, round_up


@pytest.mark.parametrize("n,m,want", [(0, 4, 0), (1, 4, 4), (4, 4, 4), (5, 4, 8), (129, 64, 192), (7, 1, 7)])
def test_round_up_is_the_smallest_multiple_at_least_n(n, m, want):
    assert round_up(n, m) == want


def test_ceil_div_matches_the_float_formula():
    import math
    for n in range(0, 50):
        for d in range(1, 9):
            assert ceil_div(n, d) == math.ceil(n / d)


@pytest.mark.parametrize("n,lo,want", [(0, 1, 1), (1, 1, 1), (2, 1, 2), (3, 1, 4), (64, 1, 64), (65, 1, 128),
                                       (3, 8, 8), (100, 64, 128)])
def test_next_pow2(n, lo, want):
    assert next_pow2(n, lo) == want


def test_round_up_refuses_a_zero_multiple():
    with pytest.raises(ValueError, match="multiple must be >= 1"):
        round_up(3, 0)
