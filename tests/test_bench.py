"""``python -m jaxdiv bench`` in quick mode on a tiny shape: the table's structure, never its times."""

from __future__ import annotations

import json

import pytest

from jaxdiv.cli import bench as _bench
from jaxdiv.cli import main as cli


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench")
  argv = ["bench", "--quick", "--shapes", "16x32", "--dtypes", "float32,bfloat16", "--repeats", "2",
          "--out", str(out)]
  assert cli.main(argv) == 0
  return out


def test_quick_bench_writes_markdown_and_json(quick_run):
  assert (quick_run / "bench.md").is_file()
  data = json.loads((quick_run / "bench.json").read_text())
  assert data["repeats"] == 2 and "jax" in data["machine"] and "optax" in data["machine"]
  contenders = _bench._contenders()
  expected = sum(len(c) for c in contenders.values()) * 2 * len(_bench.MODES)  # two dtypes
  assert len(data["rows"]) == expected
  for row in data["rows"]:
    assert row["median_ms"] > 0 and row["ratio"] > 0
    assert row["baseline"] == ("naive" if row["loss"] == "jsd" else "optax")
    assert row["temp_mib"] is None or row["temp_mib"] >= 0


def test_summary_table_has_one_line_per_loss_and_dtype_with_both_modes(quick_run):
  text = (quick_run / "bench.md").read_text()
  summary = [line for line in text.splitlines() if line.startswith("| ") and "16×32" in line and "**" in line]
  assert len(summary) == len(_bench.LOSSES) * 2
  for line in summary:
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert len(cells) == 9
    assert cells[5].endswith("×**") and cells[7].endswith("×**")  # fwd and fwd+bwd ratios


def test_plot_is_written_when_matplotlib_is_installed(quick_run):
  pytest.importorskip("matplotlib")
  assert (quick_run / "bench.png").stat().st_size > 0


def test_bad_loss_name_is_rejected_with_the_choices():
  with pytest.raises(ValueError, match="unknown losses.*cross_entropy"):
    _bench.run([(4, 8)], ["float32"], ["nope"], repeats=1)


def test_quick_fused_bench_writes_both_naive_baselines_and_the_plots(tmp_path):
  """``python -m jaxdiv bench-fused --quick``: every method's memory and time, against both naive losses."""
  assert cli.main(["bench-fused", "--quick", "--out", str(tmp_path)]) == 0
  data = json.loads((tmp_path / "fused.json").read_text())
  methods = {"naive (optax)", "naive", "checkpointed scan", "fused fast", "fused low_memory"}
  assert set(data["rows"]) == methods
  assert all(r["temp_mib"] > 0 and r["seconds"] > 0 for r in data["rows"].values())
  # Memory is deterministic: the low-memory mode needs less than either naive loss at every V, and its
  # advantage grows with V (its block stops growing, the logits do not). At the quick sweep's largest
  # shape (N=1024, V=32768) optax's naive loss holds two [N, V] f32 buffers (256 MiB) and jaxdiv's one
  # (128 MiB), against ~11 MiB for the low-memory mode.
  sweep = data["vocab_sweep"]
  assert set(sweep) == methods | {"V"}
  for naive, factor in (("naive (optax)", 16), ("naive", 8)):
    saving = [ref / low for low, ref in zip(sweep["fused low_memory"], sweep[naive])]
    assert all(s > 1 for s in saving), (naive, saving)
    assert saving == sorted(saving), (naive, saving)
    assert saving[-1] > factor, (naive, saving)
  assert {"naive", "naive (optax)", "fast", "low_memory"} <= set(data["tradeoff"])
  pytest.importorskip("matplotlib")
  assert (tmp_path / "fused_memory_vs_vocab.png").stat().st_size > 0
  assert (tmp_path / "fused_tradeoff.png").stat().st_size > 0
