"""Tokenizer: HF `tokenizers` (Rust) from tokenizer.json or from a GGUF, plus the chat template.

No transformers at run time. The chat template is rendered with jinja2 in a sandbox the way
transformers renders it (trim_blocks, lstrip_blocks, `raise_exception`), and the parity test
checks that it gives the same string.
"""
from __future__ import annotations

import json
import os
from typing import Sequence


class Tokenizer:
    def __init__(self, backend, *, chat_template: str | None, eos_tokens: Sequence[str],
                 bos_token: str | None = None, pad_token: str | None = None):
        self.backend = backend  # tokenizers.Tokenizer
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.eos_tokens = [t for t in eos_tokens if t]
        ids = [backend.token_to_id(t) for t in self.eos_tokens]
        if not self.eos_tokens or any(i is None for i in ids):
            raise ValueError(f"tokenizer has no id for end-of-sequence tokens {self.eos_tokens}")
        self.eos_ids = ids
        pad = backend.token_to_id(pad_token) if pad_token else None
        self.pad_id = pad if pad is not None else ids[0]

    # ---- construction ----
    @classmethod
    def from_dir(cls, directory: str) -> "Tokenizer":
        from tokenizers import Tokenizer as Backend

        path = os.path.join(directory, "tokenizer.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: the model directory needs a tokenizer.json")
        cfg = {}
        cfg_path = os.path.join(directory, "tokenizer_config.json")
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                cfg = json.load(f)
        template = cfg.get("chat_template")
        jinja = os.path.join(directory, "chat_template.jinja")
        if template is None and os.path.exists(jinja):
            with open(jinja) as f:
                template = f.read()
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        eos = _token_str(cfg.get("eos_token"))
        gen_path = os.path.join(directory, "generation_config.json")
        eos_tokens = [eos] if eos else []
        if os.path.exists(gen_path):  # Qwen2.5 instruct stops on <|im_end|> and <|endoftext|>
            backend = Backend.from_file(path)
            with open(gen_path) as f:
                gen_eos = json.load(f).get("eos_token_id")
            for i in ([gen_eos] if isinstance(gen_eos, int) else gen_eos or []):
                tok = backend.id_to_token(i)
                if tok and tok not in eos_tokens:
                    eos_tokens.append(tok)
        return cls(Backend.from_file(path), chat_template=template, eos_tokens=eos_tokens,
                   bos_token=_token_str(cfg.get("bos_token")), pad_token=_token_str(cfg.get("pad_token")))

    @classmethod
    def from_gguf(cls, path: str) -> "Tokenizer":
        from searche1_jax.model.gguf_tokenizer import tokenizer_from_gguf

        backend, meta = tokenizer_from_gguf(path)
        return cls(backend, chat_template=meta.get("chat_template"), eos_tokens=[meta["eos_token"]],
                   bos_token=meta.get("bos_token"), pad_token=meta.get("pad_token"))

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        return cls.from_gguf(path) if path.endswith(".gguf") else cls.from_dir(path)

    # ---- use ----
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """(ids, offsets): each token's (start, end) character span in `text`."""
        enc = self.backend.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template; use a raw-text prompt "
                             "(config.rollout.chat_template='never')")
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
        env.globals["raise_exception"] = raise_exception
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_tokens[0])


def _token_str(tok) -> str | None:
    if isinstance(tok, dict):  # {"content": "<|im_end|>", ...}
        return tok.get("content")
    return tok
