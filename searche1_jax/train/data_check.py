"""Every training question (and every dev question a run evaluates) checked when the data is
loaded, before the model is built.

A question whose prompt is longer than config.rollout.max_prompt_tokens cannot be rolled out:
found at the step that first draws it, it stopped the run there, and again at every restart
from the checkpoint before it (issue 23). `checked_examples` finds every such question up front
and, by config.data.on_invalid, refuses the data ("refuse": naming each file:line, its length
and the limit) or drops those questions with a logged count ("skip").

    examples = checked_examples(examples, path, tokenizer, config)   # config: ExperimentConfig
"""
from __future__ import annotations

from typing import Callable, Sequence

from searche1_jax.data.qa import QAExample, example_locations
from searche1_jax.rollout import protocol as P
from searche1_jax.rollout.agent import prompt_renderer

# a prompt of B UTF-8 bytes has at most B tokens: every byte-level BPE token (and every byte-
# fallback token) covers at least one byte, and the agent encodes without added special tokens;
# the slack covers a tokenizer that prepends one marker (SentencePiece's "▁")
BYTES_SLACK = 8
SHOWN = 10  # offending lines named in a message


class InvalidDataError(ValueError):
    """Training data the run cannot use; the message names each file:line and the fix."""


def prompt_bytes(examples: Sequence[QAExample], render: Callable[[str], str]) -> list[int]:
    """UTF-8 bytes of each example's prompt text. A chat template takes ~2 ms to render (170k
    questions: 6 minutes), so when the template copies the question line verbatim (checked on a
    placeholder and on the first examples) a prompt is its fixed part plus its question line."""
    def nbytes(text):
        return len(text.encode("utf-8"))

    line = P.question_line("\x00question\x00")
    whole = render("\x00question\x00")
    if whole.count(line) == 1:
        fixed = nbytes(whole) - nbytes(line)
        sizes = [fixed + nbytes(P.question_line(ex.question)) for ex in examples]
        if all(nbytes(render(ex.question)) == n for ex, n in zip(examples[:8], sizes)):
            return sizes
    return [nbytes(render(ex.question)) for ex in examples]


def long_prompts(examples: Sequence[QAExample], render: Callable[[str], str], encode_batch,
                 limit: int) -> dict[int, int]:
    """{index in examples: prompt tokens} of the examples whose prompt has more than `limit`
    tokens. Only prompts over `limit - BYTES_SLACK` UTF-8 bytes are rendered and tokenised."""
    suspects = [i for i, n in enumerate(prompt_bytes(examples, render)) if n > limit - BYTES_SLACK]
    lengths = encode_batch([render(examples[i].question) for i in suspects]) if suspects else []
    return {i: len(ids) for i, ids in zip(suspects, lengths) if len(ids) > limit}


def checked_examples(examples: Sequence[QAExample], path: str, tokenizer, config,
                     what: str = "training") -> list[QAExample]:
    """`examples` (read from `path`) without those whose prompt exceeds
    config.rollout.max_prompt_tokens, by config.data.on_invalid: "refuse" raises
    InvalidDataError naming them, "skip" returns the others and prints how many were dropped.
    what: the questions' role in messages ("training", "dev")."""
    limit = config.rollout.max_prompt_tokens
    bad = long_prompts(examples, prompt_renderer(tokenizer, config.rollout.chat_template),
                       tokenizer.encode_batch, limit)
    if not bad:
        return list(examples)
    where = example_locations(path)
    lines = [f"{where.get(examples[i].id, f'{path} (id {examples[i].id!r})')}: prompt of {n} tokens > "
             f"config.rollout.max_prompt_tokens={limit}" for i, n in sorted(bad.items())]
    more = f"\n  ... and {len(lines) - SHOWN} more" if len(lines) > SHOWN else ""
    listing = "\n  " + "\n  ".join(lines[:SHOWN]) + more
    if config.data.on_invalid == "refuse":
        raise InvalidDataError(
            f"{len(bad)} of {len(examples)} {what} questions in {path} have a prompt longer than "
            f"config.rollout.max_prompt_tokens={limit}:{listing}\nraise config.rollout.max_prompt_tokens, "
            f"remove these questions, or set config.data.on_invalid='skip' to train without them")
    kept = [ex for i, ex in enumerate(examples) if i not in bad]
    if not kept:
        raise InvalidDataError(f"every {what} question in {path} has a prompt longer than "
                               f"config.rollout.max_prompt_tokens={limit}:{listing}")
    print(f"config.data.on_invalid='skip': skipped {len(bad)} of {len(examples)} {what} questions "
          f"(prompt longer than config.rollout.max_prompt_tokens={limit}):{listing}", flush=True)
    return kept
