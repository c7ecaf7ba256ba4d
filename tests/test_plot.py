"""The metrics plot command."""
import json

import pytest

from searche1_jax.plot import main, read_jsonl


def test_plot_writes_a_png_with_every_present_metric(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": i, "phase": "grpo", "reward": i / 10, "entropy": 1.0 - i / 20} for i in range(1, 6)]
    rows.append({"step": 5, "phase": "ofsd", "ofsd_loss": 0.3})
    rows += [{"step": 0, "phase": "sft", "sft_step": k, "sft_loss": 2.0 / k} for k in (1, 2, 3)]
    rows += [{"step": s, "phase": "eval", "label": lab, "dev_em": em, "dev_em_lo": em - 0.1, "dev_em_hi": em + 0.1}
             for s, lab, em in ((0, "base", 0.0), (0, "warm_start", 0.3), (5, "final", 0.35))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    main([str(path)])
    png = tmp_path / "metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "dev_em, sft_loss, reward, entropy, ofsd_loss" in capsys.readouterr().out


def test_bad_metrics_line_names_file_and_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2: not a JSON line"):
        read_jsonl(str(path))
