import numpy as np
import pytest

from searche1_jax.rl.rewards import cover_exact_match, em_rewards, exact_match, f1_score, normalize_answer
from searche1_jax.rollout.protocol import extract_answer


@pytest.mark.parametrize("raw,norm", [
    ("The Beatles", "beatles"),
    ("  a   Tale of Two   Cities. ", "tale of two cities"),
    ("An apple, the pear!", "apple pear"),
    ("theory", "theory"),                      # 'the' inside a word stays
    ("Anna", "anna"),
    ("U.S.A.", "usa"),
    ("rock-n-roll", "rocknroll"),              # SQuAD drops punctuation without a space
    ("Café  Müller", "café müller"),           # unicode letters kept, lowercased
    ("“quoted”", "“quoted”"),                  # non-ASCII punctuation is not in string.punctuation
    ("THE", ""),
    ("", ""),
    ("a\tb\nthe c", "b c"),
])
def test_normalize_answer_table(raw, norm):
    assert normalize_answer(raw) == norm


@pytest.mark.parametrize("pred,golds,em,cover", [
    ("the Beatles", ["Beatles"], 1.0, 1.0),
    ("Beatles.", ["The Beatles", "Fab Four"], 1.0, 1.0),
    ("The Rolling Stones", ["Beatles"], 0.0, 0.0),
    ("John Lennon of the Beatles", ["Beatles"], 0.0, 1.0),
    (None, ["x"], 0.0, 0.0),
    ("", [""], 1.0, 1.0),
    ("", ["x"], 0.0, 0.0),
    ("x", [], 0.0, 0.0),
    ("Paris", "paris", 1.0, 1.0),                                      # a bare string is one gold
])
def test_exact_and_cover_match(pred, golds, em, cover):
    assert exact_match(pred, golds) == em
    assert cover_exact_match(pred, golds) == cover


def test_f1_against_hand_computed_values():
    # pred tokens [new, york, city], gold [new, york]: P=2/3, R=1, F1=0.8
    assert f1_score("New York City", ["new york"]) == pytest.approx(0.8)
    # max over golds
    assert f1_score("New York City", ["boston", "new york city"]) == pytest.approx(1.0)
    # repeated tokens count with multiplicity: pred [a1 a1 b], gold [a1 b b]: common {a1:1,b:1}
    assert f1_score("x x y", ["x y y"]) == pytest.approx(2 / 3)
    assert f1_score("the", ["a"]) == 0.0            # both normalise to nothing
    assert f1_score(None, ["x"]) == 0.0
    assert f1_score("abc", ["def"]) == 0.0


def test_em_rewards_uses_last_answer_only():
    texts = ["<answer>Paris</answer>", "<answer>Paris</answer> <answer>Lyon</answer>",
             "Paris", "<answer> the  PARIS! </answer>", "<answer>Lyon</answer><answer>Paris"]
    golds = [["paris"], ["Paris"], ["Paris"], ["Paris", "x"], ["Paris"]]
    r = em_rewards([extract_answer(t) for t in texts], golds)
    assert r.dtype == np.float32
    np.testing.assert_array_equal(r, [1, 0, 0, 1, 0])


def test_em_rewards_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="one gold list per text"):
        em_rewards(["a", "b"], [["a"]])
