"""The protocol module (METHOD §1): prompt and corrective text checked against
literal strings; action, answer and search parsing; observation stripping; format check.
The observation bytes are pinned in tests/conformance/test_protocol_bytes.py."""
from types import SimpleNamespace

import pytest

from searche1_jax.rollout import protocol as P
from searche1_jax.rollout.protocol import count_searches, extract_answer, is_valid_format, search_queries


def test_raw_prompt_is_instruction_then_question_line_with_question_mark():
    p = P.build_prompt("who wrote hamlet", chat_template=None)
    assert p.endswith("Question: who wrote hamlet?\n")
    assert p == P.INSTRUCTION + "Question: who wrote hamlet?\n"
    assert P.build_prompt("Who wrote Hamlet?", chat_template=None).endswith("Question: Who wrote Hamlet?\n")


def test_instruction_names_every_tag_exactly():
    for tag in ("<think>", "</think>", "<search> query </search>", "<information>",
                "</information>", "<answer>", "</answer>", "<answer> Beijing </answer>"):
        assert tag in P.INSTRUCTION, tag


def test_chat_prompt_wraps_the_content_in_one_user_turn():
    seen = []

    def template(messages):
        seen.append(messages)
        return "<|user|>" + messages[0]["content"] + "<|assistant|>"

    p = P.build_prompt("capital of France", chat_template=template)
    assert seen == [[{"role": "user", "content": P.INSTRUCTION + "Question: capital of France?\n"}]]
    assert p == "<|user|>" + seen[0][0]["content"] + "<|assistant|>"


def test_invalid_action_message_has_search_r1_structure():
    m = P.INVALID_ACTION_MESSAGE
    assert m.startswith("\nMy previous action is invalid.") and m.endswith("Let me try again.\n")
    for tag in ("<search>", "</search>", "<answer>", "</answer>"):
        assert tag in m


@pytest.mark.parametrize("text,want", [
    ("<think>x</think><search> capital of France </search>", "capital of France"),
    ("<search>a</search> more <search>\n b c\t</search>", "b c"),
    ("<search> a <search> b </search>", "b"),
    ("<search></search>", ""),
    ("<search>   </search>", ""),
    ("<search> unclosed", None),
    ("no tags at all", None),
    ("</search> closed only", None),
    ("<search>a</search><search> unclosed", "a"),
    ("<answer> x </answer>", None),
    ("<search>q</search>\n\n", "q"),
    ("x<search>glued</search>.", "glued"),
])
def test_parse_search_query_takes_last_complete_pair(text, want):
    assert P.parse_search_query(text) == want


@pytest.mark.parametrize("text,ans", [
    ("<answer> Beijing </answer>", "Beijing"),
    ("<answer>x</answer> then <answer> y </answer>", "y"),             # last span wins
    ("no tag at all", None),
    ("<answer> unclosed", None),
    ("<answer>a</answer><answer>b", "a"),                              # trailing unclosed ignored
    ("<answer><answer>inner</answer></answer>", "inner"),             # nested: innermost span
    ("<answer></answer>", ""),                                         # empty answer
    ("<answer>\nmulti\nline\n</answer>", "multi\nline"),
    ("</answer> stray <answer>ok</answer>", "ok"),
    ("<ANSWER>upper</ANSWER>", None),                                  # tags are case-sensitive
])
def test_extract_answer_table(text, ans):
    assert extract_answer(text) == ans


def test_search_count_and_queries():
    text = ("<think>hm</think><search> who wrote x </search><information>Doc 1</information>"
            "<search>y</search><information>..</information><search>unclosed")
    assert count_searches(text) == 2
    assert search_queries(text) == ["who wrote x", "y"]
    assert count_searches("no searches") == 0


@pytest.mark.parametrize("text,valid", [
    ("<think>a</think>\n<answer>b</answer>", True),
    ("<answer>b</answer>", True),
    ("<think>a</think><search>q</search>\n\n<information>d</information>\n\n<think>b</think>"
     "<answer>c</answer>", True),
    ("<think>a</think><search>q</search><answer>c</answer>", False),         # search w/o info
    ("<think>a</think><information>d</information><answer>c</answer>", False),  # info w/o search
    ("<think>a</think>", False),                                             # no answer
    ("<answer>a</answer><think>b</think>", False),                           # answer not last
    ("<answer>a</answer><answer>b</answer>", False),                         # two answers
    ("text outside <answer>a</answer>", False),
    ("<think>a<search>q</search></think><answer>b</answer>", False),         # nested
    ("<think>a</search><answer>b</answer>", False),                          # mismatched
    ("<think>a</think><answer>b", False),                                    # unclosed
    ("", False),
])
def test_is_valid_format(text, valid):
    assert is_valid_format(text) is valid


@pytest.mark.parametrize("text,want", [
    ("<think>x</think><search> capital of France </search>", (P.SEARCH, "capital of France")),
    ("<answer> Paris </answer>", (P.ANSWER, "Paris")),
    ("<answer> x <search> q </search>", (P.SEARCH, "q")),            # the answer span is unclosed
    ("<search> q <answer> x </answer>", (P.ANSWER, "x")),            # the search span is unclosed
    ("<search>a</search> then <answer>b</answer>", (P.SEARCH, "a")),  # first complete pair
    ("<answer>b</answer> then <search>a</search>", (P.ANSWER, "b")),
    ("<search> a <search> b </search>", (P.SEARCH, "a <search> b")),  # Search-R1: first opener, non-greedy
    ("<search>   </search>", (P.SEARCH, "")),
    ("</search> closed only", None),                                  # a bare closing tag: no action
    ("</answer>", None),
    ("I do not know.", None),
    ("x<search>glued</search>.", (P.SEARCH, "glued")),
])
def test_parse_action_takes_the_first_complete_pair(text, want):
    got = P.parse_action(text)
    assert (None if got is None else (got.kind, got.content)) == want


def test_the_corrective_message_is_no_action_of_its_own_but_names_a_search():
    # why trajectories keep their queries in a record: re-parsing a text that holds the
    # corrective message finds a "search" for "and"
    assert search_queries(P.INVALID_ACTION_MESSAGE) == ["and"]
    assert extract_answer(P.INVALID_ACTION_MESSAGE) == "and"


def test_strip_information_drops_every_observation_block():
    docs = [SimpleNamespace(contents='"Jaws"\ndirected by Spielberg')]
    text = "<search> q </search>" + P.format_observation(docs) + "<answer> x </answer>"
    assert P.strip_information(text) == "<search> q </search>\n<answer> x </answer>"
    assert P.strip_information("  no blocks here \n") == "no blocks here"
    two = "a" + P.format_observation(docs) + "b" + P.format_observation([]) + "c"
    assert P.strip_information(two) == "a\nb\nc"


def test_parse_observation_reads_back_what_format_observation_wrote():
    docs = [SimpleNamespace(contents='"Jaws (film)"\nJaws is a 1975 film.\nIt was a hit.'),
            SimpleNamespace(contents="Foo (bar\ntext (x) y"), SimpleNamespace(contents="Empty\n")]
    obs = P.format_observation(docs)
    assert P.parse_observation(obs) == [('"Jaws (film)"', "Jaws is a 1975 film.\nIt was a hit."),
                                        ("Foo (bar", "text (x) y"), ("Empty", "")]
    assert P.parse_observation(P.format_observation([])) == []
    assert P.parse_observation("no block here") is None
    # cut by config.rollout.max_obs_tokens: the passages up to the cut, the cut title whole
    cut = obs[:obs.index("Doc 2") + len("Doc 2(Title: Fo")]
    assert P.parse_observation(cut) == [('"Jaws (film)"', "Jaws is a 1975 film.\nIt was a hit."), ("Fo", "")]
