"""The decoder and everything about its weights. Submodules (import the one you need; importing
this package imports none of them):

    config          ModelConfig and the presets
    transformer     the Flax NNX decoder and `few_row_view` (training and cached forward)
    kv_cache        the KV cache: layout, sharding (rows x KV heads) and creation on the mesh
    speed           SpeedPolicy: the backend's fast paths, chosen once
    sharding        logical axis names -> mesh axes
    create          building a model on a mesh (random init, from host arrays)
    weight_map      the table-driven HF/GGUF <-> Flax name map
    weight_tables   the decoder's rows of that table
    checkpoint      loading and saving HF safetensors and GGUF checkpoints
    tokenizer       the tokenizer and chat template (tokenizer.json or GGUF)
    gguf_tokenizer  a `tokenizers.Tokenizer` from a GGUF file's metadata
"""
__all__ = ["checkpoint", "config", "create", "gguf_tokenizer", "kv_cache", "sharding", "speed", "tokenizer",
           "transformer", "weight_map", "weight_tables"]
