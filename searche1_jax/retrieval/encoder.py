"""Dense text encoder: HF tokenizer.json + BERT in Flax, e5-style prefixes, mean pooling, L2.

    enc = Encoder.from_pretrained("/models/e5-base-v2")   # prefixes "auto": e5 -> "query: " / "passage: "
    q = enc.encode_queries(["who wrote hamlet"])       # [1, 768] f32, unit norm
    p = enc.encode_passages(corpus.texts(range(100)))  # [100, 768]

Batches are padded to widths 2^j or 1.5 * 2^j (>= 16) and to a power-of-two number of rows (at
most batch_size), so one encoder compiles at most (2 log2(max_length / 16) + 1) x (log2(batch_size)
+ 1) shapes (`num_compilations` counts them); a full stream of texts uses the batch_size row count.
Each shape is compiled ahead of time and kept, so `warm_up()` can compile the query shapes when a
server starts instead of in the first request that brings each (1-2 s each on 2 loaded cores).
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from searche1_jax.model.weight_map import check_complete, hf_to_flax
from searche1_jax.retrieval.prefixes import PREFIXES, resolve_prefixes  # noqa: F401
from searche1_jax.retrieval.bert import BERT_IGNORE, BERT_RULES, BertConfig, BertModel, mean_pool_normalize
from searche1_jax.shapes import next_pow2

MIN_BUCKET = 16


def padded_length(n: int, max_length: int) -> int:
    """The padded token width of a batch whose longest text has n tokens: the smallest width of the
    form 2^j or 1.5 * 2^j (16, 24, 32, 48, 64, 96, 128, 192, 256, ...) that is >= n, capped at
    max_length. Two widths an octave: at most 1.5x padding (power-of-two widths alone waste up to
    2x: a 150-token passage ran at width 256, now 192; a 20-token query at 32, now 24), and two
    compiles an octave."""
    p = next_pow2(n, MIN_BUCKET)
    width = p * 3 // 4 if p > MIN_BUCKET and p * 3 // 4 >= n else p
    return min(width, max_length)


def padded_rows(n: int, batch_size: int) -> int:
    """Rows a batch of n texts is padded to: the next power of two, capped at batch_size. A served
    single query ran as a full batch of 32 rows before (32x the compute: 286 ms p50 on the loaded
    2 cores, issue 22); now it runs as 1 row, at the cost of a few more compiled shapes."""
    return min(next_pow2(n, 1), batch_size)


def _flat_state(model: nnx.Module) -> dict[str, nnx.Variable]:
    return {".".join(str(p) for p in path): v for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def bert_from_arrays(cfg: BertConfig, arrays: dict[str, np.ndarray], source: str = "checkpoint") -> BertModel:
    """Build a BertModel and fill it from `{dotted path: array}` (shape-checked)."""
    model = nnx.eval_shape(lambda: BertModel(cfg, rngs=nnx.Rngs(0)))
    flat = _flat_state(model)
    check_complete(arrays, flat, source)
    extra = sorted(set(arrays) - set(flat))
    if extra:
        raise ValueError(f"{source}: tensors with no parameter in this encoder: {extra[:5]}")
    for path, var in flat.items():
        want = tuple(var.get_value().shape)
        if tuple(arrays[path].shape) != want:
            raise ValueError(f"{source}: shape mismatch for {path}: expected {want}, got "
                             f"{tuple(arrays[path].shape)}")
        var.set_value(jnp.asarray(np.asarray(arrays[path], dtype=cfg.dtype)))
    return model


def load_bert(directory: str, dtype: str = "float32") -> tuple[BertModel, BertConfig]:
    """BertModel from a HF directory (config.json + model.safetensors), via BERT_RULES."""
    from safetensors.numpy import load_file

    cfg_path = os.path.join(directory, "config.json")
    weights = os.path.join(directory, "model.safetensors")
    for p in (cfg_path, weights):
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p} not found: an encoder directory needs config.json and "
                                    f"model.safetensors (a HF snapshot of e.g. intfloat/e5-base-v2)")
    with open(cfg_path) as f:
        cfg = BertConfig.from_hf(json.load(f))
    cfg = BertConfig(**{**cfg.__dict__, "dtype": dtype})
    tensors = {k.removeprefix("bert."): v for k, v in load_file(weights).items()}
    arrays = hf_to_flax(tensors, BERT_RULES, ignore=BERT_IGNORE)
    return bert_from_arrays(cfg, arrays, source=directory), cfg


class Encoder:
    """Texts -> unit-norm embeddings [N, d] f32 with a jitted, length-bucketed BERT forward."""

    def __init__(self, model: BertModel, tokenizer, *, query_prefix: str = "", passage_prefix: str = "",
                 max_length: int = 256, batch_size: int = 32, name: str = "bert"):
        if max_length > model.cfg.max_positions:
            raise ValueError(f"max_length {max_length} exceeds the model's {model.cfg.max_positions} positions")
        self.cfg = model.cfg
        self.dim = model.cfg.d_model
        self.query_prefix, self.passage_prefix = query_prefix, passage_prefix
        self.max_length, self.batch_size, self.name = max_length, batch_size, name
        self.tokenizer = tokenizer
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length)
        graphdef, state = nnx.split(model)
        self._state = state
        self._compiled: dict[tuple[int, int], jax.stages.Compiled] = {}

        @jax.jit
        def forward(state, ids, mask):
            hidden = nnx.merge(graphdef, state)(ids, mask)
            return mean_pool_normalize(hidden, mask)

        self._forward = forward

    @classmethod
    def from_pretrained(cls, directory: str, *, prefixes: str | tuple[str, str] = "auto",
                        max_length: int | None = None, batch_size: int = 32, dtype: str = "float32") -> "Encoder":
        """Load weights, tokenizer.json and (if present) sentence-transformers' max_seq_length.
        `prefixes`: see `resolve_prefixes` ("auto": named by the checkpoint, `detect_prefixes`)."""
        from tokenizers import Tokenizer

        prefixes = resolve_prefixes(prefixes, directory)
        tok_path = os.path.join(directory, "tokenizer.json")
        if not os.path.exists(tok_path):
            raise FileNotFoundError(f"{tok_path} not found: the encoder needs a HF fast-tokenizer file")
        model, cfg = load_bert(directory, dtype)
        if max_length is None:
            st = os.path.join(directory, "sentence_bert_config.json")
            max_length = 256
            if os.path.exists(st):
                with open(st) as f:
                    max_length = int(json.load(f).get("max_seq_length", 256))
        return cls(model, Tokenizer.from_file(tok_path), query_prefix=prefixes[0],
                   passage_prefix=prefixes[1], max_length=min(max_length, cfg.max_positions),
                   batch_size=batch_size, name=os.path.basename(os.path.normpath(directory)))

    @property
    def num_compilations(self) -> int:
        """Distinct (batch, length) shapes compiled so far."""
        return len(self._compiled)

    def _executable(self, rows: int, width: int) -> jax.stages.Compiled:
        """The forward compiled for [rows, width] int32 ids/mask (compiled now if new)."""
        exe = self._compiled.get((rows, width))
        if exe is None:
            spec = jax.ShapeDtypeStruct((rows, width), jnp.int32)
            exe = self._compiled[(rows, width)] = self._forward.lower(self._state, spec, spec).compile()
        return exe

    def bucket_shapes(self, max_tokens: int) -> list[tuple[int, int]]:
        """Every (rows, width) a call of texts of at most `max_tokens` tokens (prefix included) can
        run: each row count `padded_rows` gives x each width `padded_length` gives."""
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        rows = sorted({padded_rows(n, self.batch_size) for n in range(1, self.batch_size + 1)})
        widths = sorted({padded_length(n, self.max_length) for n in range(1, min(max_tokens, self.max_length) + 1)})
        return [(r, w) for r in rows for w in widths]

    def warm_up(self, max_tokens: int) -> int:
        """Compile every shape of `bucket_shapes(max_tokens)` now (none is run) -> how many were new.
        A server calls it at start, so no request waits for a compile (issue 22 item 3)."""
        before = len(self._compiled)
        for rows, width in self.bucket_shapes(max_tokens):
            self._executable(rows, width)
        return len(self._compiled) - before

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str], prefix: str = "") -> np.ndarray:
        """[N, d] f32 unit-norm embeddings of `prefix + text`, in input order."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        ids = self.tokenize([prefix + t for t in texts])
        order = np.argsort([len(x) for x in ids], kind="stable")  # similar lengths share a bucket
        out = np.zeros((len(ids), self.dim), np.float32)
        for s in range(0, len(order), self.batch_size):
            rows = order[s:s + self.batch_size]
            t = padded_length(max(len(ids[r]) for r in rows), self.max_length)
            bs = padded_rows(len(rows), self.batch_size)
            batch = np.zeros((bs, t), np.int32)
            mask = np.zeros((bs, t), np.int32)
            for j, r in enumerate(rows):
                batch[j, :len(ids[r])] = ids[r]
                mask[j, :len(ids[r])] = 1
            mask[len(rows):, 0] = 1  # padding rows: one visible token keeps softmax finite
            emb = self._executable(bs, t)(self._state, batch, mask)
            out[rows] = np.asarray(emb)[:len(rows)]
        return out

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self.encode(queries, self.query_prefix)

    def encode_passages(self, passages: Sequence[str]) -> np.ndarray:
        return self.encode(passages, self.passage_prefix)

    def describe(self) -> dict:
        """What an index manifest records about the encoder that built it."""
        return {"name": self.name, "dim": self.dim, "query_prefix": self.query_prefix,
                "passage_prefix": self.passage_prefix, "max_length": self.max_length}
