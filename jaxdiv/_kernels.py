"""The log-space primitives that every jaxdiv loss is built from.

Each has a custom JVP rule so that forward mode, reverse mode (derived by JAX
from the JVP), ``vmap`` and higher derivatives all see the same finite
derivatives:

* :func:`log_softmax` — log-probabilities and logsumexp along an axis, with the
  max shift taken first so that ``|logits|`` up to ``1e30`` keep full relative
  accuracy, ``-inf`` entries (masked classes) giving ``-inf`` with zero
  derivative, and an all ``-inf`` row giving ``-inf`` everywhere, never NaN.
* :func:`mul_safe` — ``x * y`` with ``0 * (±inf) = 0`` in value and derivative.
* :func:`kl_term` / :func:`kl_terms` — the pointwise generalised KL term
  ``p log(p/q) - p + q``, non-negative and accurate when ``p ≈ q``.
* :func:`log_mix` — ``log(β p + (1 - β) q)`` from ``log p`` and ``log q``.
* :func:`soft_cross_entropy_rows` — ``-Σ p log softmax(x)`` with its one-pass
  gradient.

The losses themselves are defined once in :mod:`jaxdiv._core` and driven over
whole rows by :mod:`jaxdiv._row_losses`. A numerical fix belongs in one of
these modules, once, rather than in the individual losses.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxdiv import _series
from jaxdiv._rows import (
  compute_dtype,
  finite_or_zero,
  lse_parts,
  masked_tangent,
  probs,
  row_lse,
  row_reduce,
  widen,
)

_NEG_INF = -jnp.inf

# --------------------------------------------------------------------------- #
# log_softmax
# --------------------------------------------------------------------------- #


def _log_softmax_primal(x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  shift = jnp.max(x, axis=axis, keepdims=True)
  # A row of -inf (fully masked) has no finite max: shift by 0 so that the
  # shifted row is -inf, its sum 0 and its logsumexp -inf.
  shift = jax.lax.stop_gradient(finite_or_zero(shift))
  shifted = x - shift
  sum_exp = jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True)
  log_sum = jnp.log(sum_exp)
  # Subtracting the log-sum from the *shifted* logits (not the full logsumexp
  # from the raw logits) keeps ties at 1e30 exact: log 2, not 0.
  # An empty row (sum 0) keeps its -inf entries; a NaN sum (a NaN logit) makes every entry NaN.
  log_probs = shifted - jnp.where(sum_exp == 0, 0, log_sum)
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


def kl_term(p: jax.Array, q: jax.Array, d: jax.Array) -> jax.Array:
  """``p (e^d - 1 - d)`` given ``q = p e^d``: the series for ``|d| < 1/2``, else ``q - p (1 + d)``.

  Nearly equal distributions (KL ≈ 1e-9) keep their relative accuracy instead
  of cancelling; beyond ``|d| = 1/2`` the direct form cancels by at most a
  factor 11 (``e^d / φ(d)`` there), so no ``expm1`` is needed, and ``q`` is
  formed by the caller as ``exp(log p + d)``, which cannot overflow.
  """
  near = jnp.abs(d) < 0.5
  return jnp.where(near, p * _series.phi_series(jnp.where(near, d, 0)), q - p * (1 + d))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def kl_terms(target: jax.Array, log_q: jax.Array, target_is_log: bool) -> jax.Array:
  """Pointwise ``p log(p/q) - p + q``, from ``p`` (or ``log p``) and ``log q``.

  Each term is non-negative and their sum over a normalised pair is KL(p‖q).
  With ``d = log q - log p`` the term is ``p (expm1(d) - d)``, evaluated by
  :func:`kl_term`.

  Where ``p = 0`` the term is ``q`` (and 0 if ``q = 0`` as well); where
  ``p > 0 = q`` it is ``+inf``.

  Derivatives: ``∂/∂log q = q - p``; ``∂/∂log p = p (log p - log q)`` for a
  log-space target, ``∂/∂p = log p - log q`` for a probability target, both
  defined as 0 where ``p = 0``.
  """
  p, q, d, support = _kl_parts(target, log_q, target_is_log)
  log_p = jnp.where(support, jnp.log(jnp.where(support, p, 1)), 0)
  return jnp.where(support, kl_term(p, jnp.exp(log_p + d), d), q)


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
  shift = finite_or_zero(shift)
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
# soft_cross_entropy_rows: -Σ p log softmax(x) along an axis
# --------------------------------------------------------------------------- #


def _shift_norm(x: jax.Array, axis: int, cdt) -> tuple[jax.Array, jax.Array]:
  """The finite shift and the log-sum of ``x``'s rows (see :func:`jaxdiv._rows.row_lse`)."""
  m, norm = row_lse(x, axis, cdt)
  return finite_or_zero(m), norm


def _neg_log_q(x, p, shift, norm):
  """``-log softmax(x)``, with 0 where ``p = 0`` and the logit is ``-inf``."""
  hi, lo = lse_parts(shift, norm)
  xw = widen(x, hi.dtype)
  return jnp.where((p == 0) & (xw == _NEG_INF), 0, (hi - xw) + lo)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def soft_cross_entropy_rows(x: jax.Array, p: jax.Array, axis: int) -> jax.Array:
  """``-Σ p log softmax(x)`` along ``axis`` with ``0 · log 0 = 0``.

  Args:
    x: logits in any floating dtype; masked entries ``-inf``.
    p: target weights, same shape (masked entries 0); need not sum to 1.
    axis: the class axis (non-negative).

  Returns:
    ``x.shape`` without ``axis``, in the compute dtype; ``+inf`` where ``p > 0``
    on a ``-inf`` logit.

  Derivatives: ``∂/∂x = (Σ p) softmax(x) - p``; ``∂/∂p = -log softmax(x)``,
  taken as 0 where ``p = 0`` and the logit is ``-inf``.
  """
  cdt = compute_dtype(x.dtype, p.dtype)
  shift, norm = _shift_norm(x, axis, cdt)
  hi, lo = lse_parts(shift.astype(cdt), norm.astype(cdt))
  # The summands are kept free of selects and compares, which XLA:CPU cannot
  # fuse into a reduction (it would write them out at full size first): -inf
  # logits are clamped to a finite -big so that p = 0 gives 0, and target mass
  # on them is found by a max over min(p·2^126, 1)·(-clamped x), which is at
  # least big/2 there (for any normal p) and at most ~|x| elsewhere.
  # (Narrower inputs keep the select: their widening cannot be fused into the
  # reduction either, so there the terms are written out once, at full size.)
  if x.dtype != cdt or p.dtype != cdt:

    def selected(x, p, hi, lo):
      pc, xw = widen(p, cdt), widen(x, cdt)
      return (jnp.where((pc == 0) & (xw == _NEG_INF), 0, pc * ((hi - xw) + lo)),)

    (total,) = row_reduce(selected, (x, p), (hi, lo), axis, ("sum",))
    return jnp.squeeze(total, axis)
  big = jnp.finfo(cdt).max / 4

  def select_free(x, p, hi, lo):
    return p * ((hi - jnp.maximum(x, -big)) + lo), jnp.minimum(p * 2.0**126, 1) * jnp.minimum(-x, big)

  total, flag = row_reduce(select_free, (x, p), (hi, lo), axis, ("sum", "max"))
  return jnp.squeeze(jnp.where(flag >= big / 2, jnp.inf, total), axis)


@soft_cross_entropy_rows.defjvp
def _soft_cross_entropy_rows_jvp(axis, primals, tangents):
  (x, p), (dx, dp) = primals, tangents
  value = soft_cross_entropy_rows(x, p, axis)
  cdt = value.dtype
  shift, norm = _shift_norm(x, axis, cdt)
  pc = widen(p, cdt)
  (mass,) = row_reduce(lambda p: (p.astype(cdt),), (p,), (), axis, ("sum",))
  # (Σ p)·softmax as one exp: the row-level select keeps XLA:CPU from fusing
  # the full-size expression into the reduction of p (which would write its
  # broadcast operands out at full size).
  # A row of zero mass gets a large finite negative log-mass (not -inf, which
  # would make the two-sum NaN): its coefficient is then exactly 0.
  log_mass = jnp.where(mass > 0, jnp.log(jnp.where(mass > 0, mass, 1)), -1e4)
  coeff_x = probs(x, shift, norm, log_mass).astype(cdt) - pc
  coeff_p = _neg_log_q(x, pc, shift, norm).astype(cdt)
  tangent = jnp.sum(coeff_x * masked_tangent(x, dx, cdt) + coeff_p * dp.astype(cdt), axis=axis)
  return value, tangent


