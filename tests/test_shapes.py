import pytest

from searche1_jax.shapes import append_width, ceil_div, next_pow2, round_up


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


@pytest.mark.parametrize("max_rows,want", [
    (0, True),      # all 640 rows at once: 640 / 16 devices
    (80, True),     # 16 groups of 5, 5 per device, 8 chunks
    (40, False),    # 8 groups = 40 rows do not split over 16 devices
    (82, False),    # not whole groups
    (160, True), (240, False),  # 640 / 240 is not a whole number of chunks
])
def test_a_rollout_chunk_is_whole_groups_split_over_the_devices_and_divides_the_rows(max_rows, want):
    from searche1_jax.shapes import rollout_chunk_ok
    assert rollout_chunk_ok(max_rows, [(640, 5)], 16) is want


def test_a_rollout_chunk_must_suit_every_phase():
    from searche1_jax.shapes import rollout_chunk_ok
    # GRPO 40 rows in groups of 5, OFSD 32 rows in groups of 8, over 4 devices: 40 suits both
    # (OFSD's chunk is 5 groups = 40 > 32 rows, which is not a whole number of chunks)
    assert rollout_chunk_ok(40, [(40, 5)], 4) and not rollout_chunk_ok(40, [(40, 5), (32, 8)], 4)
    assert rollout_chunk_ok(0, [(40, 5), (32, 8)], 4)


@pytest.mark.parametrize("n, bucket, want", [
    (96, 64, 96),     # an observation cut at 96 tokens: 96, not the multiple of 64 (128)
    (97, 64, 128), (20, 64, 24), (16, 64, 16), (1, 64, 16), (64, 64, 64), (65, 64, 96),
    (300, 64, 320),   # the multiple of 64 when it is the smaller: 320 < 384
    (500, 64, 512), (8, 4, 8),
])
def test_append_width_is_the_smaller_of_the_multiple_and_the_half_step_power_of_two(n, bucket, want):
    assert append_width(n, bucket) == want
    assert append_width(n, bucket) >= n
