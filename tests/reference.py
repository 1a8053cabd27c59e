"""Float64 NumPy/SciPy references for every jaxdiv loss.

Independent of jaxdiv's implementation: written from the textbook formulas with
SciPy's ``log_softmax``, ``rel_entr`` and ``xlogy`` (which already follow the
0·log 0 = 0 convention), evaluated in float64 on the *same* (possibly
quantised) inputs the function under test receives.
"""

from __future__ import annotations

import numpy as np
from scipy import special


def f64(x) -> np.ndarray:
  return np.asarray(np.asarray(x, dtype=np.float32) if _is_low(x) else x, dtype=np.float64)


def _is_low(x) -> bool:
  return hasattr(x, "dtype") and str(x.dtype) in ("bfloat16", "float16")


def log_softmax(logits, axis=-1, where=None):
  z = f64(logits)
  if where is not None:
    z = np.where(where, z, -np.inf)
  all_masked = np.all(z == -np.inf, axis=axis, keepdims=True)
  with np.errstate(invalid="ignore"):
    out = special.log_softmax(np.where(all_masked, 0.0, z), axis=axis)
  return np.where(all_masked | (z == -np.inf), -np.inf, out)


def cross_entropy(logits, labels, axis=-1, where=None):
  lq = log_softmax(logits, axis, where)
  labels = np.asarray(labels)
  num = lq.shape[axis]
  valid = (labels >= 0) & (labels < num)
  picked = np.take_along_axis(lq, np.expand_dims(np.where(valid, labels, 0), axis), axis).squeeze(axis)
  out = np.where(valid, -picked, np.nan)
  if where is not None:
    out = np.where(np.any(np.broadcast_to(where, lq.shape), axis=axis), out, 0.0)
  return out


def soft_cross_entropy(logits, probs, axis=-1, where=None):
  lq = log_softmax(logits, axis, where)
  p = f64(probs)
  if where is not None:
    p = np.where(where, p, 0.0)
  return -_xlogq(p, lq).sum(axis)


def _xlogq(p, lq):
  """p * lq with 0 * -inf = 0."""
  with np.errstate(invalid="ignore"):
    return np.where(p == 0, 0.0, p * lq)


def kl(p, lq, lp=None, axis=-1):
  """Σ p log(p/q) - p + q from p (and optionally log p) and log q, in float64."""
  p = np.asarray(p, np.float64)
  lp = np.log(np.where(p > 0, p, 1.0)) if lp is None else lp
  d = lq - np.where(p > 0, lp, 0.0)
  with np.errstate(invalid="ignore", over="ignore"):
    terms = np.where(p > 0, p * (np.expm1(d) - d), np.exp(lq))
  # exact for |d| large as well: p e^d = q
  with np.errstate(invalid="ignore", over="ignore"):
    far = np.exp(lq) - p - p * d
  terms = np.where((p > 0) & (np.abs(d) >= 1), far, terms)
  return terms.sum(axis)


def kl_divergence(logits, probs, axis=-1, where=None):
  p = f64(probs)
  if where is not None:
    p = np.where(where, p, 0.0)
  return kl(p, log_softmax(logits, axis, where), axis=axis)


def kl_divergence_with_log_targets(logits, target_logits, axis=-1, where=None):
  lp = log_softmax(target_logits, axis, where)
  return kl(np.exp(lp), log_softmax(logits, axis, where), lp, axis)


def reverse_kl_divergence(logits, target_logits, axis=-1, where=None):
  return kl_divergence_with_log_targets(target_logits, logits, axis, where)


def jensen_shannon_divergence(logits, target_logits, beta=0.5, axis=-1, where=None):
  lq = log_softmax(logits, axis, where)
  lp = log_softmax(target_logits, axis, where)
  if beta == 0:
    return kl(np.exp(lp), lq, lp, axis)
  if beta == 1:
    return kl(np.exp(lq), lp, lq, axis)
  m = beta * np.exp(lp) + (1 - beta) * np.exp(lq)
  with np.errstate(divide="ignore"):
    lm = np.log(m)
  return beta * kl(np.exp(lp), lm, lp, axis) + (1 - beta) * kl(np.exp(lq), lm, lq, axis)


def entropy(logits, axis=-1, where=None):
  lq = log_softmax(logits, axis, where)
  return -_xlogq(np.exp(lq), lq).sum(axis)


def _log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def _sum(terms, axis, where):
  if where is not None:
    terms = np.where(where, terms, 0.0)
  return terms if axis is None else terms.sum(axis)


def binary_cross_entropy(logits, targets, axis=None, where=None):
  z, y = f64(logits), f64(targets)
  terms = -_xlogq(y, _log_sigmoid(z)) - _xlogq(1 - y, _log_sigmoid(-z))
  return _sum(terms, axis, where)


def binary_kl_divergence(logits, target_logits, axis=None, where=None):
  z, t = f64(logits), f64(target_logits)
  lq = np.stack([_log_sigmoid(z), _log_sigmoid(-z)], -1)
  lp = np.stack([_log_sigmoid(t), _log_sigmoid(-t)], -1)
  return _sum(kl(np.exp(lp), lq, lp, axis=-1), axis, where)
