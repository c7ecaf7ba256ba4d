#!/usr/bin/env python3
"""Regenerate searche1_jax/assets/demo/ from ../shared/data (deterministic: two runs give
byte-identical files). Stdlib only.

    python scripts/make_demo_data.py [--shared ../shared/data] [--out searche1_jax/assets/demo]
    python scripts/make_demo_data.py --train 900 --dev 200 --out /tmp/bigger   # benchmarks/learning.py

--train / --dev take more (or fewer) items by the same rule: the first 300 of a larger train
selection are the shipped 300, the first 50 of a larger dev selection the shipped 50.

Selection rule (also in assets/demo/SOURCES.md):
- train.jsonl: the first 300 items of train/multihop.train.jsonl in the order
  `sha256("demo|train|<id>")`, written sorted by id, `contexts` dropped.
- dev.jsonl: the first 50 items of train/multihop.val.jsonl in the order
  `sha256("demo|dev|<id>")`, written sorted by id, `contexts` dropped.
- corpus.jsonl: the lines of corpus/wiki_small.jsonl (copied byte for byte, ids kept, file
  order) that are either one of the 1,000 FlashRAG passages (ids 0-999, distractors) or a
  context paragraph (gold or distractor) of a selected train/dev item. A paragraph matches a
  corpus line by (title, text with all whitespace removed): the key wiki_small was deduplicated by.
- contexts.json: {item id: [[title, corpus id], ...]} for every selected item, in context order,
  so tests can check the shipped corpus without ../shared.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

N_TRAIN, N_DEV, N_FLASHRAG = 300, 50, 1000
HERE = os.path.dirname(os.path.abspath(__file__))


def passage_key(title: str, text: str) -> tuple[str, str]:
    return " ".join(title.split()), "".join(text.split())


def split_contents(contents: str) -> tuple[str, str]:
    title, _, text = contents.partition("\n")
    if len(title) >= 2 and title[0] == '"' and title[-1] == '"':
        title = title[1:-1]
    return title, text


def read_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def select(rows: list[dict], n: int, stage: str) -> list[dict]:
    order = sorted(rows, key=lambda r: (hashlib.sha256(f"demo|{stage}|{r['id']}".encode()).hexdigest(), r["id"]))
    return sorted(order[:n], key=lambda r: r["id"])


def qa_line(r: dict) -> str:
    keep = {k: r[k] for k in ("id", "question", "golden_answers", "data_source")}
    return json.dumps(keep, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.path.join(HERE, "..", "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(HERE, "..", "searche1_jax", "assets", "demo"))
    ap.add_argument("--train", type=int, default=N_TRAIN, help="training items (shipped: %(default)s)")
    ap.add_argument("--dev", type=int, default=N_DEV, help="dev items (shipped: %(default)s)")
    args = ap.parse_args(argv)
    train = select(read_rows(os.path.join(args.shared, "train", "multihop.train.jsonl")), args.train, "train")
    dev = select(read_rows(os.path.join(args.shared, "train", "multihop.val.jsonl")), args.dev, "dev")

    corpus_path = os.path.join(args.shared, "corpus", "wiki_small.jsonl")
    key_to_id: dict[tuple[str, str], str] = {}
    lines: list[tuple[str, bytes]] = []
    with open(corpus_path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            row = json.loads(raw)
            key_to_id.setdefault(passage_key(*split_contents(row["contents"])), row["id"])
            lines.append((row["id"], raw if raw.endswith(b"\n") else raw + b"\n"))

    needed: set[str] = {str(i) for i in range(N_FLASHRAG)}
    contexts: dict[str, list[list[str]]] = {}
    for r in train + dev:
        refs = []
        for c in r.get("contexts") or []:
            pid = key_to_id.get(passage_key(c["title"], c["text"]))
            if pid is None:
                print(f"error: context {c['title']!r} of {r['id']} is not in {corpus_path}", file=sys.stderr)
                return 1
            refs.append([c["title"], pid])
            needed.add(pid)
        contexts[r["id"]] = refs

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "train.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        f.writelines(qa_line(r) for r in train)
    with open(os.path.join(args.out, "dev.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        f.writelines(qa_line(r) for r in dev)
    with open(os.path.join(args.out, "corpus.jsonl"), "wb") as f:
        f.writelines(raw for pid, raw in lines if pid in needed)
    with open(os.path.join(args.out, "contexts.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(contexts, f, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        f.write("\n")
    n_ctx = len(needed) - N_FLASHRAG
    print(f"train {len(train)}, dev {len(dev)}, corpus {len(needed)} passages "
          f"({N_FLASHRAG} FlashRAG + {n_ctx} context paragraphs) -> {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
