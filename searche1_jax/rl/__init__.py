"""RL losses and their data helpers as pure functions: arrays (and strings) in, arrays out; no
model, config or I/O, and nothing of ours outside rl/. Submodules (importing this package
imports none of them):

    grpo            group-normalised advantages and the clipped policy-gradient loss (METHOD §2)
    logprobs        per-token log-probs and entropy from hidden states, in token chunks
    kl              divergence definitions and the naive teacher/student losses (METHOD §3.4)
    fused_kl        the fused chunked divergences, never building [N, V] (the OFSD loss)
    fused_kl_tiles  their vocabulary-tiled form
    ofsd            OFSD data side: sibling/student selection, privileged context (METHOD §3.1-3.3)
    rewards         answer metrics and the GRPO reward (METHOD §1)
"""
__all__ = ["fused_kl", "fused_kl_tiles", "grpo", "kl", "logprobs", "ofsd", "rewards"]
