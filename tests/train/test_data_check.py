"""Issue 23 item 1: a training question whose prompt exceeds config.rollout.max_prompt_tokens is
found when the data is loaded (file:line, length, limit), not at the step that draws it; by
config.data.on_invalid the run refuses it before the model is built, or skips it with a count."""
import json

import pytest

from searche1_jax.config import from_config_dict
from searche1_jax.data.qa import QAExample, read_examples
from searche1_jax.model.tokenizer import Tokenizer
from searche1_jax.model.checkpoint import resolve_checkpoint
from searche1_jax.rollout import protocol as P
from searche1_jax.train.data_check import InvalidDataError, checked_examples, long_prompts
from tests.train.test_bad_input import tiny_config

LONG = "which " + "very " * 5000 + "long question is this?"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load(resolve_checkpoint("smollm2"))


def oracle_length(tok, question):
    """Tokens of the chat-templated prompt, straight from the tokenizers backend."""
    text = tok.apply_chat_template([{"role": "user", "content": P.INSTRUCTION + P.question_line(question)}])
    return len(tok.backend.encode(text, add_special_tokens=False).ids)


def write(path, questions):
    rows = [{"id": f"q{i}", "question": q, "golden_answers": ["x"]} for i, q in enumerate(questions)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_a_prompt_exactly_at_the_limit_passes_and_one_token_over_is_found(tok):
    from searche1_jax.rollout.agent import prompt_renderer
    exs = [QAExample("a", "who wrote hamlet?", ("x",), ""), QAExample("b", LONG, ("x",), "")]
    n_short, n_long = oracle_length(tok, exs[0].question), oracle_length(tok, LONG)
    render = prompt_renderer(tok, "auto")
    assert long_prompts(exs, render, tok.encode_batch, n_long) == {}
    assert long_prompts(exs, render, tok.encode_batch, n_long - 1) == {1: n_long}
    assert long_prompts(exs, render, tok.encode_batch, n_short - 1) == {0: n_short, 1: n_long}


def test_a_too_long_question_is_refused_before_the_model_is_built_naming_file_line_length_limit(tmp_path, tok):
    from searche1_jax.train import setup
    path = tmp_path / "train.jsonl"
    write(path, ["who wrote hamlet?", "capital of france?", LONG])
    c = tiny_config()
    c.data.train = str(path)
    built = []
    orig = setup.create_model
    setup.create_model = lambda *a, **k: built.append(1) or orig(*a, **k)
    try:
        with pytest.raises(InvalidDataError) as e:
            setup.Experiment(c)
    finally:
        setup.create_model = orig
    assert not built
    msg = str(e.value)
    assert f"{path}:3: prompt of {oracle_length(tok, LONG)} tokens > config.rollout.max_prompt_tokens=4096" in msg
    assert "1 of 3 training questions" in msg and "config.data.on_invalid='skip'" in msg
    assert ":1:" not in msg and ":2:" not in msg


def test_skip_drops_the_long_questions_and_logs_their_count(tmp_path, tok, capsys):
    path = tmp_path / "train.jsonl"
    write(path, [LONG, "who wrote hamlet?", LONG + " again", "capital of france?"])
    c = tiny_config()
    c.data.train, c.data.on_invalid = str(path), "skip"
    kept = checked_examples(read_examples(path), str(path), tok, from_config_dict(c))
    assert [ex.id for ex in kept] == ["q1", "q3"]
    out = capsys.readouterr().out
    assert "skipped 2 of 4 training questions" in out and f"{path}:1:" in out and f"{path}:3:" in out


def test_a_cli_run_with_a_too_long_question_exits_with_one_line_naming_it(tmp_path):
    import subprocess
    import sys
    from tests.train.test_bad_input import ONE_DEVICE, ROOT
    path = tmp_path / "train.jsonl"
    write(path, ["who wrote hamlet?", LONG])
    out = subprocess.run([sys.executable, "-m", "searche1_jax.main", f"--config={ROOT}/configs/tiny.py",
                          f"--workdir={tmp_path / 'run'}", f"--config.data.train={path}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=ONE_DEVICE)
    assert out.returncode != 0
    assert f"error: 1 of 2 training questions in {path}" in out.stderr and f"{path}:2: prompt of" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("mode", ["auto", "never"])
def test_prompt_bytes_are_those_of_the_rendered_prompts(tok, mode):
    from searche1_jax.data.demo import demo_file
    from searche1_jax.rollout.agent import prompt_renderer
    from searche1_jax.train.data_check import prompt_bytes
    exs = read_examples(demo_file("train")) + [QAExample("u", "  où est né Frédéric Chopin ", ("x",), "")]
    render = prompt_renderer(tok, mode)
    assert prompt_bytes(exs, render) == [len(render(ex.question).encode("utf-8")) for ex in exs]


def test_a_too_long_dev_question_the_run_evaluates_is_refused_before_the_model_is_built(tmp_path, tok):
    """Dev questions beyond config.sft.eval_dev are never rolled out, so they are not checked."""
    from searche1_jax.train import setup
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    write(train, ["who wrote hamlet?", "capital of france?"])
    write(dev, ["who painted guernica?", LONG, LONG + " too"])
    c = tiny_config()
    c.data.train, c.data.dev, c.sft.eval_dev = str(train), str(dev), 2
    with pytest.raises(InvalidDataError, match=rf"1 of 2 dev questions in {dev}"):
        setup.Experiment(c)
    c.sft.eval_dev = 1
    assert [ex.id for ex in setup.Experiment(c).dev_examples] == ["q0"]
