"""Shape arithmetic shared by every layer: rounding up to a multiple and to a power of two, and
the rollout engine's row buckets (which the planner sizes its programs by too).

Bottom of the package: imports nothing of ours, so model/, rollout/, retrieval/, train/ and
plan.py may all use it (rl/ stays self-contained and does not).
"""
from __future__ import annotations

from typing import Callable, Sequence


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= n (n >= 0, multiple >= 1)."""
    if multiple < 1:
        raise ValueError(f"round_up: multiple must be >= 1, got {multiple}")
    return -(-int(n) // multiple) * multiple


def ceil_div(n: int, d: int) -> int:
    """ceil(n / d) for integers (d >= 1)."""
    if d < 1:
        raise ValueError(f"ceil_div: divisor must be >= 1, got {d}")
    return -(-int(n) // d)


def next_pow2(n: int, lo: int = 1) -> int:
    """The smallest power of two that is >= max(n, lo)."""
    n = max(int(n), int(lo), 1)
    return 1 << (n - 1).bit_length()


def policy_token_bound(max_turns: int, max_turn_tokens: int, max_response_tokens: int) -> int:
    """The most tokens the policy samples in one trajectory: max_turns searching turns and one
    last turn (rollout/agent.py), each of at most max_turn_tokens, within max_response_tokens."""
    return min((max_turns + 1) * max_turn_tokens, max_response_tokens)


def append_width(n: int, bucket: int) -> int:
    """Token width of an append of up to n tokens: the smaller of n rounded up to `bucket` (the
    prompts' multiple) and the smallest 2^k or 3 x 2^(k-1) (at least 16) that holds n. An append
    computes every position of its width, so 96 observation tokens cost 96, not the 128 of a
    multiple of 64 (0.76x the append's time, RESULTS); the widths stay few (logarithmic in n)."""
    half_steps = next(w for w in _doubling(16) if w >= n)
    return min(round_up(n, bucket), half_steps)


def _doubling(lo: int):
    p = lo
    while True:
        yield p
        yield 3 * p // 2
        p *= 2


ROW_BUCKETS = ("half", "pow2")  # config.rollout.row_buckets


def row_buckets(n_rows: int, kind: str = "half") -> list[int]:
    """The working-set sizes for a batch of n_rows, ascending, then n_rows itself. "half": 1, 2,
    3, 4, 6, 8, 12, 16, 24, ... below n_rows: half-steps between the powers of two keep a call's
    padding and its early-exit waste under a third, for twice the executables of powers of two
    alone. "pow2": 1, 2, 4, 8, ...: waste up to a half, and fewer executables (4 for 8 rows, not
    6; each is a compile, and with config.train.free_programs a reload in every phase)."""
    if kind not in ROW_BUCKETS:
        raise ValueError(f"config.rollout.row_buckets must be one of {ROW_BUCKETS}, got {kind!r}")
    out, p = [], 1
    while p < n_rows:
        out += [p] + ([3 * p // 2] if kind == "half" and p >= 2 and 3 * p // 2 < n_rows else [])
        p *= 2
    return out + [n_rows]


def nearest(value: int, ok: Callable[[int], bool], limit: int) -> list[int]:
    """The largest valid value below `value` and the smallest above it (up to `limit`)."""
    below = next((v for v in range(value - 1, 0, -1) if ok(v)), None)
    above = next((v for v in range(value + 1, max(limit, value) + 1) if ok(v)), None)
    return [v for v in (below, above) if v is not None]


def row_bucket(n: int, n_rows: int, kind: str = "half") -> int:
    """The smallest of `row_buckets(n_rows, kind)` that holds n rows (n <= n_rows)."""
    return next(b for b in row_buckets(n_rows, kind) if b >= n)


def rollout_devices(batch_devices: int, devices: int, processes: int, replica_tensor: int = 1) -> int:
    """Devices one process's rollout rows split over: one process, the mesh's batch devices
    (data x fsdp); several, the process's own devices less the `replica_tensor`
    (rollout.replica_tensor) that share each row."""
    return batch_devices if processes == 1 else max(1, devices // processes // replica_tensor)


def rollout_phases(c, processes: int = 1) -> list[tuple[str, int, int]]:
    """(config field, rows a process decodes, group size) of each phase of experiment config `c`
    that rolls out: GRPO's step and, when enabled, OFSD's round; a phase whose questions the
    processes do not split evenly is left out (the batch-size check names it)."""
    phases = [("config.grpo.questions_per_step", c.grpo.questions_per_step, c.rollout.group_size)]
    if c.ofsd.enabled:
        phases.append(("config.ofsd.questions", c.ofsd.questions, c.ofsd.group_size))
    return [(f, q // processes * group, group) for f, q, group in phases if q % processes == 0]


def rollout_chunk_ok(max_rows: int, phases: Sequence[tuple[int, int]], devices: int) -> bool:
    """Whether `rollout.max_rows` cuts every phase's rows into equal chunks the rollout can run:
    each phase is (rows a process decodes in it, its group size); a chunk is whole groups
    (max_rows a multiple of each group size, 0 = all rows at once), split evenly over the
    `devices` a process rolls out on, and a phase's rows are a whole number of chunks (one
    decode program, not two)."""
    for rows, group in phases:
        chunk = rows if max_rows == 0 else max(1, max_rows // group) * group
        if max_rows % group or chunk % devices or rows % chunk:
            return False
    return True
