"""The tfds builder builds array_record files and reads them through data_source, without TF."""
import json
import subprocess
import sys

import pytest

from searche1_jax.data.qa import read_jsonl
from tests.data.shared import SHARED_DATA, needs_shared

tb = pytest.importorskip("searche1_jax.data.tfds_builder")


def _manual_dir(tmp_path):
    qa, train = tmp_path / "manual" / "qa", tmp_path / "manual" / "train"
    qa.mkdir(parents=True)
    train.mkdir()
    rows = [{"id": f"musique-{i}", "question": f"q{i}?", "golden_answers": [f"a{i}", "b"], "data_source": "musique",
             "contexts": [{"title": f"T{i}", "text": f"text {i}"}]} for i in range(5)]
    (qa / "musique.dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (qa / "musique.heldout.jsonl").write_text(json.dumps(dict(rows[0], id="musique-h")) + "\n")
    (train / "a.train.jsonl").write_text("".join(json.dumps(dict(r, id=f"t{r['id']}")) + "\n" for r in rows[:3]))
    (train / "b.train.jsonl").write_text(json.dumps(dict(rows[3], id="x", contexts=None)) + "\n")
    (train / "a.val.jsonl").write_text(json.dumps(dict(rows[4], id="v")) + "\n")
    return tmp_path / "manual"


def test_builder_round_trips_the_jsonl_rows(tmp_path):
    manual = _manual_dir(tmp_path)
    data_dir = tmp_path / "tfds"
    builder = tb.prepare("musique", manual, data_dir)
    assert sorted(builder.info.splits) == ["dev", "heldout"]
    assert tb.read_split("musique", "dev", manual, data_dir) == read_jsonl(manual / "qa" / "musique.dev.jsonl")
    assert [e.id for e in tb.read_split("musique", "heldout", manual, data_dir)] == ["musique-h"]
    train = tb.read_split("train", "train", manual, data_dir)
    assert [e.id for e in train] == ["tmusique-0", "tmusique-1", "tmusique-2", "x"]
    assert train[-1].contexts is None and train[0].contexts == (("T0", "text 0"),)
    assert [e.id for e in tb.read_split("train", "validation", manual, data_dir)] == ["v"]
    with pytest.raises(ValueError, match="no split 'test'; prepared splits are"):
        tb.data_source("musique", "test", manual, data_dir)
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu'; valid names"):
        tb.make_builder("mmlu", data_dir)


def test_builder_reports_a_malformed_line(tmp_path):
    manual = _manual_dir(tmp_path)
    with open(manual / "qa" / "musique.dev.jsonl", "a") as f:
        f.write('{"id": "m-9", "question": "q"}\n')
    with pytest.raises(ValueError, match=r"musique.dev.jsonl:6: missing 'golden_answers'"):
        tb.prepare("musique", manual, tmp_path / "tfds")


def test_tfds_data_source_runs_without_tensorflow(tmp_path):
    manual = _manual_dir(tmp_path)
    code = (
        "import sys; from searche1_jax.data import tfds_builder as tb; import tensorflow_datasets as tfds\n"
        f"tb.prepare('musique', {str(manual)!r}, {str(tmp_path / 'd')!r})\n"
        f"src = tfds.data_source('search_r1_qa/musique', split='dev', data_dir={str(tmp_path / 'd')!r}, "
        f"download=False)\n"
        "print(len(src), sorted(tb.example_from_record(src[i]).id for i in range(len(src)))[0])\n"
        "print('tensorflow' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-3:] == ["5 musique-0", "False", ""]


@needs_shared
def test_builder_on_shared_hotpotqa_matches_the_plain_reader(tmp_path):
    got = tb.read_split("hotpotqa", "dev", SHARED_DATA, tmp_path)
    want = sorted(read_jsonl(f"{SHARED_DATA}/qa/hotpotqa.dev.jsonl"), key=lambda e: e.id)
    assert got == want
