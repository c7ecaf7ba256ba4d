"""Search-E1 with Qwen2.5-7B (instruct): same protocol, larger model (untied head, 28/4 heads)."""
import os

from searche1_jax.config import load_config_file

VARIANTS = ("instruct", "base")  # the string args get_config takes: VARIANT[,SLICE] as configs/qwen3b.py
SLICES = ("8xh100", "16xh100", "v4-32", "v5e-64")  # the hardware configs/qwen3b.py sizes micro-batches for
# the rollout chunk the planner picks for 7B (configs/qwen3b.py ROLLOUT_ROWS). On the TPU slices a
# whole bf16 7B replica (15.2 GB) a chip leaves too little room (v4-32: the planner's append 28.9
# GB of a 28.8 GB budget at 20 rows; a v5e chip has 16 GB), so a process's chips split each replica
# (rollout.replica_tensor, tensor-parallel decoding): 2 of a v4 host's 4 chips, all 4 of a v5e host's
REPLICA_TENSOR = {"8xh100": 1, "16xh100": 1, "v4-32": 2, "v5e-64": 4}
ROLLOUT_ROWS = {"8xh100": 80, "16xh100": 160, "v4-32": 40, "v5e-64": 20}


def get_config(arg: str = "instruct"):
    variant, _, slice_ = arg.partition(",")
    if variant not in VARIANTS or (slice_ and slice_ not in SLICES):
        raise ValueError(f"configs/qwen7b.py takes VARIANT[,SLICE]: variants {VARIANTS}, slices {SLICES}; "
                         f"got {arg!r}")
    # the 3B config's Search-R1 recipe, line by line with its sources (configs/qwen3b.py)
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "qwen3b.py") + f":{arg}")
    c.model.architecture = "qwen2.5-7b"  # the checkpoint's shapes (plan.py); base and instruct share them
    c.model.checkpoint = ""            # a local HF directory of Qwen/Qwen2.5-7B(-Instruct): required
    c.mesh.tensor = 1
    c.rollout.max_rows = ROLLOUT_ROWS[slice_ or "8xh100"]
    c.rollout.replica_tensor = REPLICA_TENSOR[slice_ or "8xh100"]
    return c
