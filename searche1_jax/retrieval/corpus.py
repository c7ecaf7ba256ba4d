"""Search-R1 wiki-18 corpus: jsonl lines `{"id": "0", "contents": "\"Title\"\ntext"}`.

`Corpus` keeps only a `[N, 2]` int64 array of (start, end) byte offsets per passage, saved beside
the file as `<file>.offsets.npy`, and reads a passage with one `os.pread` when asked. 21M
passages cost 336 MB of offsets instead of 21M Python strings; reads are thread safe.

    corpus = Corpus("wiki-18.jsonl")     # scans once (validating every line), then reuses .npy
    pid, title, text = corpus.passage(17)
    for i, (pid, title, text) in iter_passages("wiki-18.jsonl"): ...   # streaming, no offsets
"""
from __future__ import annotations

import json
import os
from typing import Iterator

import numpy as np


class CorpusFormatError(ValueError):
    """A corpus line that is not a Search-R1 passage; the message names file:line."""


def split_contents(contents: str) -> tuple[str, str]:
    """`"\"Title\"\ntext"` -> ("Title", "text"). Inverse of `join_contents` for quoted titles.

    Search-R1 takes the first line as the title (with its quotes) and the rest as text; we strip
    one pair of surrounding quotes so `Passage.title` is the bare title.
    """
    title, _, text = contents.partition("\n")
    if len(title) >= 2 and title.startswith('"') and title.endswith('"'):
        title = title[1:-1]
    return title, text


def join_contents(title: str, text: str) -> str:
    """The wiki-18 `contents` field for a passage: `"Title"` newline text."""
    return f'"{title}"\n{text}'


def _parse_line(raw: bytes, path: str, lineno: int) -> tuple[str, str]:
    """(id, contents) of one jsonl line, or CorpusFormatError naming `path:lineno`."""
    try:
        row = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        snippet = raw[:80].decode("utf-8", "replace").rstrip()
        raise CorpusFormatError(f"{path}:{lineno}: not valid JSON ({e.msg if hasattr(e, 'msg') else e}): "
                                f"{snippet!r}") from None
    if not isinstance(row, dict) or "contents" not in row or "id" not in row:
        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise CorpusFormatError(f"{path}:{lineno}: a wiki-18 line needs keys 'id' and 'contents', got {keys}")
    if not isinstance(row["contents"], str):
        raise CorpusFormatError(f"{path}:{lineno}: 'contents' must be a string")
    return str(row["id"]), row["contents"]


def iter_passages(path: str) -> Iterator[tuple[int, tuple[str, str, str]]]:
    """Stream `(row, (id, title, text))` over a jsonl corpus; blank lines are skipped."""
    with open(path, "rb") as f:
        row = 0
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            pid, contents = _parse_line(raw, path, lineno)
            yield row, (pid, *split_contents(contents))
            row += 1


def scan_offsets(path: str) -> np.ndarray:
    """`[N, 2]` int64 (start, end) byte ranges of the non-blank lines, each validated."""
    spans = []
    with open(path, "rb") as f:
        pos = 0
        for lineno, raw in enumerate(f, start=1):
            end = pos + len(raw)
            if raw.strip():
                _parse_line(raw, path, lineno)
                spans.append((pos, end))
            pos = end
    return np.asarray(spans, dtype=np.int64).reshape(-1, 2)


def offsets_path(path: str) -> str:
    return path + ".offsets.npy"


class Corpus:
    """Random access to a jsonl corpus by row (0-based, blank lines not counted)."""

    def __init__(self, path: str, *, offsets_file: str | None = None):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"corpus file {path!r} not found (expected Search-R1 wiki-18 jsonl)")
        self.path = os.path.abspath(path)
        self.offsets_file = offsets_file or offsets_path(self.path)
        self.offsets = self._load_or_scan()
        self._fd = os.open(self.path, os.O_RDONLY)

    def _load_or_scan(self) -> np.ndarray:
        # Reuse the saved offsets only if they are newer than the corpus and cover it exactly.
        if (os.path.exists(self.offsets_file)
                and os.path.getmtime(self.offsets_file) >= os.path.getmtime(self.path)):
            offsets = np.load(self.offsets_file)
            if offsets.ndim == 2 and offsets.shape[1] == 2 and (
                    len(offsets) == 0 or offsets[-1, 1] <= os.path.getsize(self.path)):
                return offsets
        offsets = scan_offsets(self.path)
        try:
            tmp = self.offsets_file + ".tmp.npy"
            np.save(tmp, offsets)
            os.replace(tmp, self.offsets_file)
        except OSError:
            pass  # read-only location: keep the offsets in memory only
        return offsets

    def __len__(self) -> int:
        return len(self.offsets)

    def raw(self, row: int) -> bytes:
        if not 0 <= row < len(self.offsets):
            raise IndexError(f"passage row {row} out of range for a corpus of {len(self)} passages")
        start, end = self.offsets[row]
        return os.pread(self._fd, int(end - start), int(start))

    def record(self, row: int) -> tuple[str, str]:
        """(id, contents) exactly as stored: the document Search-R1's server returns."""
        return _parse_line(self.raw(row), self.path, -1)

    def passage(self, row: int) -> tuple[str, str, str]:
        """(id, title, text) of a row."""
        pid, contents = self.record(row)
        return (pid, *split_contents(contents))

    def passages(self, rows) -> dict[int, tuple[str, str, str]]:
        """{row: (id, title, text)} for many rows at once: each distinct row read once and all of
        them parsed by one json.loads of a JSON array (one C call instead of one a row: a
        2,560-query burst at top-3 materialises 7,680 passages)."""
        uniq = sorted({int(r) for r in rows})
        if not uniq:
            return {}
        raws = [self.raw(r) for r in uniq]
        try:
            recs = json.loads(b"[" + b",".join(raws) + b"]")
        except (json.JSONDecodeError, UnicodeDecodeError):
            recs = None  # a bad line: find and name it below
        out = {}
        for i, r in enumerate(uniq):
            rec = recs[i] if recs is not None else None
            if not (isinstance(rec, dict) and isinstance(rec.get("contents"), str) and "id" in rec):
                pid, contents = _parse_line(raws[i], self.path, -1)  # raises naming the problem
            else:
                pid, contents = str(rec["id"]), rec["contents"]
            out[r] = (pid, *split_contents(contents))
        return out

    def texts(self, rows) -> list[str]:
        """The `contents` strings of rows: what Search-R1 encodes (title line, newline, text)."""
        return [self.record(int(r))[1] for r in rows]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
