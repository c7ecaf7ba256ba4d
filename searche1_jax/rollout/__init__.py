"""Generating trajectories. Submodules (importing this package imports none of them):

    sampler   the jitted decode loop over a KV cache (`decode`, `append`, `SamplingParams`)
    engine    which rows each decode / append computes: shared prefills, live rows only
    stop      stop-string detection inside that loop (a token-level automaton)
    protocol  the Search-R1 agent protocol: tags, prompts, observations, action parsing
    agent     the multi-turn search agent (`SearchAgent`, `Trajectory`)
"""
__all__ = ["agent", "engine", "protocol", "sampler", "stop"]
