"""QA examples and their readers: jsonl rows (../shared/data) and Search-R1 parquet rows.

    examples = read_jsonl("../shared/data/qa/nq.dev.jsonl")     # list[QAExample]
    examples = read_parquet("nq_search/test.parquet")            # Search-R1 nq_search.py output
    examples = read_examples(path)                               # picks the reader by extension

jsonl rows are `{"id", "question", "golden_answers", "data_source"}` (multi-hop rows may add
`"contexts": [{"title", "text"}, ...]`). Search-R1 parquet rows (scripts/data_process/
nq_search.py, qa_search_*_merge.py) are `{"data_source", "prompt": [{"role", "content"}],
"reward_model": {"ground_truth": {"target": [...]}}, "extra_info": {"split", "index"}}`; the
question is the text after the last `Question: ` of the prompt (Search-R1 writes
`... Question: {question}\n`), unless the row also carries an explicit `question` column.
Every malformed row raises `ValueError("path:LINE: ...")` (LINE is 1-based; for parquet, the
row number).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Iterator, Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class QAExample:
    """One question. `golden_answers` are the accepted answers (EM against any of them);
    `contexts` (multi-hop sets only) are `((title, text), ...)` gold + distractor paragraphs."""
    id: str
    question: str
    golden_answers: tuple[str, ...]
    data_source: str
    contexts: tuple[tuple[str, str], ...] | None = None

    def to_json(self, with_contexts: bool = True) -> dict:
        """The jsonl row this example was read from (the inverse of `example_from_row`)."""
        row = {"id": self.id, "question": self.question, "golden_answers": list(self.golden_answers),
               "data_source": self.data_source}
        if with_contexts and self.contexts is not None:
            row["contexts"] = [{"title": t, "text": x} for t, x in self.contexts]
        return row


def _str_list(value: Any, what: str, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if hasattr(value, "tolist"):  # numpy arrays from parquet
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where}: '{what}' must be a non-empty list of strings, got {value!r:.80}")
    out = []
    for a in value:
        if not isinstance(a, str):
            raise ValueError(f"{where}: '{what}' must hold strings, got {a!r:.80}")
        out.append(a)
    return tuple(out)


def example_from_row(row: Any, where: str, default_source: str = "") -> QAExample:
    """A `QAExample` from one jsonl row (a dict); `where` ("path:LINE") prefixes every error."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in ("question", "golden_answers"):
        if key not in row:
            raise ValueError(f"{where}: missing '{key}' (a QA row needs 'id', 'question', "
                             f"'golden_answers', 'data_source'; got keys {sorted(row)})")
    question = row["question"]
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: 'question' must be a non-empty string, got {question!r:.80}")
    golds = _str_list(row["golden_answers"], "golden_answers", where)
    contexts = None
    if row.get("contexts") is not None:
        try:
            contexts = tuple((str(c["title"]), str(c["text"])) for c in row["contexts"])
        except (TypeError, KeyError):
            raise ValueError(f"{where}: 'contexts' must be a list of {{'title', 'text'}} objects") from None
    source = row.get("data_source") or default_source
    ex_id = row.get("id")
    if ex_id is None:
        raise ValueError(f"{where}: missing 'id'")
    return QAExample(str(ex_id), question, golds, str(source), contexts)


def iter_jsonl(path: str | os.PathLike, default_source: str = "") -> Iterator[QAExample]:
    """Stream the examples of a jsonl file; blank lines are skipped; ids must be unique."""
    path = os.fspath(path)
    seen: dict[str, int] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                snippet = raw[:60].decode("utf-8", "replace").rstrip()
                raise ValueError(f"{where}: not valid JSON ({getattr(e, 'msg', e)}): {snippet!r}") from None
            ex = example_from_row(row, where, default_source)
            if ex.id in seen:
                raise ValueError(f"{where}: duplicate id {ex.id!r} (first at line {seen[ex.id]})")
            seen[ex.id] = lineno
            yield ex


def read_jsonl(path: str | os.PathLike, default_source: str = "") -> list[QAExample]:
    return list(iter_jsonl(path, default_source))


def write_jsonl(examples: Iterable[QAExample], path: str | os.PathLike, with_contexts: bool = True) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(ex.to_json(with_contexts), ensure_ascii=False) + "\n")


# ---- Search-R1 parquet ----

QUESTION_MARKER = "Question:"


def question_from_prompt(prompt: Any, where: str) -> str:
    """The question embedded in a Search-R1 prompt: the text after the last `Question:` of the
    last user turn, stripped (nq_search.py writes `... Question: {question}\\n`)."""
    if isinstance(prompt, str):
        content = prompt
    else:
        if hasattr(prompt, "tolist"):
            prompt = prompt.tolist()
        turns = [t for t in (prompt or []) if isinstance(t, Mapping) and t.get("role") == "user"]
        if not turns:
            raise ValueError(f"{where}: 'prompt' must be a chat list with a user turn, got {prompt!r:.80}")
        content = turns[-1].get("content") or ""
    head, marker, tail = content.rpartition(QUESTION_MARKER)
    question = tail.strip()
    if not marker or not question:
        raise ValueError(f"{where}: cannot find 'Question: ...' in the prompt {content[-80:]!r}; "
                         f"add an explicit 'question' column")
    return question


def example_from_search_r1_row(row: Mapping, where: str) -> QAExample:
    """A `QAExample` from one Search-R1 parquet row (a dict of its columns)."""
    source = row.get("data_source")
    if not source:
        raise ValueError(f"{where}: missing 'data_source'")
    if isinstance(row.get("question"), str) and row["question"].strip():
        question = row["question"].strip()
    elif row.get("prompt") is not None:
        question = question_from_prompt(row["prompt"], where)
    else:
        raise ValueError(f"{where}: missing 'question' (needs a 'question' column or a Search-R1 'prompt')")
    try:
        target = row["reward_model"]["ground_truth"]["target"]
    except (KeyError, TypeError):
        target = row.get("golden_answers")
        if target is None:
            raise ValueError(f"{where}: missing 'golden_answers' (reward_model.ground_truth.target)") from None
    golds = _str_list(target, "reward_model.ground_truth.target", where)
    # ids follow ../shared/data: "<data_source>-<source id>" (FlashRAG ids like "test_0" repeat
    # across the sources of Search-R1's merged test.parquet).
    extra = row.get("extra_info") or {}
    if row.get("id") is not None:
        ex_id = str(row["id"])
    elif extra.get("index") is not None:
        ex_id = f"{extra.get('split', 'unknown')}_{extra['index']}"
    else:
        raise ValueError(f"{where}: needs an 'id' column or extra_info.index")
    if not ex_id.startswith(f"{source}-"):
        ex_id = f"{source}-{ex_id}"
    return QAExample(ex_id, question, golds, str(source))


def read_parquet(path: str | os.PathLike) -> list[QAExample]:
    """Examples of a Search-R1 parquet file (needs pyarrow). Row numbers in errors are 1-based."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading parquet needs pyarrow: pip install pyarrow") from None
    path = os.fspath(path)
    rows = pq.read_table(path).to_pylist()
    out, seen = [], {}
    for i, row in enumerate(rows, 1):
        ex = example_from_search_r1_row(row, f"{path}:{i}")
        if ex.id in seen:
            raise ValueError(f"{path}:{i}: duplicate id {ex.id!r} (first at row {seen[ex.id]})")
        seen[ex.id] = i
        out.append(ex)
    return out


def read_examples(path: str | os.PathLike) -> list[QAExample]:
    """Examples of a `.jsonl` or `.parquet` file."""
    p = os.fspath(path)
    if p.endswith(".parquet"):
        return read_parquet(p)
    if p.endswith(".jsonl") or p.endswith(".json"):
        return read_jsonl(p)
    raise ValueError(f"{p}: unknown QA file type; expected .jsonl or .parquet")


def example_locations(path: str | os.PathLike) -> dict[str, str]:
    """{example id: "path:LINE"} of a file `read_examples` reads (LINE 1-based; for parquet, the
    row). For error messages about examples already read (the readers keep no line numbers)."""
    p = os.fspath(path)
    if p.endswith(".parquet"):
        return {ex.id: f"{p}:{i}" for i, ex in enumerate(read_parquet(p), 1)}
    out = {}
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                row = json.loads(raw)
                if isinstance(row, dict) and row.get("id") is not None:
                    out.setdefault(str(row["id"]), f"{p}:{lineno}")
    return out


def questions(examples: Sequence[QAExample]) -> list[str]:
    return [ex.question for ex in examples]
