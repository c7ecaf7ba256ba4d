"""A `tokenizers.Tokenizer` built from a GGUF file's tokenizer metadata (no transformers).

Reads only the GGUF header and key/value section (fast: the tensors are never touched) and
rebuilds the byte-level BPE tokenizer that `tokenizer.ggml.{tokens,merges,token_type,pre}`
describe, plus the chat template and the special tokens. Supported: `tokenizer.ggml.model ==
"gpt2"` (byte-level BPE: SmolLM2, Qwen2, GPT-2) with the pre-tokenizers in `_PRE_TOKENIZERS`.

Note: for `pre == "smollm"` digits are split one by one (llama.cpp's regex list and SmolLM2's
original tokenizer.json); transformers' own GGUF loader ignores `pre` and differs from both
when whitespace precedes a digit (tests pin this).

    backend, meta = tokenizer_from_gguf(path)
    meta: {"chat_template", "bos_token", "eos_token", "pad_token", "unk_token", "add_bos_token"}
"""
from __future__ import annotations

import struct

# GGUF value types (ggml/docs/gguf.md)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_CONTROL, _USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values of added tokens

# llama.cpp's pre-tokenizer regexes (llama-vocab.cpp) as `tokenizers` pre-tokenizer configs.
_QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_tokenizer(pre: str):
    from tokenizers import Regex, pre_tokenizers as pt

    byte_level = pt.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("gpt2", "default"):
        return byte_level
    if pre == "smollm":  # digits one by one, then the GPT-2 regex
        return pt.Sequence([pt.Digits(individual_digits=True), byte_level])
    if pre == "qwen2":
        return pt.Sequence([pt.Split(Regex(_QWEN2_RE), behavior="isolated", invert=False),
                            pt.ByteLevel(add_prefix_space=False, use_regex=False)])
    raise ValueError(f"GGUF pre-tokenizer {pre!r} is not supported (supported: gpt2, default, "
                     "smollm, qwen2); load the model's tokenizer.json instead")


def read_gguf_metadata(path: str, prefix: str = "") -> dict:
    """The GGUF key/value metadata whose keys start with `prefix` (little-endian GGUF v2/v3)."""
    with open(path, "rb") as f:
        data = f.read(8)
        if data[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (magic {data[:4]!r})")
        version = struct.unpack("<I", data[4:8])[0]
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported (need >= 2)")
        _, n_kv = struct.unpack("<QQ", f.read(16))

        def read(fmt):
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def read_str():
            return f.read(read("<Q")).decode("utf-8", errors="surrogateescape")

        def read_value(vtype, keep):
            if vtype == _STRING:
                return read_str()
            if vtype == _ARRAY:
                itype, n = read("<I"), read("<Q")
                if itype in _SCALARS:
                    fmt = _SCALARS[itype]
                    raw = f.read(struct.calcsize(fmt) * n)
                    return list(struct.unpack(f"<{n}{fmt[1]}", raw)) if keep else None
                return [read_value(itype, keep) for _ in range(n)]
            if vtype in _SCALARS:
                return read(_SCALARS[vtype])
            raise ValueError(f"{path}: unknown GGUF value type {vtype}")

        out = {}
        for _ in range(n_kv):
            key = read_str()
            keep = key.startswith(prefix)
            value = read_value(read("<I"), keep)
            if keep:
                out[key] = value
        return out


def tokenizer_from_gguf(path: str):
    """-> (tokenizers.Tokenizer, meta dict) rebuilt from the GGUF's tokenizer metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    md = read_gguf_metadata(path, prefix="tokenizer.")
    kind = md.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{path}: GGUF tokenizer model {kind!r} is not supported (only byte-level "
                         "BPE, 'gpt2'); load the model's tokenizer.json instead")
    tokens = md["tokenizer.ggml.tokens"]
    types = md.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in md.get("tokenizer.ggml.merges", [])]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(md.get("tokenizer.ggml.pre", "default"))
    tok.decoder = decoders.ByteLevel()
    added = [AddedToken(t, special=ty == _CONTROL, normalized=False)
             for t, ty in zip(tokens, types) if ty in (_CONTROL, _USER_DEFINED)]
    tok.add_tokens(added)  # special flags ride on the AddedToken; keeps ids (already in vocab)

    def name(key):
        i = md.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    meta = {"chat_template": md.get("tokenizer.chat_template"), "bos_token": name("bos"),
            "eos_token": name("eos"), "pad_token": name("padding"), "unk_token": name("unknown"),
            "add_bos_token": bool(md.get("tokenizer.ggml.add_bos_token", False))}
    if meta["add_bos_token"] and meta["bos_token"]:
        bos = meta["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])])
    return tok, meta
