"""Build an index directory from a wiki-18 jsonl corpus.

    python -m searche1_jax.retrieval.build --corpus wiki.jsonl --encoder bm25 --index bm25 --out idx/bm25
    python -m searche1_jax.retrieval.build --corpus wiki.jsonl --encoder /models/e5-base-v2 \
        --index scann --out idx/e5_scann          # e5 -> "query: " / "passage: " (--prefixes auto)
    # reuse Search-R1's e5_Flat.index vectors (no re-encoding; the encoder is still needed for queries):
    python -m searche1_jax.retrieval.build --corpus wiki-18.jsonl --encoder /models/e5-base-v2 \
        --faiss-index e5_Flat.index --index scann --out idx/e5_scann
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from searche1_jax.retrieval.prefixes import PREFIX_CHOICES


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, help="Search-R1 wiki-18 jsonl file")
    ap.add_argument("--encoder", required=True, help="HF BERT directory (tokenizer.json + safetensors), or 'bm25'")
    ap.add_argument("--index", required=True, choices=("scann", "exact", "bm25"))
    ap.add_argument("--out", required=True, help="output index directory")
    ap.add_argument("--prefixes", default="auto",
                    help="query/passage prefixes: " + PREFIX_CHOICES + "; auto gives e5-family checkpoints "
                         "'query: ' / 'passage: ' (their training), others none")
    ap.add_argument("--max-length", type=int, default=None, help="token limit (default: model's, or 256)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--faiss-index", default=None, help="import vectors from a faiss IndexFlatIP file")
    ap.add_argument("--shards", default=None, help="directory for resumable embedding shards")
    ap.add_argument("--shard-size", type=int, default=8192,
                    help="passages a shard: peak memory holds one shard's texts and vectors (a scann build "
                         "trains on a sample of the shards, then adds them one at a time)")
    args = ap.parse_args(argv)

    if (args.encoder == "bm25") != (args.index == "bm25"):
        ap.error("--encoder bm25 goes with --index bm25 (and only with it)")
    from searche1_jax.retrieval.corpus import Corpus
    from searche1_jax.retrieval.store import CORPUS_OFFSETS, build_index

    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    # offsets go into the index directory, never beside a (possibly shared) corpus file
    corpus = Corpus(args.corpus, offsets_file=os.path.join(args.out, CORPUS_OFFSETS))
    encoder = embeddings = None
    if args.index != "bm25":
        from searche1_jax.retrieval.encoder import Encoder
        encoder = Encoder.from_pretrained(args.encoder, prefixes=args.prefixes, max_length=args.max_length,
                                          batch_size=args.batch_size)
        print(f"encoder prefixes: query {encoder.query_prefix!r}, passage {encoder.passage_prefix!r} "
              f"(--prefixes {args.prefixes})", file=sys.stderr)
        if args.faiss_index:
            from searche1_jax.retrieval.faiss_flat import read_faiss_flat
            embeddings, metric = read_faiss_flat(args.faiss_index)
            if metric != "inner_product":
                ap.error(f"{args.faiss_index} is an L2 index; Search-R1 and this package use inner product")
            if embeddings.shape[1] != encoder.dim:
                ap.error(f"{args.faiss_index} holds {embeddings.shape[1]}-d vectors but encoder "
                         f"{args.encoder} makes {encoder.dim}-d ones")
    index = build_index(args.out, kind=args.index, corpus=corpus, encoder=encoder,
                        encoder_path=None if args.index == "bm25" else args.encoder,
                        embeddings=embeddings, shards_dir=args.shards, shard_size=args.shard_size)
    print(f"built {index.kind} index of {index.num_passages} passages in {args.out} "
          f"({time.time() - t0:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
