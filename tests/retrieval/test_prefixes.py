"""Encoder prefixes named by the checkpoint (issue 22, item 4). Oracle: the e5 model card's
"query: " / "passage: " (the prefixes e5 was trained with, and Search-R1's server adds to any
retriever whose name contains "e5"); all-MiniLM-L6-v2 uses none."""
import json
import os
import shutil

import numpy as np
import pytest

from searche1_jax.retrieval.prefixes import detect_prefixes, resolve_prefixes

E5 = ("query: ", "passage: ")


def checkpoint(tmp_path, name: str, name_or_path: str | None = None, prompts: dict | None = None) -> str:
    d = tmp_path / name
    d.mkdir(parents=True)
    cfg = {"model_type": "bert"}
    if name_or_path is not None:
        cfg["_name_or_path"] = name_or_path
    (d / "config.json").write_text(json.dumps(cfg))
    if prompts is not None:
        (d / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}))
    return str(d)


@pytest.mark.parametrize("name,name_or_path,want", [
    ("model", "intfloat/e5-base-v2", E5),                 # named in config.json
    ("e5-base-v2", None, E5),                            # a directory named after it
    ("models--intfloat--e5-large-v2/snapshots/abc123", None, E5),  # the HF hub cache layout
    ("multilingual-e5-small", "", E5),
    ("all-MiniLM-L6-v2", "nreimers/MiniLM-L6-H384-uncased", ("", "")),
    ("bge5-base", "me/ke5x", ("", "")),                  # "e5" inside a word is not e5
])
def test_e5_family_checkpoints_get_e5_prefixes_by_default(tmp_path, name, name_or_path, want):
    d = checkpoint(tmp_path, name, name_or_path)
    assert detect_prefixes(d)[0] == want
    assert resolve_prefixes("auto", d) == want


def test_sentence_transformers_prompts_win(tmp_path):
    d = checkpoint(tmp_path, "e5-base-v2", prompts={"query": "Q: ", "document": "D: "})
    assert detect_prefixes(d)[0] == ("Q: ", "D: ")


def test_prefixes_override_the_checkpoint(tmp_path):
    d = checkpoint(tmp_path, "e5-base-v2")
    assert resolve_prefixes("none", d) == ("", "")
    assert resolve_prefixes("Q: |P: ", d) == ("Q: ", "P: ")
    assert resolve_prefixes(("a ", "b "), d) == ("a ", "b ")
    with pytest.raises(ValueError, match=r"prefixes must be one of .*auto.*e\.g\. --prefixes 'query: \|passage: '"):
        resolve_prefixes("e6", d)


def test_minilm_gets_none(minilm_dir):
    assert detect_prefixes(minilm_dir)[0] == ("", "")


def test_an_e5_named_checkpoint_encodes_with_prefixes_and_the_build_cli_can_override(
        tmp_path, tiny_bert_dir, small_corpus_path):
    from searche1_jax.retrieval.build import main
    from searche1_jax.retrieval.encoder import Encoder
    from searche1_jax.retrieval.store import read_manifest

    d = tmp_path / "e5-tiny"
    shutil.copytree(tiny_bert_dir, d)
    enc = Encoder.from_pretrained(str(d), max_length=128)
    assert (enc.query_prefix, enc.passage_prefix) == E5
    plain = Encoder.from_pretrained(str(d), prefixes="none", max_length=128)
    q = "who wrote hamlet"
    np.testing.assert_allclose(enc.encode_queries([q]), plain.encode(["query: " + q]), atol=1e-6)
    for flag, want in ((None, E5), ("none", ("", ""))):
        out = tmp_path / f"idx_{flag}"
        main(["--corpus", small_corpus_path, "--encoder", str(d), "--index", "exact", "--max-length", "32",
              "--out", str(out), *(["--prefixes", flag] if flag else [])])
        e = read_manifest(str(out))["encoder"]
        assert (e["query_prefix"], e["passage_prefix"]) == want
        assert os.path.exists(out / "embeddings.npy")
