"""SpeedPolicy: the one place a backend picks its fast paths."""
import dataclasses

import pytest

from searche1_jax.model.speed import FEW_ROW_MAX_BATCH, SpeedPolicy


@pytest.mark.parametrize("platform,batch,few_rows,barrier", [
    ("cpu", 16, True, True),
    ("cpu", FEW_ROW_MAX_BATCH, True, True),
    ("cpu", FEW_ROW_MAX_BATCH + 1, False, True),   # no gain from [out, in] copies at 64 rows
    ("cpu", None, False, True),                    # a training step: no decoding
    ("gpu", 16, False, False),                     # GPU/TPU compilers pick their own layouts
    ("tpu", 16, False, False),
])
def test_for_backend_decides_each_fast_path(platform, batch, few_rows, barrier):
    assert SpeedPolicy.for_backend(platform, batch) == SpeedPolicy(few_row_kernels=few_rows,
                                                                   logit_barrier=barrier)


def test_policy_is_frozen_and_hashable_so_jit_can_take_it_as_static():
    policy = SpeedPolicy.for_backend("cpu", 8)
    assert hash(policy) == hash(SpeedPolicy(True, True))
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.logit_barrier = False
