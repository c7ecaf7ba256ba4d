"""The Search-R1 agent protocol (METHOD §1): the one place that knows its tags.

Writing: the prompt, the observation block and the corrective (invalid-action) message.
Reading: the action of one turn, the answer of a text, search spans, the passages of an
observation block, the removal of observation blocks, and the format check. The instruction is
our own wording; the tags are exact. Observations and the corrective message are context tokens
appended by the agent (masked out of every loss). Nothing outside this module writes a regex or
a literal for a tag.

Readers of a *trajectory* take its queries from the agent's record (`Trajectory.queries`),
never by re-parsing its text: the corrective message itself contains `<search> and </search>`.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
INFO_OPEN, INFO_CLOSE = "<information>", "</information>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
SEARCH, ANSWER = "search", "answer"  # action kinds (the tag names)
# "auto": the tokenizer's chat template whenever it has one (METHOD §1); "never": raw text
CHAT_TEMPLATE_MODES = ("auto", "never")
# which text the answer is read from (METHOD §1): "policy" (ours): the last answer pair of the
# text the policy sampled; "search_r1" [compat]: Search-R1's `qa_em.py` over prompt + response
REWARD_TEXT_MODES = ("policy", "search_r1")


def _pair(name: str) -> re.Pattern:
    # A complete span whose content holds no further opener of the same tag: for nested
    # `<answer><answer>x</answer></answer>` (or `<search> a <search> b </search>`) this picks the
    # innermost span ("x", "b").
    return re.compile(rf"<{name}>((?:(?!<{name}>).)*?)</{name}>", re.DOTALL)


_ANSWER = _pair(ANSWER)
_SEARCH = _pair(SEARCH)
_TAG = re.compile(r"<(/?)(think|search|information|answer)>")
# a turn's action (Search-R1 generation.py `postprocess_predictions`): the first opener whose own
# closing tag follows, content non-greedy, nested openers kept in the content
_ACTION = re.compile(rf"<({SEARCH}|{ANSWER})>(.*?)</\1>", re.DOTALL)
_ANSWER_SEARCH_R1 = re.compile(rf"{ANSWER_OPEN}(.*?){ANSWER_CLOSE}", re.DOTALL)
_INFORMATION = re.compile(rf"\s*{INFO_OPEN}.*?{INFO_CLOSE}\s*", re.DOTALL)

INSTRUCTION = (
    "Answer the question below. Whenever you receive new information, first reason about it "
    "inside <think> and </think>. If you find that you are missing some knowledge, you can "
    "query a search engine by writing <search> query </search>; the top results will be "
    "returned to you between <information> and </information>. You may search as many times "
    "as you need. Once no further knowledge is needed, give the final answer inside <answer> "
    "and </answer>, with no explanation, for example <answer> Beijing </answer>. "
)

# Search-R1 (search_r1/llm_agent/generation.py) appends a first-person note that the action was
# invalid, naming both tag pairs, framed by one newline on each side; same structure here.
INVALID_ACTION_MESSAGE = (
    "\nMy previous action is invalid. To search, I should write the query between <search> "
    "and </search>. To give the final answer, I should write it between <answer> and "
    "</answer>. Let me try again.\n"
)


def question_line(question: str) -> str:
    """`Question: {question}\\n`, with `?` appended when the question lacks it."""
    q = question.strip()
    if not q.endswith("?"):
        q += "?"
    return f"Question: {q}\n"


def build_prompt(question: str, *, chat_template: Callable[[list[dict]], str] | None) -> str:
    """The whole prompt text for one question.

    chat_template: for instruct models, a function rendering `[{"role": "user", "content": c}]`
    with the tokenizer's chat template and the generation prompt; None for base models, which
    get the raw text (instruction + question line).
    """
    content = INSTRUCTION + question_line(question)
    if chat_template is None:
        return content
    return chat_template([{"role": "user", "content": content}])


def format_observation(passages: Sequence) -> str:
    """`\\n\\n<information>{docs}</information>\\n\\n`, docs = the concatenation of
    `Doc {i}(Title: {title}) {text}\\n` for i = 1..k, the whole string stripped (METHOD §1).

    passages: retrieved passages in rank order, each with `.contents` (the corpus field,
    `"Title"\\ntext`): `title` is its first line as stored, quotes kept, `text` the rest
    (Search-R1's `_passages2string`, then `.strip()` in `generation.py`).
    """
    docs = ""
    for i, p in enumerate(passages, 1):
        title, _, text = p.contents.partition("\n")
        docs += f"Doc {i}(Title: {title}) {text}\n"
    return f"\n\n{INFO_OPEN}{docs.strip()}{INFO_CLOSE}\n\n"


_DOC = re.compile(r"(?:^|\n)Doc \d+\(Title: ")


def parse_observation(text: str) -> list[tuple[str, str]] | None:
    """The passages of the observation block in `text` (as `format_observation` writes it), in
    rank order: [(title, passage text)]; None when `text` holds no `<information>` opener.

    A block cut short (config.rollout.max_obs_tokens) gives the passages up to the cut. A title
    ends at the parenthesis that closes `(Title: `, so `Jaws (film)` stays whole; a title whose
    parentheses do not balance ends at its line's first `) `.
    """
    start = text.find(INFO_OPEN)
    if start < 0:
        return None
    body = text[start + len(INFO_OPEN):]
    end = body.find(INFO_CLOSE)
    body = body if end < 0 else body[:end]
    heads = list(_DOC.finditer(body))
    out = []
    for m, nxt in zip(heads, heads[1:] + [None]):
        doc = body[m.end():nxt.start() if nxt is not None else len(body)]
        close = _title_end(doc)
        if close < 0:  # cut inside the title
            out.append((doc.strip(), ""))
        else:
            rest = doc[close + 1:]
            out.append((doc[:close], (rest[1:] if rest.startswith(" ") else rest).rstrip("\n")))
    return out


def _title_end(doc: str) -> int:
    """Index of the `)` that closes `Doc i(Title: ` in a passage (-1 when the line is cut)."""
    line = doc.split("\n", 1)[0]
    depth = 1
    for i, ch in enumerate(line):
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            return i
    return line.find(") ")


def cut_turn(turn_text: str) -> str:
    """A turn's text as Search-R1 keeps it: cut right after its first `</search>` or `</answer>`
    (anything glued after that tag, in the same token or not, is dropped); unchanged when it has
    neither (`generation.py` `_postprocess_responses`)."""
    ends = [i + len(tag) for tag in (SEARCH_CLOSE, ANSWER_CLOSE) if (i := turn_text.find(tag)) >= 0]
    return turn_text[:min(ends)] if ends else turn_text


@dataclasses.dataclass(frozen=True)
class Action:
    """The action of one turn: kind SEARCH or ANSWER, content stripped (may be "")."""
    kind: str
    content: str


def parse_action(turn_text: str) -> Action | None:
    """The action of one turn: its first complete `<search>…</search>` or `<answer>…</answer>`
    pair, whichever starts first; None when there is none (a bare closing tag is no action).

    As Search-R1's `postprocess_predictions` (`<(search|answer)>(.*?)</\\1>`, first match):
    `<search> a <search> b </search>` searches "a <search> b"; `<answer> x <search> q </search>`
    is a search for "q" (the answer span is unclosed).
    """
    m = _ACTION.search(turn_text)
    return None if m is None else Action(m.group(1), m.group(2).strip())


def parse_search_query(text: str) -> str | None:
    """The query of the last complete `<search>…</search>` in `text`, stripped.

    Innermost on nesting (`<search> a <search> b </search>` gives `b`). Returns None when there
    is no complete pair, `""` for an empty one.
    """
    qs = search_queries(text)
    return qs[-1] if qs else None


def search_queries(text: str) -> list[str]:
    """Stripped contents of the complete `<search>…</search>` spans of a text, in order.

    For text the policy wrote (e.g. scoring a foreign model's output); a trajectory's own
    queries are `Trajectory.queries`."""
    return [m.group(1).strip() for m in _SEARCH.finditer(text)]


def count_searches(text: str) -> int:
    """Number of complete `<search>…</search>` spans of a text."""
    return len(search_queries(text))


def extract_answer(text: str) -> str | None:
    """Content (stripped) of the last complete `<answer>…</answer>` span; None if there is none.

    An unclosed `<answer>` is ignored, so `"<answer> a </answer><answer> b"` gives "a"."""
    last = None
    for m in _ANSWER.finditer(text):
        last = m
    return None if last is None else last.group(1).strip()


def extract_answer_search_r1(text: str) -> str | None:
    """Search-R1's answer (`verl/utils/reward_score/qa_em.py` `extract_solution`), for
    `reward_text = "search_r1"`: over the decoded prompt + response, the stripped content of the
    last non-greedy `<answer>(.*?)</answer>` match when there are at least two, else None.

    The prompt's own instruction holds answer pairs (ours and Search-R1's: `<answer> and
    </answer>`, `<answer> Beijing </answer>`), so a trajectory that never answers reads the
    prompt's example, and a corrective message's `<answer> and </answer>` counts. No innermost
    rule: `<answer><answer>x</answer>` reads "<answer>x"."""
    matches = list(_ANSWER_SEARCH_R1.finditer(text))
    return matches[-1].group(1).strip() if len(matches) >= 2 else None


def strip_information(text: str) -> str:
    """`text` with every `<information>…</information>` block (and the whitespace around it)
    replaced by one newline, stripped: a response without its retrieved documents."""
    return _INFORMATION.sub("\n", text).strip()


def is_valid_format(text: str) -> bool:
    """Whether a response follows the protocol of METHOD §1.

    Valid: only whitespace outside tags; blocks `<think>`, `<search>`, `<information>`,
    `<answer>` are closed and never nested; every `<search>` block is followed directly by
    an `<information>` block and every `<information>` block follows a `<search>`; there is
    exactly one `<answer>` block and it is the last block.
    """
    blocks = []
    pos = 0
    open_tag = None
    for m in _TAG.finditer(text):
        closing, name = m.group(1) == "/", m.group(2)
        if open_tag is None:
            if closing or text[pos:m.start()].strip():
                return False
            open_tag = name
        else:
            if not closing or name != open_tag:
                return False  # nested or mismatched tag
            blocks.append(name)
            open_tag = None
        pos = m.end()
    if open_tag is not None or text[pos:].strip():
        return False
    if not blocks or blocks[-1] != "answer" or blocks.count("answer") != 1:
        return False
    for i, b in enumerate(blocks):
        if b == "search" and (i + 1 >= len(blocks) or blocks[i + 1] != "information"):
            return False
        if b == "information" and (i == 0 or blocks[i - 1] != "search"):
            return False
    return True
