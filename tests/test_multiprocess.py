"""A real two-process ``jax.distributed`` cluster on 127.0.0.1 gives the one-device losses and gradients.

The test runs the documented example ``examples/multiprocess.py`` exactly as a
user would (``--num-processes 2``): it starts two processes with 4 CPU devices
each and gloo collectives, builds one 8-device mesh across them, feeds each
process its own half of the batch, and compares the vocab-parallel fused CE,
the vocab-parallel KL and the fused CE (both schedules), values and gradients
under ``jit``, with the materialised loss on one device to 1e-6. The example
kills its workers on failure and after its own timeout; the test kills the
whole process group if even that does not end it.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "multiprocess.py"
CHECKS = (
    "vocab_parallel_fused_linear_cross_entropy",
    "vocab_parallel_kl_divergence",
    "fused_linear_cross_entropy(mode='fast')",
    "fused_linear_cross_entropy(mode='low_memory')",
)
WORKER_TIMEOUT_S = 100  # the example stops its workers after this
TEST_TIMEOUT_S = 120  # and the test stops the example after this


def _run_example(*args: str) -> tuple[int, str]:
  """Run the example in a new process group; kill the group if it outlives ``TEST_TIMEOUT_S``."""
  proc = subprocess.Popen(
      [sys.executable, str(EXAMPLE), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      start_new_session=True)
  try:
    out, _ = proc.communicate(timeout=TEST_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)  # the example and the workers it started
    out, _ = proc.communicate()
    raise AssertionError(f"examples/multiprocess.py ran over {TEST_TIMEOUT_S} s:\n{out}") from None
  return proc.returncode, out


def test_two_processes_match_one_device_values_and_gradients():
  assert EXAMPLE.is_file(), f"{EXAMPLE} is missing: it ships with the repository, not the wheel"
  status, out = _run_example("--num-processes", "2", "--timeout", str(WORKER_TIMEOUT_S))
  assert status == 0, out
  for process in (0, 1):
    mesh = "global mesh {'data': 2, 'vocab': 4}"
    assert f"process {process}: 2 processes, 4 local devices, {mesh}" in out, out
    for name in CHECKS:
      assert re.search(rf"process {process}: PASS {re.escape(name)}: value and gradient", out), (name, out)
    assert f"process {process}: {len(CHECKS)} of {len(CHECKS)} checks passed" in out, out
  assert "launcher: all processes passed" in out


def test_a_worker_that_cannot_reach_its_peer_stops_by_itself():
  """Process 1 of 2 alone: its coordinator never answers, and the worker's own alarm ends it."""
  status, out = _run_example(
      "--num-processes", "2", "--process-id", "1", "--coordinator", "127.0.0.1:1", "--timeout", "5")
  assert status == -signal.SIGALRM, (status, out)
