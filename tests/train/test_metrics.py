"""Issue 23 item 3: MetricsWriter.resume drops the rows written after the checkpoint a run
resumes from, so metrics.jsonl holds what an uninterrupted run writes."""
import json
import os

from searche1_jax.train.metrics import MetricsWriter, truncate_rows


def phases(path):
    return [(r["step"], r["phase"]) for r in map(json.loads, open(path))]


def test_truncate_rows_keeps_the_first_complete_rows_and_drops_a_partial_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": 3}\n{"a"')
    assert truncate_rows(str(p), 2) == 2 and p.read_bytes() == b'{"a": 1}\n{"a": 2}\n'
    assert truncate_rows(str(p), 5) == 0 and p.read_bytes() == b'{"a": 1}\n{"a": 2}\n'
    assert truncate_rows(str(tmp_path / "none.jsonl"), 0) == 0


def test_resume_drops_the_rows_after_the_checkpoint_and_counts_on(tmp_path):
    w = MetricsWriter(str(tmp_path), tensorboard=False)
    w.write(0, "eval", {"dev_em": 0.1})       # the uninterrupted run: eval at step 0, grpo 1-3,
    w.write(1, "grpo", {"reward": 0.0})       # ofsd at step 3 (a step holds several phases)
    saved_rows = w.rows                       # what the checkpoint after step 1 records
    w.write(2, "grpo", {"reward": 0.5})       # written, then killed before step 2's checkpoint
    w2 = MetricsWriter(str(tmp_path), tensorboard=False)
    w2.resume(saved_rows, 1)
    for step, phase in ((2, "grpo"), (3, "grpo"), (3, "ofsd")):
        w2.write(step, phase, {})
    assert phases(w.path) == [(0, "eval"), (1, "grpo"), (2, "grpo"), (3, "grpo"), (3, "ofsd")]
    assert w2.rows == 5
    w3 = MetricsWriter(str(tmp_path), tensorboard=False)
    w3.resume(None, 3)  # a checkpoint from before this bookkeeping: the file is left as it is
    assert len(phases(w.path)) == 5


def test_resume_opens_a_tensorboard_file_that_purges_later_steps(tmp_path):
    w = MetricsWriter(str(tmp_path), tensorboard=True)
    if w._tb is None:
        return  # tensorboardX not installed: no event files to purge
    w.write(1, "grpo", {"reward": 0.0})
    w.write(2, "grpo", {"reward": 0.5})
    w2 = MetricsWriter(str(tmp_path), tensorboard=True)
    w2.resume(1, 1)
    w2.write(2, "grpo", {"reward": 0.25})
    w2._tb.close()
    from tensorboardX.proto import event_pb2
    starts = []
    for name in sorted(os.listdir(tmp_path / "tb")):
        data = open(tmp_path / "tb" / name, "rb").read()
        pos = 0
        while pos < len(data):  # TFRecord framing: u64 length, u32 crc, payload, u32 crc
            n = int.from_bytes(data[pos:pos + 8], "little")
            ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 16 + n
            if ev.HasField("session_log") and ev.session_log.status == ev.session_log.START:
                starts.append(ev.step)
    assert starts == [2]  # TensorBoard hides the earlier file's events at steps >= 2
