"""``python -m jaxdiv selfcheck``: jaxdiv vs optax vs the float64 truth, side by side.

Each row is one promise of jaxdiv's numerical contract, measured on the same
inputs for both libraries. The truth is computed with NumPy in float64 from the
(possibly quantised) float32 inputs. This module produces the README's table.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import platform
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxdiv

_NEG_INF = -np.inf


@dataclasses.dataclass
class Row:
  case: str
  truth: float
  optax: float
  jaxdiv: float
  relative: bool = True  # report relative errors; else the values themselves


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  m = np.max(x, -1, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  with np.errstate(divide="ignore"):
    return (x - m) - np.log(np.sum(np.exp(x - m), -1, keepdims=True))


def _np_kl(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
  """Σ p (expm1(d) - d) with d = log q - log p: the float64 truth, accurate for tiny KL."""
  p = np.exp(log_p)
  d = np.where(p > 0, log_q - np.where(p > 0, log_p, 0), 0)
  return np.sum(np.where(p > 0, p * (np.expm1(d) - d), np.exp(log_q)), -1)


def _f(x) -> float:
  return float(np.asarray(x, np.float64).reshape(()))


def _jit(f: Callable) -> Callable:
  """``jax.jit`` for the small cases: one compiled program each instead of one per primitive, which
  halves selfcheck's time with the same table. The long-row cases stay eager, as users call them there."""
  return jax.jit(f)


def _rows(vocab: int) -> list[Row]:
  rng = np.random.default_rng(0)
  rows: list[Row] = []
  x = jnp.array([[0.0, _NEG_INF, 1.0]])
  p = jnp.array([[0.5, 0.0, 0.5]])
  truth = -0.5 * (_np_log_softmax(np.array([0.0, _NEG_INF, 1.0]))[[0, 2]]).sum()
  rows.append(Row("soft CE, masked class (-inf logit, target 0): value", truth,
                  _f(_jit(optax.losses.softmax_cross_entropy)(x, p)),
                  _f(_jit(jaxdiv.soft_cross_entropy)(x, p)), False))

  def jac_norm(f: Callable) -> float:
    return _f(_jit(lambda x: jnp.sum(jnp.abs(jax.jacfwd(lambda z: f(z, p))(x))))(x))

  # ∂H/∂z = q Σp - p, and Σp = 1.
  truth = float(np.abs(np.exp(_np_log_softmax(np.asarray(x)))[0] - np.asarray(p)[0]).sum())
  rows.append(Row("soft CE, masked class: |jacfwd| (optax.safe_softmax_cross_entropy)", truth,
                  jac_norm(optax.losses.safe_softmax_cross_entropy), jac_norm(jaxdiv.soft_cross_entropy),
                  False))
  logq = jnp.log(jnp.array([0.25, 0.25, 0.5]))
  target = jnp.array([0.5, 0.0, 0.5])
  g_optax = _jit(jax.grad(lambda t: optax.losses.kl_divergence(logq, t)))(target)
  g_jaxdiv = _jit(jax.grad(lambda t: jaxdiv.kl_divergence(logq, t)))(target)
  rows.append(Row("KL, target with a zero: finite ∂/∂target entries (of 3)", 3.0,
                  _f(jnp.sum(jnp.isfinite(g_optax))), _f(jnp.sum(jnp.isfinite(g_jaxdiv))), False))
  onehot_log = jnp.array([0.0, _NEG_INF, _NEG_INF])
  model_log = jnp.array([-0.5, -1.5, -2.0])
  truth = float(-_np_log_softmax(np.array([-0.5, -1.5, -2.0]))[0])
  rows.append(Row("KL with log-targets, one-hot target: value", truth,
                  _f(_jit(lambda z, t: optax.losses.kl_divergence_with_log_targets(jax.nn.log_softmax(z), t))(
                      model_log, onehot_log)),
                  _f(_jit(jaxdiv.kl_divergence_with_log_targets)(model_log, onehot_log)), False))
  z = jnp.array([[1.0, 2.0, 3.0]])
  for label in (-1, -100):
    lab = jnp.array([label])
    loss_o = _jit(optax.losses.softmax_cross_entropy_with_integer_labels)(z, lab)
    loss_j = _jit(jaxdiv.cross_entropy)(z, lab)
    rows.append(Row(f"integer label {label} (out of range): loss (NaN = flagged)", math.nan, _f(loss_o),
                    _f(loss_j), False))
    optax_total = lambda a, b: optax.losses.softmax_cross_entropy_with_integer_labels(a, b).sum()
    g_o = _jit(jax.grad(optax_total))(z, lab)
    g_j = _jit(jax.grad(lambda a, b: jaxdiv.cross_entropy(a, b).sum()))(z, lab)
    rows.append(Row(f"integer label {label}: |gradient| reaching the model", 0.0,
                    _f(jnp.sum(jnp.abs(g_o))), _f(jnp.sum(jnp.abs(g_j))), False))
  ties = jnp.array([[1e30, 1e30, 0.0]])
  rows.append(Row("CE at logits [1e30, 1e30, 0], label 0 (truth log 2)", math.log(2),
                  _f(_jit(optax.losses.softmax_cross_entropy_with_integer_labels)(ties, jnp.array([0]))),
                  _f(_jit(jaxdiv.cross_entropy)(ties, jnp.array([0])))))
  batch = 16
  logits = jnp.asarray(rng.normal(size=(batch, vocab)) * 3, jnp.bfloat16)
  labels = jnp.asarray(rng.integers(0, vocab, batch))
  lq = _np_log_softmax(np.asarray(logits.astype(jnp.float32)))
  truth = float(np.mean(-lq[np.arange(batch), np.asarray(labels)]))
  rows.append(Row(f"bf16 logits, V={vocab}: mean CE", truth,
                  _f(jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
                              .astype(jnp.float32))),
                  _f(jnp.mean(jaxdiv.cross_entropy(logits, labels)))))
  teacher = jnp.asarray(rng.normal(size=(batch, vocab)) * 3, jnp.bfloat16)
  lp = _np_log_softmax(np.asarray(teacher.astype(jnp.float32)))
  truth = float(np.mean(_np_kl(lp, lq)))
  rows.append(Row(f"bf16 logits, V={vocab}: mean KL(teacher‖student)", truth,
                  _f(jnp.mean(optax.losses.kl_divergence_with_log_targets(
                      jax.nn.log_softmax(logits), jax.nn.log_softmax(teacher)).astype(jnp.float32))),
                  _f(jnp.mean(jaxdiv.kl_divergence_with_log_targets(logits, teacher)))))
  t = rng.normal(size=(4, vocab)).astype(np.float32)
  s = (t + 1e-4 * rng.normal(size=(4, vocab))).astype(np.float32)
  truth = float(np.mean(_np_kl(_np_log_softmax(t), _np_log_softmax(s))))
  rows.append(Row(f"nearly equal distributions, V={vocab}: KL ≈ {truth:.0e}", truth,
                  _f(jnp.mean(optax.losses.kl_divergence_with_log_targets(jax.nn.log_softmax(s),
                                                                          jax.nn.log_softmax(t)))),
                  _f(jnp.mean(jaxdiv.kl_divergence_with_log_targets(s, t)))))
  masked = jnp.zeros((1, 4))
  where = jnp.zeros((1, 4), bool)
  uniform = jnp.full((1, 4), 0.25)
  g_o = _jit(jax.grad(lambda a: optax.losses.softmax_cross_entropy(a, uniform, where=where).sum()))(masked)
  g_j = _jit(jax.grad(lambda a: jaxdiv.soft_cross_entropy(a, uniform, where=where).sum()))(masked)
  rows.append(Row("fully masked row (where all False): finite gradient entries (of 4)", 4.0,
                  _f(jnp.sum(jnp.isfinite(g_o))), _f(jnp.sum(jnp.isfinite(g_j))), False))
  return rows


def _fmt_value(x: float) -> str:
  if math.isnan(x):
    return "NaN"
  if math.isinf(x):
    return "inf" if x > 0 else "-inf"
  return f"{x:.6g}"


def _fmt_rel(x: float, truth: float) -> str:
  if not math.isfinite(x):
    return _fmt_value(x)
  err = abs(x - truth) / abs(truth)
  return f"{err:.1e} rel. err" if err > 0 else "exact"


def table(rows: list[Row]) -> str:
  lines = ["| case | float64 truth | optax | jaxdiv |", "|---|---|---|---|"]
  for r in rows:
    fmt = functools.partial(_fmt_rel, truth=r.truth) if r.relative else _fmt_value
    case = r.case.replace("|", "\\|")  # markdown: a pipe inside a cell is escaped
    lines.append(f"| {case} | {_fmt_value(r.truth)} | {fmt(r.optax)} | {fmt(r.jaxdiv)} |")
  return "\n".join(lines)


def _ok(r: Row) -> bool:
  if r.relative:
    limit = 1e-4 if "nearly equal" in r.case else 1e-6
    return math.isfinite(r.jaxdiv) and abs(r.jaxdiv - r.truth) <= limit * abs(r.truth)
  if math.isnan(r.truth):
    return math.isnan(r.jaxdiv)
  return abs(r.jaxdiv - r.truth) <= 1e-6 * max(1.0, abs(r.truth))


def main(quick: bool = False, markdown: str | None = None) -> int:
  """Prints the table; returns 0 if every jaxdiv promise held, 1 otherwise."""
  vocab = 4096 if quick else 32768
  rows = _rows(vocab)
  text = table(rows)
  header = (f"jaxdiv {jaxdiv.__version__} vs optax {optax.__version__} (jax {jax.__version__}, "
            f"{jax.default_backend()}, {platform.machine()})")
  print(header)
  print(text)
  failed = [r.case for r in rows if not _ok(r)]
  for case in failed:
    print(f"FAILED: {case}", file=sys.stderr)
  print("all jaxdiv guarantees held" if not failed else f"{len(failed)} guarantee(s) failed")
  if markdown:
    with open(markdown, "w") as f:
      f.write(header + "\n\n" + text + "\n")
  return 1 if failed else 0
