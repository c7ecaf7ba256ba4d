"""Encoder parity against transformers (the oracle, imported lazily here only)."""
import numpy as np
import pytest

from searche1_jax.model.weight_map import flax_to_hf, hf_to_flax
from searche1_jax.retrieval.bert import BERT_IGNORE, BERT_RULES
from searche1_jax.retrieval.encoder import Encoder, padded_length, padded_rows

TEXTS = ["who wrote hamlet?", "x",
         # > 128 tokens: truncation
         "The capital of France is Paris, a city on the Seine known for its museums and bridges. " * 9,
         "Evan L. Morris (January 26, 1977 – July 9, 2015) was a lobbyist for Genentech."]


def torch_mean_pooled(directory, texts, max_length):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].float()
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1).numpy()


def test_tiny_random_bert_matches_transformers(tiny_bert_dir):
    enc = Encoder.from_pretrained(tiny_bert_dir, prefixes="e5", max_length=128, batch_size=4)
    ours = enc.encode_queries(TEXTS)
    want = torch_mean_pooled(tiny_bert_dir, ["query: " + t for t in TEXTS], 128)
    np.testing.assert_allclose(ours, want, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_real_minilm_matches_transformers(minilm_dir):
    enc = Encoder.from_pretrained(minilm_dir, batch_size=4)
    assert (enc.query_prefix, enc.passage_prefix, enc.max_length, enc.dim) == ("", "", 256, 384)
    np.testing.assert_allclose(enc.encode_passages(TEXTS), torch_mean_pooled(minilm_dir, TEXTS, 256), atol=1e-4)


def test_minilm_ranks_the_relevant_passage_first(minilm_dir):
    enc = Encoder.from_pretrained(minilm_dir)
    q = enc.encode_queries(["Which company did Evan Morris lobby for?"])
    p = enc.encode_passages(TEXTS)
    assert int(np.argmax(p @ q[0])) == 3


def test_prefixes_change_the_embedding(tiny_encoder):
    q, p = tiny_encoder.encode_queries(TEXTS[:1]), tiny_encoder.encode_passages(TEXTS[:1])
    assert not np.allclose(q, p)
    np.testing.assert_allclose(tiny_encoder.encode(["query: " + TEXTS[0]]), q, atol=1e-6)


def test_length_buckets_bound_compilations_and_order_is_kept(tiny_bert_dir):
    enc = Encoder.from_pretrained(tiny_bert_dir, max_length=128, batch_size=4)
    texts = [("word " * n).strip() for n in range(1, 120, 7)]
    all_at_once = enc.encode(texts)
    one_by_one = np.concatenate([enc.encode([t]) for t in texts])
    np.testing.assert_allclose(all_at_once, one_by_one, atol=1e-5)
    # lengths 3..121 tokens -> widths 16, 24, 32, 48, 64, 96, 128 at most; 17 texts in batches of 4
    # (sorted by length: 4 full batches and 1 single row) and 17 single rows
    lengths = sorted(len(ids) for ids in enc.tokenize(texts))
    width = lambda n: min(w for w in (16, 24, 32, 48, 64, 96, 128) if w >= n)  # noqa: E731
    shapes = {(1, width(n)) for n in lengths}
    shapes |= {(min(4, len(lengths[s:s + 4])) if len(lengths[s:s + 4]) != 3 else 4, width(max(lengths[s:s + 4])))
               for s in range(0, len(lengths), 4)}
    assert enc.num_compilations == len(shapes)
    assert [padded_rows(n, 32) for n in (1, 2, 3, 5, 32, 40)] == [1, 2, 4, 8, 32, 32]
    assert [padded_length(n, 128) for n in (1, 16, 17, 24, 25, 33, 49, 97, 100, 300)] == \
        [16, 16, 24, 24, 32, 48, 64, 128, 128, 128]


def test_weight_table_round_trips_and_rejects_unknown_tensors(tiny_bert_dir):
    from safetensors.numpy import load_file

    tensors = load_file(f"{tiny_bert_dir}/model.safetensors")
    ours = hf_to_flax(tensors, BERT_RULES, ignore=BERT_IGNORE)
    back = flax_to_hf(ours, BERT_RULES)
    kept = {k: v for k, v in tensors.items() if not k.startswith("pooler.") and "position_ids" not in k}
    assert set(back) == set(kept)
    for k in kept:
        np.testing.assert_array_equal(back[k], kept[k])
    with pytest.raises(ValueError, match="match no row"):
        hf_to_flax({**tensors, "encoder.layer.0.crossattention.x.weight": tensors["embeddings.LayerNorm.weight"]},
                   BERT_RULES, ignore=BERT_IGNORE)


def test_bad_encoder_inputs_are_clear(tmp_path, tiny_bert_dir):
    with pytest.raises(FileNotFoundError, match="tokenizer.json not found"):
        Encoder.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="prefixes must be one of"):
        Encoder.from_pretrained(tiny_bert_dir, prefixes="e6")


def test_warm_up_compiles_every_bucket_so_requests_compile_nothing(tiny_bert_dir):
    import jax

    enc = Encoder.from_pretrained(tiny_bert_dir, max_length=128, batch_size=4)
    # rows 1, 2, 4 (3 pads to 4) x widths 16, 24, 32, 48 (texts of at most 48 tokens)
    assert enc.warm_up(48) == 12 and enc.num_compilations == 12
    compiles = []

    def listen(event, secs, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(secs)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for width in (16, 24, 32, 48):
            text = ("word " * (width - 2)).strip()  # [CLS] + width-2 words + [SEP]
            assert len(enc.tokenize([text])[0]) == width
            for rows in (1, 2, 3, 4):
                enc.encode(["word"] * (rows - 1) + [text])
        assert compiles == [] and enc.num_compilations == 12
        enc.encode([("word " * 47).strip()])  # 49 tokens -> width 64: not warmed, so it compiles
        assert len(compiles) >= 1 and enc.num_compilations == 13
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        enc.warm_up(0)
