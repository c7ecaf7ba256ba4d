"""rollout/packing.py: which rows a packed call runs (against hand-worked packings), and the
per-shard gather / scatter (against numpy fancy indexing, on 8 fake devices, with no collective
in the compiled program)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from searche1_jax.model.sharding import make_mesh, named_sharding
from searche1_jax.rollout.packing import pack_rows, put_rows, row_shards, take_rows


def test_one_shard_packs_live_rows_in_order_into_the_next_bucket():
    # row_buckets(8) = 1, 2, 3, 4, 6, 8: 3 live rows -> bucket 3, the one below 2
    rows, below = pack_rows([5, 2, 7], 8, 1)
    assert rows.tolist() == [[5, 2, 7]] and below == 2
    rows, below = pack_rows([0, 1, 2, 3, 4], 8, 1)  # 5 -> 6, padding index 8
    assert rows.tolist() == [[0, 1, 2, 3, 4, 8]] and below == 4
    rows, below = pack_rows([6], 8, 1)
    assert rows.tolist() == [[6]] and below == 0


def test_pow2_buckets_pack_into_the_next_power_of_two():
    # row_buckets(8, "pow2") = 1, 2, 4, 8: 3 live rows -> bucket 4 (one padding row), below 2
    rows, below = pack_rows([5, 2, 7], 8, 1, "pow2")
    assert rows.tolist() == [[5, 2, 7, 8]] and below == 2
    rows, below = pack_rows([0, 1, 2, 3, 4], 8, 1, "pow2")  # 5 -> 8: the whole batch
    assert rows.tolist() == [[0, 1, 2, 3, 4, 8, 8, 8]] and below == 4
    # 16 rows on 2 shards of 8: the fullest shard's 3 rows set bucket 4 for both
    rows, below = pack_rows([9, 0, 1, 2], 16, 2, "pow2")
    assert rows.tolist() == [[0, 1, 2, 16], [9, 16, 16, 16]] and below == 2
    with pytest.raises(ValueError, match=r"config.rollout.row_buckets must be one of \('half', 'pow2'\)"):
        pack_rows([0], 8, 1, "thirds")


def test_each_shard_packs_its_own_rows_into_a_common_bucket():
    # 16 rows on 4 shards of 4 (rows 0-3, 4-7, 8-11, 12-15); row_buckets(4) = 1, 2, 3, 4.
    # The fullest shard (0: rows 0, 1, 2) sets the bucket, 3; the others pad with 16.
    rows, below = pack_rows([13, 0, 5, 1, 14, 2], 16, 4)
    assert rows.tolist() == [[0, 1, 2], [5, 16, 16], [16, 16, 16], [13, 14, 16]]
    assert below == 2
    rows, below = pack_rows([3, 7, 11, 15], 16, 4)  # one a shard: bucket 1
    assert rows.tolist() == [[3], [7], [11], [15]] and below == 0


def test_bad_packings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="12 rows do not split into 8 equal shards"):
        pack_rows([0], 12, 8)
    with pytest.raises(ValueError, match="distinct rows of 0..7"):
        pack_rows([8], 8, 2)
    with pytest.raises(ValueError, match="distinct rows of 0..7"):
        pack_rows([1, 1], 8, 2)


def test_row_shards_counts_the_blocks_of_the_row_axis():
    mesh = make_mesh({"data": 2, "fsdp": 4})
    put = lambda n: jax.device_put(np.zeros((n, 3)), named_sharding(("batch", None), (n, 3), mesh))  # noqa: E731
    assert row_shards(put(16)) == 8
    assert row_shards(put(12)) == 2  # 12 rows split over data only (fsdp's 4 does not divide 6)
    assert row_shards(jax.device_put(np.zeros((16, 3)), NamedSharding(mesh, P(None)))) == 1
    assert row_shards(jnp.zeros((16, 3))) == 1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_take_and_put_rows_on_8_devices_match_numpy_and_stay_on_each_device(dtype):
    mesh = make_mesh({"data": 2, "fsdp": 4})
    b, s = 32, 8  # 4 rows a device
    host = (np.arange(b * 2 * 6) % 61).astype(np.float32).reshape(b, 2, 6)  # exact in bf16, x2+1 too
    x = jax.device_put(jnp.asarray(host, dtype), named_sharding(("batch", None, None), host.shape, mesh))
    blocks, _ = pack_rows([1, 2, 6, 17, 30, 31, 28], b, s)  # shards 0, 1, 4, 7 (7 has three)
    assert blocks.shape == (8, 3)
    flat = blocks.reshape(-1)
    m = b // s
    # oracle: a padding index (b) reads its block's last row
    want_idx = np.where(flat < b, flat, (np.arange(flat.size) // blocks.shape[1]) * m + m - 1)

    def fn(x, rows):
        part = take_rows(x, rows)
        return part, put_rows(x, rows, part[..., :4] * 2 + 1, (Ellipsis, slice(None, 4)))

    compiled = jax.jit(fn).lower(x, jnp.asarray(blocks)).compile()
    hlo = compiled.as_text()
    assert not any(op in hlo for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute"))
    part, full = compiled(x, jnp.asarray(blocks))
    np.testing.assert_array_equal(np.asarray(part, np.float32), host[want_idx])
    want = host.copy()
    real = flat[flat < b]
    want[real, :, :4] = host[real, :, :4] * 2 + 1  # padding rows dropped
    np.testing.assert_array_equal(np.asarray(full, np.float32), np.asarray(jnp.asarray(want, dtype), np.float32))
    assert full.dtype == dtype and full.sharding.is_equivalent_to(x.sharding, 3)
