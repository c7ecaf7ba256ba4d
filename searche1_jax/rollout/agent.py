"""The host-side multi-turn search agent (Search-R1 protocol, METHOD §1).

All rows of a batch decode a turn together (the device side, which rows a call computes and
how prompts are shared, is `engine.py`'s). After each turn, rows that paused on
`</search>` have their query parsed and retrieved in one batched call; the observation
(`\\n\\n<information>Doc 1(Title: ...) ...</information>\\n\\n`, at most 500 tokens) is appended
to those rows only, and decoding resumes. A turn that ends with neither tag gets the
invalid-action message. After `max_turns` turns one last turn is generated with searching
disabled. Sampled tokens have loss mask 1; observation and message tokens 0.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from searche1_jax.rollout import protocol as P
from searche1_jax.rollout.engine import ENGINES, EngineStats, RowEngine, compiled_counts
from searche1_jax.rollout.sampler import SamplingParams
from searche1_jax.shapes import ROW_BUCKETS, round_up

STOP_STRINGS = (P.SEARCH_CLOSE, P.ANSWER_CLOSE)


class Retriever(Protocol):
    def search(self, queries: list[str], k: int) -> list[list]: ...


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Search-R1 protocol knobs (defaults: METHOD §1)."""
    max_turns: int = 4            # turns with searching enabled; then one last turn without
    topk: int = 3                 # passages per search
    max_turn_tokens: int = 500    # new tokens per turn
    max_obs_tokens: int = 500     # observation truncation
    max_prompt_tokens: int = 4096
    max_response_tokens: int = 4096  # whole trajectory after the prompt (sampled + observations)
    prompt_bucket: int = 64       # prompts are padded to a multiple of this (fewer compilations)
    reward_text: str = "policy"   # where `Trajectory.answer` is read from: P.REWARD_TEXT_MODES
    engine: str = "packed"        # engine.ENGINES: "packed" (shared prefill, live rows only) or
                                  # "padded" (the engine before issue 21; same trajectories)
    row_buckets: str = "half"     # shapes.ROW_BUCKETS: the packed engine's row buckets

    def __post_init__(self):
        for name in ("max_turns", "topk", "max_turn_tokens", "max_obs_tokens", "max_prompt_tokens",
                     "max_response_tokens", "prompt_bucket"):
            if getattr(self, name) < (0 if name == "max_turns" else 1):
                raise ValueError(f"config.rollout.{name} must be >= 1, got {getattr(self, name)}")
        if self.engine not in ENGINES:
            raise ValueError(f"config.rollout.engine must be one of {ENGINES}, got {self.engine!r}")
        if self.row_buckets not in ROW_BUCKETS:
            raise ValueError(f"config.rollout.row_buckets must be one of {ROW_BUCKETS}, got {self.row_buckets!r}")
        if self.reward_text not in P.REWARD_TEXT_MODES:
            raise ValueError(f"config.rollout.reward_text must be one of {P.REWARD_TEXT_MODES}, "
                             f"got {self.reward_text!r}")

    @classmethod
    def from_config(cls, c) -> "AgentConfig":
        """From an experiment config: its `rollout` section and `retrieval.topk`."""
        r = c.rollout
        return cls(max_turns=r.max_turns, topk=c.retrieval.topk, max_turn_tokens=r.max_turn_tokens,
                   max_obs_tokens=r.max_obs_tokens, max_prompt_tokens=r.max_prompt_tokens,
                   max_response_tokens=r.max_response_tokens, prompt_bucket=r.prompt_bucket,
                   reward_text=r.reward_text, engine=r.engine, row_buckets=r.row_buckets)


@dataclasses.dataclass
class Trajectory:
    prompt_ids: list[int]
    question_start: int = 0       # index in prompt_ids where `Question:` starts
    response_ids: list[int] = dataclasses.field(default_factory=list)
    loss_mask: list[int] = dataclasses.field(default_factory=list)    # 1 = sampled by the policy
    logps: list[float] = dataclasses.field(default_factory=list)      # sampling log-probs (0 on context)
    queries: list[str] = dataclasses.field(default_factory=list)  # each search the agent ran, in
                                  # order: the record OFSD and logging read, never the text
    finish_reason: str = ""       # answer | max_turns | length
    response_text: str = ""       # everything after the prompt: sampled turns and observations
    policy_text: str = ""         # only what the policy sampled, turns joined by newlines
    answer: str | None = None     # the answer the reward reads (AgentConfig.reward_text): "policy",
                                  # the last <answer> span of policy_text (never of an observation or
                                  # of the corrective message, which itself names `<answer> and </answer>`);
                                  # "search_r1", P.extract_answer_search_r1 of prompt + response

    @property
    def num_searches(self) -> int:
        return len(self.queries)

    @property
    def num_sampled(self) -> int:
        return int(sum(self.loss_mask))

    def sampled_segments(self) -> list[list[int]]:
        """Token ids of each contiguous run the policy sampled (one per turn)."""
        runs, cur = [], []
        for tid, m in zip(self.response_ids, self.loss_mask):
            if m:
                cur.append(tid)
            elif cur:
                runs.append(cur)
                cur = []
        return runs + ([cur] if cur else [])

    def add(self, ids: Sequence[int], sampled: bool, logps: Sequence[float] | None = None):
        self.response_ids.extend(int(i) for i in ids)
        self.loss_mask.extend([int(sampled)] * len(ids))
        self.logps.extend(float(x) for x in logps) if logps is not None else self.logps.extend([0.0] * len(ids))


def prompt_renderer(tokenizer, chat_template: str = "auto") -> Callable[[str], str]:
    """question -> the whole prompt text the agent tokenises: the tokenizer's chat template when
    `chat_template` is "auto" and it has one, raw text otherwise (see `SearchAgent`). Also what
    the training data is checked against when it is loaded (train/data_check.py)."""
    if chat_template not in P.CHAT_TEMPLATE_MODES:
        raise ValueError(f"chat_template must be one of {P.CHAT_TEMPLATE_MODES}, got {chat_template!r}")
    chat = tokenizer.apply_chat_template if chat_template == "auto" and tokenizer.chat_template else None
    return lambda question: P.build_prompt(question, chat_template=(
        (lambda msgs: chat(msgs, add_generation_prompt=True)) if chat else None))


class SearchAgent:
    """Runs batches of questions through the policy and a retriever.

    `stop` is the compiled stop automaton for STOP_STRINGS (see `stop.py`); `tokenizer` our
    `Tokenizer`; `chat_template`: "auto" renders the prompt with the tokenizer's chat template
    whenever it has one (Search-R1: Qwen2.5 base tokenizers ship ChatML too), raw text when it
    has none; "never" always uses raw text.
    """

    def __init__(self, tokenizer, retriever: Retriever, stop, cfg: AgentConfig = AgentConfig(),
                 *, chat_template: str = "auto"):
        self.tok, self.retriever, self.cfg = tokenizer, retriever, cfg
        self.table = jnp.asarray(stop.table)
        self.rank = jnp.asarray(stop.rank)
        if tuple(stop.stop_strings) != STOP_STRINGS:
            raise ValueError(f"the stop automaton must be built for {STOP_STRINGS}, got {stop.stop_strings}")
        self.start = int(stop.start)
        self.eos = jnp.asarray(tokenizer.eos_ids, jnp.int32)
        self.prompt_text = prompt_renderer(tokenizer, chat_template)  # question -> prompt text
        self.invalid_ids = tokenizer.encode(P.INVALID_ACTION_MESSAGE)
        # the counters of every `run` so far (engine.EngineStats): a caller that wants one
        # step's figures swaps in a fresh one (`take_stats`)
        self.stats = EngineStats()

    def take_stats(self) -> EngineStats:
        """The counters since the last call (and a fresh set for the next runs)."""
        out, self.stats = self.stats, EngineStats()
        return out

    def prompt_ids(self, question: str) -> tuple[list[int], int]:
        """(prompt token ids, index of the token where `Question:` starts).

        The prompt is tokenised in one piece (Search-R1); the question's first token is the one
        whose character span ends past the question line's start, so it may carry the space
        before `Question` (` Question`). OFSD inserts the privileged context right before it.
        """
        text = self.prompt_text(question)
        cut = text.rfind(P.question_line(question))
        ids, offsets = self.tok.encode_with_offsets(text)
        if len(ids) > self.cfg.max_prompt_tokens:
            raise ValueError(f"prompt of {len(ids)} tokens exceeds config.rollout.max_prompt_tokens="
                             f"{self.cfg.max_prompt_tokens} for question {question[:80]!r}")
        return ids, next(i for i, (_, end) in enumerate(offsets) if end > cut)

    def _kept_turn(self, sampled: np.ndarray) -> tuple[list[int], str]:
        """(token ids, text) of one sampled turn as Search-R1 keeps it: decoded without special
        tokens (an EOS is never kept), cut right after the first closing tag, re-encoded. When
        no byte was dropped the sampled ids are kept as they are (the same text; the tokens the
        policy chose rather than their canonical re-tokenisation)."""
        sampled = [int(x) for x in sampled]
        text = P.cut_turn(self.tok.decode(sampled, skip_special_tokens=True))
        if text == self.tok.decode(sampled):
            return sampled, text
        return self.tok.encode(text), text

    def run(self, model, questions: Sequence[str], key: jax.Array,
            sampling: SamplingParams = SamplingParams()) -> list[Trajectory]:
        """Trajectories of `questions` (rows; a question repeated G times is a GRPO group).
        Row r's i-th token of turn t is drawn with fold_in(fold_in(fold_in(key, t), r), i)."""
        cfg, b = self.cfg, len(questions)
        t_run, compiled = time.perf_counter(), compiled_counts()
        stats = EngineStats()
        trajs = [Trajectory(*self.prompt_ids(q)) for q in questions]
        prompt_width = round_up(max(len(t.prompt_ids) for t in trajs), cfg.prompt_bucket)
        engine = RowEngine(model, b, prompt_width + cfg.max_response_tokens, self.start, engine=cfg.engine,
                           stats=stats, buckets=cfg.row_buckets)
        engine.prefill([t.prompt_ids for t in trajs], cfg.prompt_bucket)
        room = lambda t: cfg.max_response_tokens - len(t.response_ids)  # noqa: E731
        # both closing tags end every turn; in the last one (searching disabled) a `</search>`
        # ends the trajectory without retrieval (Search-R1, METHOD §1)
        stop = dict(stop_table=self.table, stop_rank=self.rank, eos_ids=self.eos, n_stops=len(STOP_STRINGS))

        active = np.ones((b,), bool)
        for turn in range(cfg.max_turns + 1):
            searching = turn < cfg.max_turns
            keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(key, turn), jnp.arange(b))
            sampled = engine.decode_turn([int(r) for r in np.flatnonzero(active)], keys, cfg.max_turn_tokens,
                                         sampling, stop)
            context: dict[int, list[int]] = {}   # row -> observation / message to append
            pending: dict[int, list[int]] = {}   # row -> kept turn tokens the cache lacks
            rewound: dict[int, int] = {}         # row -> cache length to rewind to first
            to_search: list[tuple[int, str]] = []
            # each turn as Search-R1 keeps it (cut, no EOS)
            turns = {r: self._kept_turn(sampled[r][0]) for r in np.flatnonzero(active)}
            for r in np.flatnonzero(active):
                t = trajs[r]
                ids, text = turns[r]
                toks, lps = sampled[r]
                before = len(t.prompt_ids) + len(t.response_ids)
                take = min(len(ids), room(t))  # the trajectory is cut at the total budget
                same = _common_prefix(ids[:take], toks)
                if same < len(toks):  # the cache holds an EOS, glued text or another tokenisation:
                    rewound[r] = before + same  # forget it; the kept rest goes in with the context
                    pending[r] = ids[same:take]
                t.add(ids[:take], True, list(lps[:same]) + [float("nan")] * (take - same))
                action = P.parse_action(text)
                if take < len(ids):
                    t.finish_reason, active[r] = "length", False
                elif action is not None and action.kind == P.ANSWER:
                    t.finish_reason, active[r] = "answer", False
                elif room(t) <= 0:
                    t.finish_reason, active[r] = "length", False
                elif not searching:  # the last turn: whatever it did, the trajectory ends
                    t.finish_reason, active[r] = "max_turns", False
                elif action is not None and action.kind == P.SEARCH and action.content:
                    to_search.append((r, action.content))
                else:  # EOS, the per-turn budget, a bare `</answer>`, `<search></search>`:
                    context[r] = self.invalid_ids  # Search-R1's invalid action
            if to_search:
                rows, queries = [r for r, _ in to_search], [q for _, q in to_search]
                t0 = time.perf_counter()
                results = self.retriever.search(queries, cfg.topk)
                stats.retrieval_s += time.perf_counter() - t0
                for r, q, passages in zip(rows, queries, results):
                    trajs[r].queries.append(q)
                    context[r] = self.tok.encode(P.format_observation(passages))[:cfg.max_obs_tokens]
            appends = {}
            for r, ids in context.items():
                ids = ids[:max(room(trajs[r]), 0)]
                trajs[r].add(ids, False)
                if room(trajs[r]) <= 0:
                    trajs[r].finish_reason, active[r] = "length", False
                else:
                    appends[r] = pending.get(r, []) + ids
            engine.rewind(rewound)
            engine.append(appends, cfg.prompt_bucket)
            if not active.any():
                break
        for t in trajs:
            t.finish_reason = t.finish_reason or "max_turns"
            t.response_text = self.tok.decode(t.response_ids)
            t.policy_text = "\n".join(self.tok.decode(seg) for seg in t.sampled_segments())
            t.answer = (P.extract_answer(t.policy_text) if cfg.reward_text == "policy" else
                        P.extract_answer_search_r1(self.tok.decode(t.prompt_ids + t.response_ids)))
        now = compiled_counts()
        stats.decode_compiles, stats.append_compiles = now[0] - compiled[0], now[1] - compiled[1]
        stats.wall_s = time.perf_counter() - t_run
        self.stats.add(stats)
        return trajs


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if int(x) != int(y):
            break
        n += 1
    return n

