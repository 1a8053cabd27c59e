"""The log-space core that every jaxdiv loss is built from.

Four primitives, each with a custom JVP rule so that forward mode, reverse mode
(derived by JAX from the JVP), ``vmap`` and higher derivatives all see the same
finite derivatives:

* :func:`log_softmax` — log-probabilities and logsumexp along an axis, with the
  max shift taken first so that ``|logits|`` up to ``1e30`` keep full relative
  accuracy, ``-inf`` entries (masked classes) giving ``-inf`` with zero
  derivative, and an all ``-inf`` row giving ``-inf`` everywhere, never NaN.
* :func:`mul_safe` — ``x * y`` with ``0 * (±inf) = 0`` in value and derivative.
* :func:`kl_terms` — the pointwise generalised KL term ``p log(p/q) - p + q``,
  non-negative and accurate when ``p ≈ q``.
* :func:`log_mix` — ``log(β p + (1 - β) q)`` from ``log p`` and ``log q``.

A numerical fix belongs here, once, rather than in the individual losses.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

_NEG_INF = -jnp.inf


def compute_dtype(*dtypes: jnp.dtype) -> jnp.dtype:
  """The dtype losses accumulate in: float32, or float64 if an input is float64."""
  wide = any(jnp.dtype(d) == jnp.float64 for d in dtypes)
  return jnp.dtype(jnp.float64 if wide else jnp.float32)


# --------------------------------------------------------------------------- #
# log_softmax
# --------------------------------------------------------------------------- #


def _log_softmax_primal(x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  shift = jnp.max(x, axis=axis, keepdims=True)
  # A row of -inf (fully masked) has no finite max: shift by 0 so that the
  # shifted row is -inf, its sum 0 and its logsumexp -inf.
  shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(shift), shift, 0))
  shifted = x - shift
  sum_exp = jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True)
  log_sum = jnp.log(sum_exp)
  # Subtracting the log-sum from the *shifted* logits (not the full logsumexp
  # from the raw logits) keeps ties at 1e30 exact: log 2, not 0.
  log_probs = shifted - jnp.where(sum_exp > 0, log_sum, 0)
  return log_probs, shift, log_sum


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def log_softmax(x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Log-probabilities of ``x`` along ``axis``, with the logsumexp in two parts.

  Args:
    x: floating array; masked entries must already be ``-inf``.
    axis: the class axis (a non-negative int).

  Returns:
    ``(log_probs, shift, log_sum)``: ``log_probs.shape == x.shape``; ``shift``
    (the row max, 0 for an all ``-inf`` row; zero derivative) and ``log_sum``
    keep ``axis`` as a size-1 dimension, and ``shift + log_sum`` is the
    logsumexp. Kept apart because at ``|x| ~ 1e30`` their sum rounds away
    ``log_sum``. ``-inf`` entries give ``-inf`` log-probabilities with zero
    derivative; an all ``-inf`` row gives ``log_sum = -inf``.
  """
  return _log_softmax_primal(x, axis)


@log_softmax.defjvp
def _log_softmax_jvp(axis, primals, tangents):
  (x,), (dx,) = primals, tangents
  log_probs, shift, log_sum = log_softmax(x, axis)
  probs = jnp.exp(log_probs)  # exactly 0 at -inf entries and in empty rows
  dx = jnp.where(x == _NEG_INF, 0, dx)
  dlog_sum = jnp.sum(probs * dx, axis=axis, keepdims=True)
  dlog_probs = jnp.where(log_probs == _NEG_INF, 0, dx - dlog_sum)
  return (log_probs, shift, log_sum), (dlog_probs, jnp.zeros_like(shift), dlog_sum)


# --------------------------------------------------------------------------- #
# mul_safe
# --------------------------------------------------------------------------- #


@jax.custom_jvp
def mul_safe(x: jax.Array, y: jax.Array) -> jax.Array:
  """``x * y`` where ``x == 0`` gives 0 even if ``y`` is ``±inf``.

  Derivatives: ``∂/∂y = x`` and ``∂/∂x = y``, except that ``∂/∂x`` is 0 at the
  points ``x == 0, y == ±inf`` (the product is 0 on the whole line ``x = 0``;
  its one-sided derivative there is infinite).
  """
  return jnp.where(x == 0, jnp.zeros_like(y), x * y)


@mul_safe.defjvp
def _mul_safe_jvp(primals, tangents):
  (x, y), (dx, dy) = primals, tangents
  y_safe = jnp.where((x == 0) & jnp.isinf(y), jnp.zeros_like(y), y)
  return mul_safe(x, y), y_safe * dx + x * dy


# --------------------------------------------------------------------------- #
# kl_terms
# --------------------------------------------------------------------------- #


def _kl_parts(target, log_q, target_is_log):
  """p, q and d = log q - log p (0 where p = 0), computed without NaN."""
  if target_is_log:
    p = jnp.exp(target)
    support = p > 0
    log_p = jnp.where(support, target, 0)
  else:
    p = target
    support = p > 0
    log_p = jnp.log(jnp.where(support, p, 1))
  q = jnp.exp(log_q)
  d = jnp.where(support, log_q - log_p, 0)
  return p, q, d, support


def _phi(d: jax.Array) -> jax.Array:
  """``expm1(d) - d = d²/2 + d³/6 + …`` to full relative precision.

  For ``|d| < 1/4`` a Horner series (truncation below 1e-9 relative), since
  ``expm1(d) - d`` itself cancels to ~1e-3 relative at ``|d| = 1e-4``; beyond
  that the direct form, which loses at most a factor 8.
  """
  small = jnp.abs(d) < 0.25
  ds = jnp.where(small, d, 0)
  series = ds
  for k in range(8, 1, -1):  # 1/2 + d/6 + … + d^6/8!
    series = 1.0 / math.factorial(k) + ds * series if k < 8 else jnp.full_like(ds, 1.0 / math.factorial(8))
  return jnp.where(small, ds * ds * series, jnp.expm1(d) - d)


def _kl_term(p, log_p, d, q_off_support, support):
  """``p (e^d - 1 - d)`` on the support of p, the model mass off it."""
  near = p * _phi(d)
  far = jnp.exp(log_p + d) - p * (1 + d)  # same value; no overflow of p·e^d
  return jnp.where(support, jnp.where(jnp.abs(d) < 1, near, far), q_off_support)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def kl_terms(target: jax.Array, log_q: jax.Array, target_is_log: bool) -> jax.Array:
  """Pointwise ``p log(p/q) - p + q``, from ``p`` (or ``log p``) and ``log q``.

  Each term is non-negative and their sum over a normalised pair is KL(p‖q).
  With ``d = log q - log p`` the term is ``p (expm1(d) - d)``: for ``|d| < 1``
  that form is evaluated directly, so nearly equal distributions (KL ≈ 1e-9)
  keep their relative accuracy instead of cancelling; for larger ``|d|`` the
  equal form ``q - p (1 + d)`` avoids overflow of ``p expm1(d)``.

  Where ``p = 0`` the term is ``q`` (and 0 if ``q = 0`` as well); where
  ``p > 0 = q`` it is ``+inf``.

  Derivatives: ``∂/∂log q = q - p``; ``∂/∂log p = p (log p - log q)`` for a
  log-space target, ``∂/∂p = log p - log q`` for a probability target, both
  defined as 0 where ``p = 0``.
  """
  p, q, d, support = _kl_parts(target, log_q, target_is_log)
  return _kl_term(p, jnp.where(support, jnp.log(jnp.where(support, p, 1)), 0), d, q, support)


@kl_terms.defjvp
def _kl_terms_jvp(target_is_log, primals, tangents):
  (target, log_q), (dtarget, dlog_q) = primals, tangents
  p, q, d, _ = _kl_parts(target, log_q, target_is_log)
  d_target = -p * d if target_is_log else -d
  out = kl_terms(target, log_q, target_is_log)
  return out, (q - p) * dlog_q + d_target * dtarget


# --------------------------------------------------------------------------- #
# log_mix
# --------------------------------------------------------------------------- #


def _log_mix_parts(log_p, log_q, beta):
  a = log_p + jnp.log(jnp.asarray(beta, log_p.dtype))
  b = log_q + jnp.log(jnp.asarray(1 - beta, log_q.dtype))
  shift = jnp.maximum(a, b)
  shift = jnp.where(jnp.isfinite(shift), shift, 0)
  log_m = shift + jnp.log(jnp.exp(a - shift) + jnp.exp(b - shift))
  return a, b, log_m


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def log_mix(log_p: jax.Array, log_q: jax.Array, beta: float) -> jax.Array:
  """``log(β p + (1 - β) q)`` for ``0 < β < 1``; ``-inf`` where ``p = q = 0``.

  Derivatives are the mixture weights ``β p / m`` and ``(1 - β) q / m``, and 0
  where ``m = 0`` (``jnp.logaddexp`` is NaN there).
  """
  return _log_mix_parts(log_p, log_q, beta)[2]


@log_mix.defjvp
def _log_mix_jvp(beta, primals, tangents):
  (log_p, log_q), (dlog_p, dlog_q) = primals, tangents
  a, b, _ = _log_mix_parts(log_p, log_q, beta)
  # log m through the custom function, so that second derivatives use this rule
  # too (differentiating the plain formula at p = q = 0 gives 0 · inf = NaN).
  log_m = log_mix(log_p, log_q, beta)
  empty = log_m == _NEG_INF
  w_p = jnp.exp(jnp.where(empty, _NEG_INF, a - log_m))
  w_q = jnp.exp(jnp.where(empty, _NEG_INF, b - log_m))
  return log_m, w_p * dlog_p + w_q * dlog_q


# --------------------------------------------------------------------------- #
# kl_rows: KL(p‖q) along an axis, from raw logits
# --------------------------------------------------------------------------- #


def _kl_rows_parts(target, logits, axis, target_is_log):
  """Value of :func:`kl_rows` and the quantities its derivative needs.

  ``d = log q - log p`` is formed as ``(z - t) - offset`` with the per-row
  constant ``offset = lse(z) - lse(t)``: for nearly equal logits ``z - t`` is
  exact, whereas ``log q - log p`` from two separately rounded log-softmaxes
  carries ~1e-6 of noise per class, whose square alone is 1e-4 of a KL of 5e-9.
  The rounding left in the constant is then removed by renormalising
  ``q' = p e^d`` (on the support of p; q off it) to the mass of p.
  """
  log_q, shift_z, log_sum_z = log_softmax(logits, axis)
  if target_is_log:
    log_p, shift_t, log_sum_t = log_softmax(target, axis)
    raw_t = target
  else:
    positive = target > 0
    log_p = jnp.where(positive, jnp.log(jnp.where(positive, target, 1)), _NEG_INF)
    raw_t, shift_t, log_sum_t = log_p, 0, 0
  p = jnp.exp(log_p)
  support = p > 0
  offset = (shift_z - shift_t) + (log_sum_z - log_sum_t)
  offset = jnp.where(jnp.isfinite(offset), offset, 0)
  d = jnp.where(support, (logits - jnp.where(support, raw_t, 0)) - offset, 0)
  q_out = jnp.where(support, 0, jnp.exp(log_q))
  # Normalise q' to the computed mass of p (1 up to rounding), not to 1: then
  # equal logits give d = 0 and KL exactly 0, and for a target whose mass S is
  # not exactly 1 the value is S·KL(p/S ‖ q).
  mass = jnp.sum(jnp.where(support, jnp.exp(log_p + d), q_out), axis=axis, keepdims=True)
  p_mass = jnp.sum(p, axis=axis, keepdims=True)
  ratio = jnp.where((mass > 0) & (p_mass > 0), mass / jnp.where(p_mass > 0, p_mass, 1), 1)
  d, q_out = d - jnp.log(ratio), q_out / ratio
  terms = _kl_term(p, log_p, d, q_out, support)
  return jnp.sum(terms, axis=axis), p, log_p, log_q, support


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def kl_rows(target: jax.Array, logits: jax.Array, axis: int, target_is_log: bool) -> jax.Array:
  """KL(p ‖ softmax(logits)) summed over ``axis``.

  Args:
    target: target logits (``target_is_log``; masked entries ``-inf``) or target
      probabilities (masked entries 0), same shape as ``logits``.
    logits: model logits, masked entries ``-inf``.
    axis: the class axis (non-negative int).
    target_is_log: how ``target`` is given.

  Returns:
    ``logits.shape`` without ``axis``: ``S·KL(p/S ‖ q)`` with ``S = Σ p``, which
    is KL(p‖q) for normalised ``p`` (and agrees with ``Σ p log(p/q) - S + 1`` to
    second order in ``S - 1``); never negative, exactly 0 for equal logits.

  Derivatives (analytic): ``∂/∂z = q - p``; ``∂/∂t = p (log p - log q - KL)``
  for logit targets; ``∂/∂p = log p - log q`` for probability targets, defined
  as 0 where ``p = 0``.
  """
  return _kl_rows_parts(target, logits, axis, target_is_log)[0]


@kl_rows.defjvp
def _kl_rows_jvp(axis, target_is_log, primals, tangents):
  (target, logits), (dtarget, dlogits) = primals, tangents
  value, p, log_p, log_q, support = _kl_rows_parts(target, logits, axis, target_is_log)
  q = jnp.exp(log_q)
  dlogits = jnp.where(logits == _NEG_INF, 0, dlogits)
  log_ratio = jnp.where(support, log_p - jnp.where(support, log_q, 0), 0)
  log_ratio = jnp.where(support & (log_q == _NEG_INF), jnp.inf, log_ratio)
  if target_is_log:
    coeff = mul_safe(p, log_ratio - jnp.expand_dims(value, axis))
  else:
    coeff = log_ratio
  dtarget = jnp.where(support, dtarget, 0)
  tangent = jnp.sum((q - p) * dlogits, axis=axis) + jnp.sum(coeff * dtarget, axis=axis)
  return value, tangent
