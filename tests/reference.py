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
  tril = f64(scale_tril)
  s = tril @ np.swapaxes(tril, -1, -2)
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
    mat = lambda tril: [[sum(tril[i][t] * tril[j][t] for t in range(k)) for j in range(k)] for i in range(k)]
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


# --------------------------------------------------------------------------- #
# Training objectives (issue 3): reductions, CE options, distillation, RL
# --------------------------------------------------------------------------- #


def reduce(loss, reduction="none", weight=None, normalizer=None):
  """none / sum / mean (Σℓ/Σw) / batchmean (Σℓ/leading size); a zero denominator gives 0."""
  loss = np.asarray(loss, np.float64)
  if reduction == "none":
    return loss
  total = loss.sum()
  if reduction == "sum":
    return total
  if normalizer is not None:
    den = float(normalizer)
  elif reduction == "batchmean":
    den = loss.shape[0] if loss.ndim else 1
  else:
    den = loss.size if weight is None else float(np.sum(weight))
  return 0.0 if den == 0 else total / den


def _capped(logits, where, soft_cap):
  z = f64(logits)
  if where is not None:
    z = np.where(where, z, -np.inf)
  if soft_cap is not None:
    with np.errstate(invalid="ignore"):
      z = np.where(z == -np.inf, -np.inf, soft_cap * np.tanh(z / soft_cap))
  return z


def _lse(z):
  with np.errstate(divide="ignore"):
    return special.logsumexp(z, axis=-1)


def _xlogx(p):
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)


def smoothed_targets(labels, support, label_smoothing, smoothing="uniform"):
  """The dense smoothed target of the documented semantics (a one-hot built explicitly)."""
  k = support.sum(-1, keepdims=True).astype(np.float64)
  onehot = np.eye(support.shape[-1])[np.asarray(labels)]
  eps = label_smoothing
  if smoothing == "uniform":
    return (1 - eps) * onehot + eps * support / np.where(k > 0, k, 1)
  off_support = support & (onehot == 0)
  k_off = off_support.sum(-1, keepdims=True)
  conf = np.where(k_off > 0, 1 - eps, 1.0)
  return conf * onehot + np.where(k_off > 0, eps / np.where(k_off > 0, k_off, 1), 0.0) * off_support


def cross_entropy_options(logits, labels, axis=-1, where=None, ignore_index=None, class_weights=None,
                          label_smoothing=0.0, smoothing="uniform", t5x_normalize=False, z_loss=0.0,
                          soft_cap=None, reduction="none", normalizer=None, return_aux=False):
  """cross_entropy with every training option, written from the documented formulas (last axis)."""
  assert axis in (-1, np.ndim(logits) - 1)
  if where is not None:
    where = np.broadcast_to(where, np.shape(logits))
  z = _capped(logits, where, soft_cap)
  lq = log_softmax(z)
  labels = np.asarray(labels)
  num = lq.shape[-1]
  in_range = (labels >= 0) & (labels < num)
  y = np.where(in_range, labels, 0)
  support = lq > -np.inf
  target = smoothed_targets(y, support, label_smoothing, smoothing)
  loss = -_xlogq(target, lq).sum(-1)
  if t5x_normalize:
    loss = loss + _xlogx(target).sum(-1)
  lse = _lse(z)
  zl = z_loss * np.where(lse == -np.inf, 0.0, lse) ** 2
  loss = loss + zl
  valid = np.ones(labels.shape, bool) if where is None else np.any(where, -1)
  if ignore_index is not None:
    valid &= labels != ignore_index
  w = np.ones(labels.shape) if class_weights is None else np.asarray(class_weights, np.float64)[y]
  w = np.where(valid, w, 0.0)
  with np.errstate(invalid="ignore"):
    loss = np.where(w == 0, 0.0, w * loss)
  loss = np.where(valid, np.where(in_range, loss, np.nan), 0.0)
  out = reduce(loss, reduction, w, normalizer)
  if not return_aux:
    return out
  scale = w if reduction != "none" else valid.astype(float)
  q = np.exp(lq)
  aux = {
      "z_loss": np.where(valid, w * zl, 0.0),
      "logsumexp": np.where(valid, lse, 0.0) * scale,
      "entropy": -_xlogq(q, lq).sum(-1) * scale,
      "accuracy": (np.argmax(z, -1) == labels) * scale,
  }
  return out, {k: reduce(a, reduction, w, normalizer) for k, a in aux.items()}


def soft_cross_entropy_options(logits, probs, axis=-1, where=None, label_smoothing=0.0, z_loss=0.0,
                               soft_cap=None, reduction="none", normalizer=None):
  if where is not None:
    where = np.broadcast_to(where, np.shape(logits))
  z = _capped(logits, where, soft_cap)
  lq = log_softmax(z)
  p = f64(probs) if where is None else np.where(where, f64(probs), 0.0)
  support = lq > -np.inf
  k = support.sum(-1, keepdims=True)
  p = (1 - label_smoothing) * p + label_smoothing * support / np.where(k > 0, k, 1)
  lse = _lse(z)
  loss = -_xlogq(p, lq).sum(-1) + z_loss * np.where(lse == -np.inf, 0.0, lse) ** 2
  valid = None if where is None else np.any(where, -1)
  if valid is not None:
    loss = np.where(valid, loss, 0.0)
  return reduce(loss, reduction, valid, normalizer)


def distillation_loss(student_logits, teacher_logits, temperature=1.0, divergence="forward_kl", beta=0.5,
                      labels=None, alpha=0.5, ignore_index=None, scale_by_temperature_squared=True,
                      axis=-1, where=None, reduction="none", normalizer=None, teacher_gradient=False):
  """Hinton/GKD distillation from the formulas, with the JSD mixture formed explicitly."""
  assert axis in (-1, np.ndim(student_logits) - 1)
  z, t = f64(student_logits) / temperature, f64(teacher_logits) / temperature
  if divergence == "forward_kl":
    d = kl_divergence_with_log_targets(z, t, where=where)
  elif divergence == "reverse_kl":
    d = reverse_kl_divergence(z, t, where=where)
  else:
    d = jensen_shannon_divergence(z, t, beta=beta, where=where)
  if scale_by_temperature_squared:
    d = temperature**2 * d
  valid = np.ones(d.shape, bool) if where is None else np.any(np.broadcast_to(where, z.shape), -1)
  if labels is not None:
    hard = cross_entropy_options(student_logits, labels, where=where, ignore_index=ignore_index)
    d = alpha * hard + (1 - alpha) * d
    if ignore_index is not None:
      valid &= np.asarray(labels) != ignore_index
  d = np.where(valid, d, 0.0)
  return reduce(d, reduction, valid, normalizer)


def top_k_kl_divergence(logits, ids, log_probs, tail="renormalize", where=None):
  """Sparse-teacher KL from explicit distributions over the top-k (+ rest) outcomes (last axis)."""
  lq = log_softmax(logits, where=where)
  ids = np.asarray(ids)
  lq_k = np.take_along_axis(lq, ids, -1)
  lp_k = f64(log_probs)
  if tail == "renormalize":
    return kl(np.exp(log_softmax(lp_k)), log_softmax(lq_k), log_softmax(lp_k))
  q_rest = np.exp(lq).sum(-1) - np.exp(lq_k).sum(-1)
  rest_mask = np.ones(lq.shape, bool)
  np.put_along_axis(rest_mask, ids, False, -1)
  rest_empty = ~np.any(rest_mask & (lq > -np.inf), -1)
  with np.errstate(divide="ignore"):
    lq_rest = np.where(rest_empty, -np.inf, _lse(np.where(rest_mask, lq, -np.inf)))
    p_rest = np.where(rest_empty, 0.0, np.maximum(1 - np.exp(lp_k).sum(-1), 0.0))
    lp_rest = np.log(p_rest)
  del q_rest
  lq_b = np.concatenate([lq_k, lq_rest[..., None]], -1)
  lp_b = np.concatenate([lp_k, lp_rest[..., None]], -1)
  lp_b = log_softmax(lp_b)
  return kl(np.exp(lp_b), log_softmax(lq_b), lp_b)


def kl_estimator(log_probs, ref_log_probs, kind="k3", axis=None, where=None):
  """Schulman's k1/k2/k3 with r = π_ref/π; k3 by a series for small |log r| (no cancellation)."""
  lp, ref = f64(log_probs), f64(ref_log_probs)
  if where is not None:
    lp, ref = np.where(where, lp, 0.0), np.where(where, ref, 0.0)
  with np.errstate(invalid="ignore", over="ignore"):
    d = ref - lp
    if kind == "k1":
      terms = -d
    elif kind == "k2":
      terms = 0.5 * d**2
    else:
      series = d**2 / 2 + d**3 / 6 + d**4 / 24 + d**5 / 120
      terms = np.where(np.abs(d) < 1e-3, series, np.expm1(d) - d)
      terms = np.where(d == np.inf, np.inf, terms)
  return _sum(terms, axis, where)


# --------------------------------------------------------------------------- #
# 40-digit references (mpmath) for the float64 accuracy tests (issue 15)
# --------------------------------------------------------------------------- #
# Each takes float64 inputs, evaluates the textbook formula on their exact
# binary values in 40-digit arithmetic, and returns float64. Cancellation in the
# textbook form costs digits of the 40, not of the 16 the result keeps.


def _mp():
  import mpmath

  mpmath.mp.dps = 40
  return mpmath


def _mp_vectorize(fn, *arrays):
  arrays = np.broadcast_arrays(*[np.asarray(a, np.float64) for a in arrays])
  out = np.empty(arrays[0].shape)
  for idx in np.ndindex(out.shape):
    out[idx] = float(fn(*[float(a[idx]) for a in arrays]))
  return out


def phi_exact(d):
  """``expm1(d) - d`` to 40 digits."""
  mp = _mp()
  return _mp_vectorize(lambda x: mp.expm1(mp.mpf(x)) - mp.mpf(x), d)


def psi_exact(r):
  """``r - log1p(r)`` to 40 digits."""
  mp = _mp()
  return _mp_vectorize(lambda x: mp.mpf(x) - mp.log1p(mp.mpf(x)), r)


def _mp_log_vars(lv1, lv2, parameterization):
  mp = _mp()
  f = 1 if parameterization == "log_var" else 2
  return f * mp.mpf(lv1), f * mp.mpf(lv2)


def gaussian_kl_exact(mean, log_var, target_mean, target_log_var, parameterization="log_var", axis=-1):
  """Diagonal-Gaussian KL, per dimension in 40 digits, summed (in float64) over ``axis``."""
  mp = _mp()

  def term(m1, s1, m2, s2):
    a, b = _mp_log_vars(s1, s2, parameterization)
    return (mp.exp(a - b) - 1 - (a - b) + (mp.mpf(m1) - mp.mpf(m2)) ** 2 * mp.exp(-b)) / 2

  return _sum_exact(_mp_vectorize(term, mean, log_var, target_mean, target_log_var), axis)


def gaussian_cross_entropy_exact(mean, log_var, target_mean, target_log_var, parameterization="log_var",
                                 axis=-1):
  """``-E_p log q`` for diagonal Gaussians: ½(log 2π + log σ₂² + (σ₁² + (μ₁ − μ₂)²)/σ₂²)."""
  mp = _mp()

  def term(m1, s1, m2, s2):
    a, b = _mp_log_vars(s1, s2, parameterization)
    return (mp.log(2 * mp.pi) + b + (mp.exp(a) + (mp.mpf(m1) - mp.mpf(m2)) ** 2) / mp.exp(b)) / 2

  return _sum_exact(_mp_vectorize(term, mean, log_var, target_mean, target_log_var), axis)


def gaussian_entropy_exact(log_var, parameterization="log_var", axis=-1):
  mp = _mp()

  def term(s):
    a, _ = _mp_log_vars(s, s, parameterization)
    return (1 + mp.log(2 * mp.pi) + a) / 2

  return _sum_exact(_mp_vectorize(term, log_var), axis)


def _sum_exact(terms, axis):
  """A float64 sum of 40-digit terms: exact enough when the terms share a sign (they do for KL)."""
  if axis is None:
    return terms
  return np.asarray(np.sum(terms, axis=axis))


def _mp_matrix(a):
  mp = _mp()
  return mp.matrix([[mp.mpf(float(x)) for x in row] for row in np.tril(a)])


def _mvn_one(m1, l1, m2, l2, kind):
  """KL, cross-entropy or entropy of one pair of MVNs given by Cholesky factors, in 40 digits."""
  mp = _mp()
  k = len(m1)
  a, b = _mp_matrix(l1), _mp_matrix(l2)
  logdet = lambda tril: sum(mp.log(abs(tril[i, i])) for i in range(k))
  half_log_2pi = mp.log(2 * mp.pi) / 2
  if kind == "entropy":
    return k * (half_log_2pi + mp.mpf(1) / 2) + logdet(a)
  b_inv = mp.inverse(b)
  m = b_inv * a
  frob = sum(m[i, j] ** 2 for i in range(k) for j in range(k))
  dm = mp.matrix([mp.mpf(float(x)) - mp.mpf(float(y)) for x, y in zip(m1, m2)])
  y = b_inv * dm
  maha = sum(y[i] ** 2 for i in range(k))
  if kind == "kl":
    return (frob - k + maha) / 2 + logdet(b) - logdet(a)
  return k * half_log_2pi + logdet(b) + (frob + maha) / 2


def mvn_exact(kind, mean, scale_tril, target_mean=None, target_scale_tril=None):
  """``kind`` in {"kl", "cross_entropy", "entropy"} over broadcast batches, float64 out."""
  m1, l1 = np.asarray(mean, np.float64), np.asarray(scale_tril, np.float64)
  m2 = m1 if target_mean is None else np.asarray(target_mean, np.float64)
  l2 = l1 if target_scale_tril is None else np.asarray(target_scale_tril, np.float64)
  k = m1.shape[-1]
  batch = np.broadcast_shapes(m1.shape[:-1], l1.shape[:-2], m2.shape[:-1], l2.shape[:-2])
  m1, m2 = (np.broadcast_to(x, batch + (k,)) for x in (m1, m2))
  l1, l2 = (np.broadcast_to(x, batch + (k, k)) for x in (l1, l2))
  out = np.empty(batch)
  for idx in np.ndindex(batch):
    out[idx] = float(_mvn_one(m1[idx], l1[idx], m2[idx], l2[idx], kind))
  return out


def bernoulli_exact(kind, logits, target_logits=None):
  """KL(Bern(σ(a)) ‖ Bern(σ(b))), cross-entropy or entropy (``target_logits`` unused), 40 digits.

  ``logits`` (``a``) parameterise the first distribution, the one the expectation is under.
  """
  mp = _mp()

  def one(a, b):
    a = mp.mpf(a)
    p, lp, lp0 = _mp_bern(a)
    xlogy = lambda lq, lq0: (p * lq if p else 0) + ((1 - p) * lq0 if p != 1 else 0)  # 0 log 0 = 0
    if kind == "entropy":
      return -xlogy(lp, lp0)
    _, lq, lq0 = _mp_bern(mp.mpf(b))
    if kind == "cross_entropy":
      return -xlogy(lq, lq0)
    return xlogy(lp, lp0) - xlogy(lq, lq0)

  return _mp_vectorize(one, logits, logits if target_logits is None else target_logits)


def _mp_bern(a):
  """(p, log p, log(1 − p)) for logit ``a`` (±inf allowed)."""
  mp = _mp()
  if a == mp.inf:
    return mp.mpf(1), mp.mpf(0), -mp.inf
  if a == -mp.inf:
    return mp.mpf(0), -mp.inf, mp.mpf(0)
  return 1 / (1 + mp.exp(-a)), -mp.log1p(mp.exp(-a)), -mp.log1p(mp.exp(a))


def categorical_exact(kind, logits, target_logits=None):
  """KL(Cat(softmax a) ‖ Cat(softmax b)), cross-entropy or entropy over the last axis, 40 digits.

  ``logits`` parameterise the first distribution; ``-inf`` entries are classes of probability 0.
  """
  mp = _mp()
  a = np.asarray(logits, np.float64)
  b = a if target_logits is None else np.asarray(target_logits, np.float64)
  batch = np.broadcast_shapes(a.shape[:-1], b.shape[:-1])
  a, b = np.broadcast_to(a, batch + a.shape[-1:]), np.broadcast_to(b, batch + b.shape[-1:])
  out = np.empty(batch)

  def log_softmax(z):
    z = [mp.mpf(float(x)) for x in z]
    lse = mp.log(sum(mp.exp(x) for x in z if x != -mp.inf))
    return [x - lse for x in z]

  for idx in np.ndindex(batch):
    la, lb = log_softmax(a[idx]), log_softmax(b[idx])
    pairs = [(mp.exp(x), x, y) for x, y in zip(la, lb) if x != -mp.inf]
    if kind == "entropy":
      total = -sum(p * x for p, x, _ in pairs)
    elif kind == "cross_entropy":
      total = -sum(p * y for p, _, y in pairs)
    else:
      total = sum(p * (x - y) for p, x, y in pairs)
    out[idx] = float(total)
  return out


# --------------------------------------------------------------------------- #
# Binary options and peer formulas (issue 13: optax and torch semantics)
# --------------------------------------------------------------------------- #


def binary_cross_entropy_options(logits, targets, pos_weight=None, label_smoothing=0.0, axis=None,
                                 where=None):
  """torch's ``BCEWithLogitsLoss(pos_weight)`` on targets smoothed to ``y (1 - ε) + ε/2``."""
  z, y = f64(logits), f64(targets)
  y = y * (1 - label_smoothing) + label_smoothing / 2
  w = 1.0 if pos_weight is None else f64(pos_weight)
  terms = -_xlogq(w * y, _log_sigmoid(z)) - _xlogq(1 - y, _log_sigmoid(-z))
  return _sum(terms, axis, where)


def _one_minus_pt(z, y):
  """``(1 - y) σ(z) + y σ(-z)`` from the log-sigmoids (exact at ±inf)."""
  with np.errstate(invalid="ignore", over="ignore"):
    return (1 - y) * np.exp(_log_sigmoid(z)) + y * np.exp(_log_sigmoid(-z))


def sigmoid_focal_loss(logits, targets, alpha=None, gamma=2.0, axis=None, where=None):
  """Lin et al. (2017): ``α_t (1 - p_t)^γ BCE``, with ``0 · inf`` = 0 where ``1 - p_t = 0``."""
  z, y = f64(logits), f64(targets)
  bce = binary_cross_entropy(z, y)
  w = _one_minus_pt(z, y) ** gamma
  with np.errstate(invalid="ignore"):
    terms = np.where(w == 0, 0.0, w * bce)
  if alpha is not None:
    terms = (alpha * y + (1 - alpha) * (1 - y)) * terms
  return _sum(terms, axis, where)


def binary_poly_loss(logits, targets, epsilon=1.0, axis=None, where=None):
  """Leng et al. (2022), Poly-1 on sigmoid outputs: ``BCE + ε (1 - p_t)``."""
  z, y = f64(logits), f64(targets)
  return _sum(binary_cross_entropy(z, y) + epsilon * _one_minus_pt(z, y), axis, where)


def optax_kl_divergence(log_predictions, targets, axis=-1, where=None):
  """optax 0.2.8's formula ``Σ p (log p - log_predictions)``, nothing normalised, 0·anything = 0 at p = 0."""
  x, p = f64(log_predictions), f64(targets)
  with np.errstate(divide="ignore", invalid="ignore"):
    terms = np.where(p == 0, 0.0, p * (np.log(np.where(p == 0, 1.0, p)) - x))
  if where is not None:
    terms = np.where(where, terms, 0.0)
  return terms.sum(axis)


def optax_kl_divergence_with_log_targets(log_predictions, log_targets, axis=-1, where=None):
  """optax 0.2.8's formula ``Σ exp(t) (t - log_predictions)``, with 0 where ``t = -inf``."""
  x, t = f64(log_predictions), f64(log_targets)
  with np.errstate(invalid="ignore"):
    terms = np.where(t == -np.inf, 0.0, np.exp(t) * (t - x))
  if where is not None:
    terms = np.where(where, terms, 0.0)
  return terms.sum(axis)


def torch_cross_entropy(logits, labels, weight=None, ignore_index=-100, reduction="mean",
                        label_smoothing=0.0):
  """A float64 port of ``torch.nn.functional.cross_entropy`` (integer targets), logits ``[N, C]``.

  With ``ε = label_smoothing``, class weights ``w`` (ones if None) and the
  rows ``n`` whose label is not ``ignore_index``:

    nll_n = -w[y_n] log q[n, y_n]
    smooth_n = -Σ_c w_c log q[n, c] / C
    loss_n = (1 - ε) nll_n + ε smooth_n       (0 for an ignored row)

  ``reduction="mean"`` divides Σ_n loss_n by Σ_n w[y_n] over the kept rows —
  both the NLL and the smoothing term, although the smoothing term is weighted
  per class, not by ``w[y_n]``. ``"sum"`` returns the sum, ``"none"`` the
  vector. (torch/aten/src/ATen/native/LossNLL.cpp, cross_entropy_loss_label_smoothing.)
  """
  z = f64(logits)
  y = np.asarray(labels)
  n, c = z.shape
  w = np.ones(c) if weight is None else f64(weight)
  lq = log_softmax(z)
  keep = y != ignore_index
  y_safe = np.where(keep, y, 0)
  w_y = np.where(keep, w[y_safe], 0.0)
  nll = -w_y * lq[np.arange(n), y_safe]
  smooth = np.where(keep, -(lq * w).sum(-1) / c, 0.0)
  loss = (1 - label_smoothing) * nll + label_smoothing * smooth
  if reduction == "none":
    return loss
  if reduction == "sum":
    return loss.sum()
  return loss.sum() / w_y.sum()


def mvn_exact_general(kind, mean, a, target_mean=None, target_a=None, given=("scale", "scale")):
  """As :func:`mvn_exact` for any square scale ``S`` (``Σ = S Sᵀ``, formed in 40 digits) or a covariance.

  ``given[i]`` says whether the i-th matrix is a "scale" or a "covariance"; each is used exactly as
  passed (no triangle is taken), so upper, general and diagonal-plus-low-rank scales all work.
  """
  mp = _mp()
  m1, a1 = np.asarray(mean, np.float64), np.asarray(a, np.float64)
  m2 = m1 if target_mean is None else np.asarray(target_mean, np.float64)
  a2 = a1 if target_a is None else np.asarray(target_a, np.float64)
  k = m1.shape[-1]
  batch = np.broadcast_shapes(m1.shape[:-1], a1.shape[:-2], m2.shape[:-1], a2.shape[:-2])
  m1, m2 = (np.broadcast_to(x, batch + (k,)) for x in (m1, m2))
  a1, a2 = (np.broadcast_to(x, batch + (k, k)) for x in (a1, a2))

  def cov(x, what):
    x = mp.matrix([[mp.mpf(float(v)) for v in row] for row in x])
    return x * x.T if what == "scale" else x

  out = np.empty(batch)
  for idx in np.ndindex(batch):
    s1, s2 = cov(a1[idx], given[0]), cov(a2[idx], given[1])
    log_det = lambda s: mp.log(mp.det(s))
    log_2pi = mp.log(2 * mp.pi)
    if kind == "entropy":
      out[idx] = float((k * (1 + log_2pi) + log_det(s1)) / 2)
      continue
    inv = mp.inverse(s2)
    dm = mp.matrix([mp.mpf(float(x)) - mp.mpf(float(y)) for x, y in zip(m1[idx], m2[idx])])
    trace = sum((inv * s1)[i, i] for i in range(k))
    maha = (dm.T * inv * dm)[0, 0]
    if kind == "kl":
      out[idx] = float((trace - k + maha + log_det(s2) - log_det(s1)) / 2)
    else:
      out[idx] = float((k * log_2pi + log_det(s2) + trace + maha) / 2)
  return out


def torch_kl_div(input, target, log_target=False, reduction="none"):
  """A float64 port of ``torch.nn.functional.kl_div``: element-wise ``p (log p - input)``, then the reduction.

  ``input`` holds log-probabilities; ``target`` probabilities (``0 · log 0 = 0``, torch's ``xlogy``) or,
  with ``log_target``, log-probabilities. ``"mean"`` divides by the number of elements, ``"batchmean"``
  by ``input.shape[0]``.
  """
  x, t = f64(input), f64(target)
  with np.errstate(invalid="ignore", divide="ignore"):
    out = np.exp(t) * (t - x) if log_target else special.xlogy(t, t) - t * x
  out = np.where(np.exp(t) == 0 if log_target else t == 0, 0.0, out)
  if reduction == "none":
    return out
  if reduction == "sum":
    return out.sum()
  if reduction == "mean":
    return out.sum() / out.size
  return out.sum() / out.shape[0]
