"""Benchmark: jaxdiv against optax and plain JAX, ``python -m jaxdiv bench``.

For each loss, shape, dtype and mode (forward, forward+backward) every
contender is compiled once, its compiled temporary memory read from XLA's
``memory_analysis()``, and then all contenders are timed *interleaved* (one
sample of each in turn, the order rotating every repeat), so that noise on a
shared machine hits them alike. Reported: the median over repeats, the ratio to
the baseline contender (optax where it has the loss) and the temporary memory.

Forward is ``jit(lambda z, t: loss(z, t).sum())``; forward+backward is
``jit(value_and_grad(...))`` w.r.t. the model logits (the target is data, e.g. a
teacher's logits). Inputs are random: logits ``N(0, 2²)``, labels uniform, soft
targets a softmax of random logits.

Writes ``bench.md`` (the table), ``bench.json`` (raw numbers) and ``bench.png``
(ratios, if matplotlib is installed) into ``--out``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxdiv

FULL_SHAPES = ((8192, 1024), (2048, 32768), (512, 131072))
QUICK_SHAPES = ((256, 512), (32, 8192))
DTYPES = ("float32", "bfloat16")
MODES = ("fwd", "fwd+bwd")


# --------------------------------------------------------------------------- #
# Contenders
# --------------------------------------------------------------------------- #


def _naive_log_softmax(z):
  return z - jax.scipy.special.logsumexp(z, axis=-1, keepdims=True)


def _naive_kl(s, t):
  log_p, log_q = _naive_log_softmax(t), _naive_log_softmax(s)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def _naive_jsd(s, t, beta=0.5):
  log_p, log_q = _naive_log_softmax(t), _naive_log_softmax(s)
  p, q = jnp.exp(log_p), jnp.exp(log_q)
  m = beta * p + (1 - beta) * q
  log_m = jnp.log(m)
  return beta * jnp.sum(p * (log_p - log_m), -1) + (1 - beta) * jnp.sum(q * (log_q - log_m), -1)


def _contenders() -> dict[str, dict[str, Callable[..., Any]]]:
  """loss -> {contender: fn(logits, target) -> per-example losses}; the first entry is jaxdiv, the
  second the baseline the ratios are taken against."""
  import optax  # a dependency of jaxdiv

  ol = optax.losses
  return {
      "cross_entropy": {
          "jaxdiv": jaxdiv.cross_entropy,
          "optax": ol.softmax_cross_entropy_with_integer_labels,
          "naive": lambda z, y: -jnp.take_along_axis(_naive_log_softmax(z), y[:, None], axis=-1)[:, 0],
      },
      "soft_cross_entropy": {
          "jaxdiv": jaxdiv.soft_cross_entropy,
          "optax": ol.softmax_cross_entropy,
          "naive": lambda z, p: -jnp.sum(p * _naive_log_softmax(z), axis=-1),
      },
      "kl_logits": {
          "jaxdiv": jaxdiv.kl_divergence_with_log_targets,
          "optax": lambda s, t: ol.kl_divergence(jax.nn.log_softmax(s), jax.nn.softmax(t)),
          "optax_log_targets": lambda s, t: ol.kl_divergence_with_log_targets(
              jax.nn.log_softmax(s), jax.nn.log_softmax(t)
          ),
          "naive": _naive_kl,
      },
      "jsd": {
          "jaxdiv": jaxdiv.jensen_shannon_divergence,
          "naive": _naive_jsd,
      },
      "binary_cross_entropy": {
          "jaxdiv": jaxdiv.binary_cross_entropy,
          "optax": ol.sigmoid_binary_cross_entropy,
          "naive": lambda z, y: y * jax.nn.softplus(-z) + (1 - y) * jax.nn.softplus(z),
      },
  }


LOSSES = (
    "cross_entropy",
    "soft_cross_entropy",
    "kl_logits",
    "jsd",
    "binary_cross_entropy",
)


def _inputs(loss: str, shape: tuple[int, int], dtype: str, seed: int = 0):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(size=shape).astype(np.float32) * 2, dtype)
  if loss == "cross_entropy":
    return logits, jnp.asarray(rng.integers(0, shape[-1], size=shape[:-1]), jnp.int32)
  if loss == "binary_cross_entropy":
    return logits, jnp.asarray(rng.uniform(size=shape).astype(np.float32), dtype)
  target = rng.normal(size=shape).astype(np.float32) * 2
  if loss == "soft_cross_entropy":
    target = np.exp(target - target.max(-1, keepdims=True))
    target /= target.sum(-1, keepdims=True)
  return logits, jnp.asarray(target, dtype)


def _program(fn: Callable[..., Any], mode: str) -> Callable[..., Any]:
  total = lambda z, t: jnp.sum(fn(z, t).astype(jnp.float32))
  return jax.jit(total if mode == "fwd" else jax.value_and_grad(total))


# --------------------------------------------------------------------------- #
# Measurement
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class Row:
  loss: str
  mode: str
  shape: tuple[int, int]
  dtype: str
  contender: str
  median_ms: float
  ratio: float  # median / baseline's median in the same case
  temp_mib: float | None
  baseline: str


def _temp_mib(compiled) -> float | None:
  try:
    analysis = compiled.memory_analysis()
    return None if analysis is None else analysis.temp_size_in_bytes / 2**20
  except Exception:  # not every backend reports it
    return None


def _time_once(compiled, args, number: int) -> float:
  start = time.perf_counter()
  for _ in range(number):
    out = compiled(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / number


def measure_case(
    loss: str,
    contenders: dict[str, Callable[..., Any]],
    shape: tuple[int, int],
    dtype: str,
    mode: str,
    repeats: int,
    min_sample_s: float,
) -> list[Row]:
  """Times every contender of one case, interleaved; returns one Row per contender."""
  args = _inputs(loss, shape, dtype)
  compiled, temp = {}, {}
  for name, fn in contenders.items():
    compiled[name] = _program(fn, mode).lower(*args).compile()
    temp[name] = _temp_mib(compiled[name])
  number = {}
  for name, c in compiled.items():
    _time_once(c, args, 1)  # warm-up
    number[name] = max(1, int(min_sample_s / max(_time_once(c, args, 1), 1e-7)))
  samples: dict[str, list[float]] = {name: [] for name in compiled}
  names = list(compiled)
  for r in range(repeats):
    for name in names[r % len(names):] + names[: r % len(names)]:
      samples[name].append(_time_once(compiled[name], args, number[name]))
  medians = {name: statistics.median(s) * 1e3 for name, s in samples.items()}
  baseline = names[1]
  return [
      Row(loss, mode, (shape[0], shape[1]), dtype, name, medians[name], medians[name] / medians[baseline],
          temp[name], baseline)
      for name in names
  ]


class _Progress:
  """tqdm if installed, else a one-line counter on stderr."""

  def __init__(self, total: int):
    try:
      from tqdm import tqdm

      self._bar = tqdm(total=total, unit="case", file=sys.stderr)
    except ImportError:
      self._bar = None
    self.total, self.done = total, 0

  def update(self, label: str) -> None:
    self.done += 1
    if self._bar is not None:
      self._bar.set_postfix_str(label)
      self._bar.update(1)
    else:
      width = 30
      filled = width * self.done // self.total
      print(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {label:<50}",
            end="", file=sys.stderr, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    else:
      print(file=sys.stderr)


def run(
    shapes: Sequence[tuple[int, int]],
    dtypes: Sequence[str],
    losses: Sequence[str],
    repeats: int,
    min_sample_s: float = 0.02,
    modes: Sequence[str] = MODES,
) -> list[Row]:
  table = _contenders()
  unknown = [name for name in losses if name not in table]
  if unknown:
    raise ValueError(f"unknown losses {unknown}; choose from {list(table)}.")
  cases = list(itertools.product(losses, shapes, dtypes, modes))
  progress = _Progress(len(cases))
  rows: list[Row] = []
  try:
    for loss, shape, dtype, mode in cases:
      rows += measure_case(loss, table[loss], shape, dtype, mode, repeats, min_sample_s)
      progress.update(f"{loss} {mode} {list(shape)} {dtype}")
  finally:
    progress.close()
  return rows


# --------------------------------------------------------------------------- #
# Reporting
# --------------------------------------------------------------------------- #


def machine() -> str:
  """One line naming the backend, device, CPU and library versions."""
  import optax

  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  device = jax.devices()[0]
  return (
      f"backend {jax.default_backend()} ({device.device_kind}, {jax.device_count()} device(s)); "
      f"CPU {cpu}, {os.cpu_count()} cores; jax {jax.__version__}, optax {optax.__version__}, "
      f"jaxdiv {jaxdiv.__version__}; Python {platform.python_version()}"
  )


def _fmt_mib(x: float | None) -> str:
  return "n/a" if x is None else f"{x:.1f}"


def to_markdown(rows: Sequence[Row], repeats: int) -> str:
  """The summary table (jaxdiv against the baseline, one line per case) and the full table."""
  lines = [
      f"Machine: {machine()}.",
      "",
      f"Median of {repeats} interleaved repeats; ratio = jaxdiv time / baseline time in the same run "
      "(< 1 is faster); temp = XLA's compiled temporary memory (MiB).",
      "",
      "| loss | shape | dtype | baseline | fwd ms (jaxdiv / base) | fwd ratio | fwd+bwd ms (jaxdiv / base) "
      "| fwd+bwd ratio | fwd+bwd temp MiB (jaxdiv / base) |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  by_key: dict[tuple, dict[str, Row]] = {}
  for r in rows:
    by_key.setdefault((r.loss, r.shape, r.dtype, r.mode), {})[r.contender] = r
  seen = []
  for r in rows:
    key = (r.loss, r.shape, r.dtype)
    if key not in seen:
      seen.append(key)
  for loss, shape, dtype in seen:
    cells = []
    baseline = "?"
    for mode in MODES:
      case = by_key.get((loss, shape, dtype, mode))
      if case is None:
        cells += ["—", "—"]
        continue
      j = case["jaxdiv"]
      baseline = j.baseline
      b = case[baseline]
      cells += [f"{j.median_ms:.2f} / {b.median_ms:.2f}", f"**{j.ratio:.2f}×**"]
    case = by_key.get((loss, shape, dtype, "fwd+bwd")) or by_key.get((loss, shape, dtype, "fwd"))
    assert case is not None, (loss, shape, dtype)
    j, b = case["jaxdiv"], case[baseline]
    mem = f"{_fmt_mib(j.temp_mib)} / {_fmt_mib(b.temp_mib)}"
    lines.append(
        f"| {loss} | {shape[0]}×{shape[1]} | {dtype} | {baseline} | " + " | ".join(cells) + f" | {mem} |")
  lines += [
      "",
      "All contenders:",
      "",
      "| loss | mode | shape | dtype | contender | median ms | ratio | temp MiB |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
        f"| {r.loss} | {r.mode} | {r.shape[0]}×{r.shape[1]} | {r.dtype} | {r.contender} | {r.median_ms:.2f} "
        f"| {r.ratio:.2f} | {_fmt_mib(r.temp_mib)} |"
    )
  return "\n".join(lines) + "\n"


def plot(rows: Sequence[Row], path: str) -> bool:
  """Bar chart of jaxdiv's time ratio per case; False if matplotlib is missing."""
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return False
  mine = [r for r in rows if r.contender == "jaxdiv"]
  labels = [f"{r.loss}\n{r.shape[0]}×{r.shape[1]} {r.dtype}" for r in mine if r.mode == MODES[0]]
  fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(labels) + 2), 4.5))
  width = 0.4
  for k, mode in enumerate(MODES):
    vals = [r.ratio for r in mine if r.mode == mode]
    ax.bar(np.arange(len(vals)) + (k - 0.5) * width, vals, width, label=mode)
  ax.axhline(1.0, color="black", linewidth=0.8)
  ax.set_xticks(np.arange(len(labels)), labels, rotation=90, fontsize=7)
  ax.set_ylabel("jaxdiv time / baseline time")
  ax.set_title("jaxdiv vs optax (or naive JAX): lower is faster")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def _parse_shapes(text: str) -> list[tuple[int, int]]:
  shapes = []
  for part in text.split(","):
    rows, cols = part.lower().split("x")
    shapes.append((int(rows), int(cols)))
  return shapes


def add_arguments(parser) -> None:
  parser.add_argument(
      "--quick", action="store_true",
      help="small shapes and few repeats (25 s of CPU on 2 cores; longer on a busy machine)")
  parser.add_argument("--shapes", help="comma-separated RxC shapes, e.g. 8192x1024,2048x32768")
  parser.add_argument(
      "--dtypes", default=",".join(DTYPES), help="comma-separated dtypes (default: %(default)s)")
  parser.add_argument("--losses", help="comma-separated losses (default: all)")
  parser.add_argument("--modes", default=",".join(MODES), help="comma-separated modes (default: %(default)s)")
  parser.add_argument("--repeats", type=int, help="timed samples per contender (default 15; 3 with --quick)")
  parser.add_argument("--out", default="bench_results", help="output directory (default: %(default)s)")


def main(args) -> int:
  quick = args.quick
  shapes = _parse_shapes(args.shapes) if args.shapes else list(QUICK_SHAPES if quick else FULL_SHAPES)
  dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
  losses = [s.strip() for s in args.losses.split(",")] if args.losses else list(_contenders())
  modes = [m.strip() for m in args.modes.split(",") if m.strip()]
  repeats = args.repeats or (3 if quick else 15)
  rows = run(shapes, dtypes, losses, repeats, min_sample_s=0.002 if quick else 0.02, modes=modes)
  text = to_markdown(rows, repeats)
  print(text)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "bench.md"), "w") as f:
    f.write(text)
  with open(os.path.join(args.out, "bench.json"), "w") as f:
    json.dump({"machine": machine(), "repeats": repeats, "rows": [dataclasses.asdict(r) for r in rows]}, f,
              indent=1)
  if plot(rows, os.path.join(args.out, "bench.png")):
    print(f"wrote {args.out}/bench.md, bench.json and bench.png")
  else:
    print(f"wrote {args.out}/bench.md and bench.json; matplotlib is not installed, so no plot "
          "(pip install matplotlib)")
  return 0
