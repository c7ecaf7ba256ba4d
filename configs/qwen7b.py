"""Search-E1 with Qwen2.5-7B (instruct): same protocol, larger model (untied head, 28/4 heads)."""
import os

from searche1_jax.config import load_config_file

VARIANTS = ("instruct", "base")  # the string args get_config takes


def get_config(arg: str = "instruct"):
    if arg not in VARIANTS:
        raise ValueError(f"configs/qwen7b.py variants are {VARIANTS}, got {arg!r}")
    # the 3B config's Search-R1 recipe, line by line with its sources (configs/qwen3b.py)
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "qwen3b.py") + f":{arg}")
    c.model.architecture = "qwen2.5-7b"  # the checkpoint's shapes (plan.py); base and instruct share them
    c.model.checkpoint = ""            # a local HF directory of Qwen/Qwen2.5-7B(-Instruct): required
    c.mesh.tensor = 1
    return c
