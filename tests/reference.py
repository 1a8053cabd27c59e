"""Float64 NumPy/SciPy references for every jaxdiv loss.

Independent of jaxdiv's implementation: written from the textbook formulas with
SciPy's ``log_softmax`` and the 0·log 0 = 0 convention made explicit, evaluated
in float64 on the *same* (possibly quantised) inputs the function under test
receives. KL is summed as ``p (expm1(d) - d)`` with ``d = log q - log p``, which
float64 evaluates to ~1e-16 relative even for KL ≈ 1e-9.
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
  with np.errstate(invalid="ignore"):  # NaN planted in masked entries
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


def binary_entropy(logits, axis=None, where=None):
  z = f64(logits)
  lp1, lp0 = _log_sigmoid(z), _log_sigmoid(-z)
  terms = -_xlogq(np.exp(lp1), lp1) - _xlogq(np.exp(lp0), lp0)
  return _sum(terms, axis, where)


# --------------------------------------------------------------------------- #
# Gaussians: textbook closed forms in float64, and in 50-digit decimal
# arithmetic for nearly equal distributions (where float64 itself cancels).
# --------------------------------------------------------------------------- #


def _log_vars(log_var, target_log_var, parameterization):
  factor = 1.0 if parameterization == "log_var" else 2.0
  return factor * f64(log_var), factor * f64(target_log_var)


def gaussian_kl_divergence(mean, log_var, target_mean, target_log_var, parameterization="log_var", axis=-1,
                           where=None):
  """½ (v₁/v₂ − 1 − log(v₁/v₂) + (μ₁ − μ₂)²/v₂) per dimension, summed over ``axis``."""
  lv1, lv2 = _log_vars(log_var, target_log_var, parameterization)
  ratio_log = lv1 - lv2
  terms = 0.5 * (np.expm1(ratio_log) - ratio_log + (f64(mean) - f64(target_mean)) ** 2 * np.exp(-lv2))
  return _sum(terms, axis, where)


def gaussian_entropy(log_var, parameterization="log_var", axis=-1, where=None):
  lv, _ = _log_vars(log_var, log_var, parameterization)
  terms = 0.5 * np.log(2 * np.pi * np.e * np.exp(lv))
  return _sum(terms, axis, where)


def multivariate_normal_kl_divergence(mean, scale_tril, target_mean, target_scale_tril):
  """½ (tr(Σ₂⁻¹Σ₁) − k + Δμᵀ Σ₂⁻¹ Δμ + log det Σ₂ − log det Σ₁), via covariance matrices."""
  l1, l2 = np.tril(f64(scale_tril)), np.tril(f64(target_scale_tril))
  m1, m2 = np.broadcast_arrays(f64(mean), f64(target_mean))
  s1, s2 = l1 @ np.swapaxes(l1, -1, -2), l2 @ np.swapaxes(l2, -1, -2)
  s1, s2 = np.broadcast_arrays(s1, s2)
  k = m1.shape[-1]
  diff = (m2 - m1)[..., None]
  trace = np.trace(np.linalg.solve(s2, s1), axis1=-2, axis2=-1)
  maha = (np.swapaxes(diff, -1, -2) @ np.linalg.solve(s2, diff))[..., 0, 0]
  logdet = np.linalg.slogdet(s2)[1] - np.linalg.slogdet(s1)[1]
  return 0.5 * (trace - k + maha + logdet)


def multivariate_normal_entropy(scale_tril):
  l = f64(scale_tril)
  s = l @ np.swapaxes(l, -1, -2)
  k = s.shape[-1]
  return 0.5 * (k * np.log(2 * np.pi * np.e) + np.linalg.slogdet(s)[1])


def multivariate_normal_kl_exact(mean, scale_tril, target_mean, target_scale_tril) -> float:
  """The same textbook formula for one pair, in 50-digit decimal arithmetic.

  Covariances, a Cholesky-free solve (Gauss–Jordan on Σ₂) and the
  log-determinants as products of diagonals, all exact to ~1e-45, so a KL of
  1e-12 between float32 inputs is known to every printed digit.
  """
  from decimal import Decimal, localcontext

  with localcontext() as ctx:
    ctx.prec = 50
    dec = lambda a: [[Decimal(float(x)) for x in row] for row in np.tril(np.asarray(a, np.float64))]
    l1, l2 = dec(scale_tril), dec(target_scale_tril)
    k = len(l1)
    mat = lambda l: [[sum(l[i][t] * l[j][t] for t in range(k)) for j in range(k)] for i in range(k)]
    s1, s2 = mat(l1), mat(l2)
    dm = [Decimal(float(b)) - Decimal(float(a)) for a, b in zip(mean, target_mean)]
    # Solve Σ₂ X = [Σ₁ | Δμ] by Gauss–Jordan elimination.
    aug = [s2[i][:] + s1[i][:] + [dm[i]] for i in range(k)]
    for c in range(k):
      piv = aug[c][c]
      aug[c] = [x / piv for x in aug[c]]
      for r in range(k):
        if r != c:
          f = aug[r][c]
          aug[r] = [x - f * y for x, y in zip(aug[r], aug[c])]
    trace = sum(aug[i][k + i] for i in range(k))
    maha = sum(dm[i] * aug[i][2 * k] for i in range(k))
    logdet = sum(2 * (abs(l2[i][i]).ln() - abs(l1[i][i]).ln()) for i in range(k))
    return float((trace - k + maha + logdet) / 2)
