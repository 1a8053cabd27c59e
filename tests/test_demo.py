"""``python -m jaxdiv demo``: runs end to end from the command line, explains itself, fails politely."""

from __future__ import annotations

import re
import subprocess
import sys

from jaxdiv.cli import demo as _demo
from jaxdiv.cli import main as cli


def test_help_explains_every_subcommand(capsys):
  try:
    cli.main(["--help"])
  except SystemExit as e:
    assert e.code == 0
  text = capsys.readouterr().out
  for command in ("selfcheck", "demo"):
    assert re.search(rf"^\s+{command}\s+\S", text, re.MULTILINE), text


def test_demo_help_names_the_extra(capsys):
  try:
    cli.main(["demo", "--help"])
  except SystemExit as e:
    assert e.code == 0
  text = capsys.readouterr().out
  assert "--quick" in text and "jaxdiv[demo]" in text


def test_missing_scikit_learn_names_the_extra_instead_of_a_traceback(monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn` raise ImportError
  assert cli.main(["demo", "--quick"]) == 2
  captured = capsys.readouterr()
  assert "pip install 'jaxdiv[demo]'" in captured.err
  assert "Traceback" not in captured.err + captured.out


def test_text_progress_bar_fallback(capsys):
  bar = _demo._TextProgress(4, "teacher")
  for _ in range(4):
    bar.update(1)
  bar.close()
  assert capsys.readouterr().err.endswith("teacher: [" + "#" * 30 + "] 4/4\n")


def test_quick_demo_trains_distils_and_prints_both_tables():
  # A subprocess, as users run it (and outside the suite's strict promotion config).
  result = subprocess.run([sys.executable, "-m", "jaxdiv", "demo", "--quick"], capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  accuracies = [float(a) for a in re.findall(r"(\d+\.\d)%\s*$", out, re.MULTILINE)]
  assert len(accuracies) == 4, out
  assert accuracies[0] >= 90.0, out  # the teacher
  assert "hard labels only" in out and "distilled from the teacher" in out
  assert "| case | float64 truth | optax | jaxdiv |" in out
  assert "NaN" in out  # optax's failures are shown
  assert "teacher" in result.stderr  # the progress bars
