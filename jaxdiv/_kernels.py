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
# Fused row kernels: one loss per row, backward from the saved row statistics
# --------------------------------------------------------------------------- #
#
# Each kernel takes its inputs in their own dtype (bfloat16 included) and
# converts inside the fused elementwise ops, so no full-size float32 copy is
# made. The value is a reduction over the row; the tangent is a single linear
# expression ``Σ coeff · dx`` whose coefficient is an elementwise function of
# the inputs and the per-row max and log-sum, which JAX transposes into one
# elementwise backward that XLA fuses with the recomputation of the
# coefficient: no full-size residual (softmax, log-softmax) is kept.


# XLA:CPU's fused row reductions (YNNPACK) slow down ~10x on rows longer than
# 32768 entries once a program has more than one of them (measured at
# [512, 131072] float32: Σ exp(x - max) alone 26 ms, together with Σ p·x 450 ms;
# in chunks of 32768 as below, 64 ms). Every row reduction of the kernels therefore
# goes through :func:`_row_reduce`, which reduces a long last axis as
# [rows · k, c] chunks of at most 32768 (c dividing the row), then over k; the
# barrier keeps XLA from moving the reshape behind the elementwise terms, which
# would bring the long rows back. Other backends reduce long rows well.
_FAST_ROW = 32768


def _chunk(shape: tuple[int, ...], axis: int) -> int | None:
  """Chunk length for a reduction over ``axis`` of ``shape``, or None to reduce it whole."""
  n = shape[axis]
  if axis != len(shape) - 1 or n <= _FAST_ROW or jax.default_backend() != "cpu":
    return None
  return next((c for c in range(_FAST_ROW, 1023, -1) if n % c == 0), None)


def _row_reduce(fn, full: tuple, rows: tuple, axis: int, reducers: tuple) -> tuple[jax.Array, ...]:
  """Reduces each output of ``fn(*full, *rows)`` along ``axis``, keeping it as size 1.

  ``full`` are arrays of the row shape, ``rows`` row-level arrays (size 1 along
  ``axis``); ``fn`` is elementwise and returns a tuple with one array per entry
  of ``reducers`` (``jnp.sum`` or ``jnp.max``). One fused pass over ``full``
  for all outputs; long last axes are reduced in chunks (see ``_FAST_ROW``).
  """
  shape = full[0].shape
  c = _chunk(shape, axis)
  if c is None:
    return tuple(r(t, axis=axis, keepdims=True) for r, t in zip(reducers, fn(*full, *rows), strict=True))
  k = shape[-1] // c
  folded = jax.lax.optimization_barrier(tuple(a.reshape(-1, c) for a in full))
  spread = [jnp.broadcast_to(r[..., None], (*shape[:-1], k, 1)).reshape(-1, 1) for r in rows]
  outs = fn(*folded, *spread)
  return tuple(r(r(t, axis=-1).reshape(*shape[:-1], k), axis=-1, keepdims=True)
               for r, t in zip(reducers, outs, strict=True))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def row_stats(x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
  """``(shift, norm)`` with ``log softmax(x) = (x - shift) - norm``, in the compute dtype.

  ``shift`` is the row max (0 for an all ``-inf`` row; zero derivative) and
  ``norm = log Σ exp(x - shift)`` (0 for an all ``-inf`` row, whose
  log-probabilities are then ``-inf``, not NaN); both keep ``axis`` as size 1.
  Two passes over ``x`` (max, sum), no full-size temporary. Derivative:
  ``∂norm/∂x = softmax(x)``, 0 at ``-inf`` entries.
  """
  cdt = compute_dtype(x.dtype)
  (shift,) = _row_reduce(lambda x: (x,), (x,), (), axis, (jnp.max,))
  shift = shift.astype(cdt)  # exact in the input dtype
  shift = jnp.where(jnp.isfinite(shift), shift, 0)
  exp_terms = lambda x, shift: (jnp.exp(x.astype(cdt) - shift),)
  (sum_exp,) = _row_reduce(exp_terms, (x,), (shift,), axis, (jnp.sum,))
  return shift, jnp.log(jnp.where(sum_exp > 0, sum_exp, 1))


def _lse_parts(shift: jax.Array, norm: jax.Array, log_scale: jax.Array | None = None):
  """``(hi, lo)`` with ``hi + lo = shift + norm (- log_scale)`` exactly (two-sum).

  ``x - hi - lo`` is then the log-probability to float accuracy even at
  ``|x| ~ 1e30`` (where ``hi`` alone rounds away ``norm``), and, being a
  different expression from the ``x - shift`` of the forward reduction, XLA
  does not share one full-size ``x - shift`` between the two.
  """
  lo = norm if log_scale is None else norm - log_scale
  hi = shift + lo
  return hi, lo - (hi - shift)


def _widen(x: jax.Array, dtype) -> jax.Array:
  """``x.astype(dtype)``; bfloat16 to float32 as the exact bit shift it is.

  A separate HLO from the ``convert`` of the forward reduction, so XLA does
  not write one shared full-size float32 copy of ``x`` for both passes.
  """
  if x.dtype == jnp.bfloat16 and dtype == jnp.float32:
    bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32) << 16
    return jax.lax.bitcast_convert_type(bits, jnp.float32)
  return x.astype(dtype)


def _probs(x: jax.Array, shift: jax.Array, norm: jax.Array, log_scale: jax.Array | None = None) -> jax.Array:
  """``softmax(x) * exp(log_scale)`` from the row statistics: exactly 0 at ``-inf`` entries."""
  hi, lo = _lse_parts(shift, norm, log_scale)
  return jnp.exp((_widen(x, hi.dtype) - hi) - lo)


def _masked_tangent(x: jax.Array, dx: jax.Array, dtype) -> jax.Array:
  """``dx`` in ``dtype``, 0 where ``x = -inf`` (tested on the widened ``x``, see :func:`_widen`)."""
  return jnp.where(_widen(x, dtype) == _NEG_INF, 0, dx.astype(dtype))


@row_stats.defjvp
def _row_stats_jvp(axis, primals, tangents):
  (x,), (dx,) = primals, tangents
  shift, norm = row_stats(x, axis)
  q = _probs(x, shift, norm)
  dnorm = jnp.sum(q * _masked_tangent(x, dx, q.dtype), axis=axis, keepdims=True)
  return (shift, norm), (jnp.zeros_like(shift), dnorm)


def _one_hot(index: jax.Array, shape: tuple[int, ...], axis: int) -> jax.Array:
  """Boolean ``iota == index`` along ``axis`` (fused by XLA; no gather or scatter)."""
  return jax.lax.broadcasted_iota(index.dtype, shape, axis) == jnp.expand_dims(index, axis)


def _label_ce_value(x, index, axis):
  shift, norm = row_stats(x, axis)
  picked = jnp.take_along_axis(_widen(x, shift.dtype), jnp.expand_dims(index, axis), axis=axis)
  return jnp.squeeze(norm - (picked - shift), axis), shift, norm


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def label_cross_entropy(x: jax.Array, index: jax.Array, axis: int) -> jax.Array:
  """``logsumexp(x) - x[index]`` along ``axis``, in the compute dtype.

  Args:
    x: logits in any floating dtype; masked entries ``-inf``.
    index: integer class per row, in range (``x.shape`` without ``axis``).
    axis: the class axis (non-negative).

  Returns:
    ``x.shape`` without ``axis``: ``log Σ exp(x - max) - (x[index] - max)``,
    so ties at ``|x| = 1e30`` give ``log 2``; ``+inf`` for a ``-inf`` label
    logit (an all ``-inf`` row included).

  Derivative: ``softmax(x) - onehot(index)``; the tangent is
  ``Σ (softmax - onehot) · dx``, so the gradient is one fused elementwise pass.
  It is 0 at ``-inf`` entries, except a label on a ``-inf`` logit (value
  ``+inf``; the derivative there is that of the formula, ``-1``).
  """
  return _label_ce_value(x, index, axis)[0]


@label_cross_entropy.defjvp
def _label_cross_entropy_jvp(axis, primals, tangents):
  (x, index), (dx, _) = primals, tangents
  value, shift, norm = _label_ce_value(x, index, axis)
  # softmax recomputed from the row statistics in the backward's one fused pass,
  # rather than kept from the forward: when the logits are themselves an
  # intermediate (hidden @ weight), XLA then writes the gradient over their
  # buffer, and value_and_grad needs one [N, V] temporary instead of two
  # (optax's CE needs two).
  coeff = _probs(x, shift, norm) - _one_hot(index, x.shape, axis).astype(shift.dtype)
  # softmax is exactly 0 at -inf entries, so the coefficient is too (but for a
  # label on a -inf logit, whose loss is +inf): no mask on dx, whose transpose
  # would read x once more in the backward (measured 1.1x slower at
  # [8192, 1024] float32, 1.3x for bfloat16).
  return value, jnp.sum(coeff * dx.astype(shift.dtype), axis=axis)


def _neg_log_q(x, p, shift, norm):
  """``-log softmax(x)``, with 0 where ``p = 0`` and the logit is ``-inf``."""
  hi, lo = _lse_parts(shift, norm)
  xw = _widen(x, hi.dtype)
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
  shift, norm = row_stats(x, axis)
  hi, lo = _lse_parts(shift.astype(cdt), norm.astype(cdt))
  # The summands are kept free of selects and compares, which XLA:CPU cannot
  # fuse into a reduction (it would write them out at full size first): -inf
  # logits are clamped to a finite -big so that p = 0 gives 0, and target mass
  # on them is found by a max over min(p·2^126, 1)·(-clamped x), which is at
  # least big/2 there (for any normal p) and at most ~|x| elsewhere.
  # (Narrower inputs keep the select: their widening cannot be fused into the
  # reduction either, so there the terms are written out once, at full size.)
  if x.dtype != cdt or p.dtype != cdt:

    def selected(x, p, hi, lo):
      pc, xw = _widen(p, cdt), _widen(x, cdt)
      return (jnp.where((pc == 0) & (xw == _NEG_INF), 0, pc * ((hi - xw) + lo)),)

    (total,) = _row_reduce(selected, (x, p), (hi, lo), axis, (jnp.sum,))
    return jnp.squeeze(total, axis)
  big = jnp.finfo(cdt).max / 4

  def select_free(x, p, hi, lo):
    return p * ((hi - jnp.maximum(x, -big)) + lo), jnp.minimum(p * 2.0**126, 1) * jnp.minimum(-x, big)

  total, flag = _row_reduce(select_free, (x, p), (hi, lo), axis, (jnp.sum, jnp.max))
  return jnp.squeeze(jnp.where(flag >= big / 2, jnp.inf, total), axis)


@soft_cross_entropy_rows.defjvp
def _soft_cross_entropy_rows_jvp(axis, primals, tangents):
  (x, p), (dx, dp) = primals, tangents
  value = soft_cross_entropy_rows(x, p, axis)
  cdt = value.dtype
  shift, norm = row_stats(x, axis)
  pc = _widen(p, cdt)
  (mass,) = _row_reduce(lambda p: (p.astype(cdt),), (p,), (), axis, (jnp.sum,))
  # (Σ p)·softmax as one exp: the row-level select keeps XLA:CPU from fusing
  # the full-size expression into the reduction of p (which would write its
  # broadcast operands out at full size).
  # A row of zero mass gets a large finite negative log-mass (not -inf, which
  # would make the two-sum NaN): its coefficient is then exactly 0.
  log_mass = jnp.where(mass > 0, jnp.log(jnp.where(mass > 0, mass, 1)), -1e4)
  coeff_x = _probs(x, shift, norm, -log_mass).astype(cdt) - pc
  coeff_p = _neg_log_q(x, pc, shift, norm).astype(cdt)
  tangent = jnp.sum(coeff_x * _masked_tangent(x, dx, cdt) + coeff_p * dp.astype(cdt), axis=axis)
  return value, tangent


# --------------------------------------------------------------------------- #
# kl_rows: KL(p‖q) along an axis, from raw logits
# --------------------------------------------------------------------------- #


def _psi(r: jax.Array) -> jax.Array:
  """``r - log1p(r) = r²/2 - r³/3 + …`` to full relative precision (row-level)."""
  small = jnp.abs(r) < 1e-2
  rs = jnp.where(small, r, 0)
  series = rs * rs * (0.5 - rs * (1 / 3 - rs * (0.25 - rs / 5)))
  rl = jnp.where(small, 1, r)
  return jnp.where(small, series, rl - jnp.log1p(rl))


def _phi_series(d: jax.Array) -> jax.Array:
  """``expm1(d) - d`` by its Taylor series, for ``|d| <= 1/2`` (truncation below 1e-8 relative)."""
  series = jnp.full_like(d, 1.0 / math.factorial(10))
  for k in range(9, 1, -1):
    series = 1.0 / math.factorial(k) + d * series
  return d * d * series


def _kl_term_fast(p: jax.Array, q: jax.Array, d: jax.Array) -> jax.Array:
  """``p (e^d - 1 - d)`` given ``q = p e^d``, with one exp fewer than :func:`_kl_term`.

  ``|d| < 1/2``: the series (full relative precision for nearly equal
  distributions); beyond, ``q - p (1 + d)``, which cancels by at most a factor
  11 there (``e^d / φ(d)`` at ``|d| = 1/2``), so no ``expm1`` is needed.
  """
  near = jnp.abs(d) < 0.5
  return jnp.where(near, p * _phi_series(jnp.where(near, d, 0)), q - p * (1 + d))


def _kl_rows_stats(target, logits, axis, target_is_log):
  """Row statistics of :func:`kl_rows`: ``(shift_z, norm_z, shift_t, norm_t)``.

  ``shift_t`` and ``norm_t`` are zeros for a probability target.
  """
  cdt = compute_dtype(target.dtype, logits.dtype)
  shift_z, norm_z = (a.astype(cdt) for a in row_stats(logits, axis))
  if target_is_log:
    shift_t, norm_t = (a.astype(cdt) for a in row_stats(target, axis))
  else:
    shift_t = norm_t = jnp.zeros_like(shift_z)
  return shift_z, norm_z, shift_t, norm_t


def _kl_rows_elems(target, logits, axis, target_is_log):
  """:func:`_kl_elems` with the row statistics of :func:`_kl_rows_stats`."""
  return _kl_elems(target, logits, *_kl_rows_stats(target, logits, axis, target_is_log), target_is_log)


def _kl_elems(target, logits, shift_z, norm_z, shift_t, norm_t, target_is_log):
  """Elementwise quantities of :func:`kl_rows`: ``(p, log_p, support, d, log_q)``.

  ``d = log q - log p`` is formed as ``((z - t) - (max z - max t)) - (norm_z - norm_t)``:
  for nearly equal logits ``z - t`` is exact, whereas ``log q - log p`` from two
  separately rounded log-softmaxes carries ~1e-6 of noise per class, whose
  square alone is 1e-4 of a KL of 5e-9. Where the two rows' maxima are far
  apart that grouping cancels, and the shifted ``(z - max z) - (t - max t) - …``
  is used instead (per class, whichever has the smaller rounding bound).
  ``log_p`` and ``log_q`` are formed against the two-sum logsumexp (see
  :func:`_lse_parts`). All differentiable (through :func:`row_stats`).
  """
  cdt = compute_dtype(target.dtype, logits.dtype)
  if target_is_log:
    t = _widen(target, cdt)
  else:
    pw = _widen(target, cdt)
    t = jnp.where(pw > 0, jnp.log(jnp.where(pw > 0, pw, 1)), _NEG_INF)
  z = _widen(logits, cdt)
  hi_t, lo_t = _lse_parts(shift_t, norm_t)
  log_p = (t - hi_t) - lo_t
  p = jnp.exp(log_p)
  support = p > 0
  t_s = jnp.where(support, t, 0)
  # Per class, the form with the smaller rounding bound: the raw difference is
  # exact for nearly equal logits, but cancels when the two rows' maxima are far
  # apart (logits [0.5, 0] vs target [1e30, 0]), where the shifted form is exact.
  # Grouped so each subtraction is between comparable values: a rounded
  # offset lse(z) - lse(t) would itself lose 1.7e-5 at |logits| ~ 1e3.
  z_rel, t_rel, norms = z - shift_z, t_s - shift_t, norm_z - norm_t
  raw = ((z - t_s) - (shift_z - shift_t)) - norms
  shifted = (z_rel - t_rel) - norms
  use_raw = jnp.abs(z - t_s) + jnp.abs(shift_z - shift_t) <= jnp.abs(z_rel) + jnp.abs(t_rel)
  d = jnp.where(support, jnp.where(use_raw, raw, shifted), 0)
  hi_z, lo_z = _lse_parts(shift_z, norm_z)
  return p, log_p, support, d, (z - hi_z) - lo_z


def _kl_rows_value(target, logits, axis, target_is_log):
  """Value of :func:`kl_rows` (not differentiable: its own rule differentiates it).

  With :func:`_kl_rows_elems`'s ``d``, the rounding left in the per-row offset
  is removed analytically: renormalising ``q' = p e^d`` (on the support of p;
  q off it) to the mass ``P = Σ p`` changes the sum of the terms
  ``S = Σ p φ(d) + Σ q_off`` to ``S - P ψ(E / P)`` with ``E = Σ q' - P`` and
  ``ψ(r) = r - log1p(r)``. So ``S``, ``E`` and ``P`` are three sums over one
  pass of the inputs (the row maxima and log-sums take two more), instead of
  one pass to measure the mass and another to sum renormalised terms. Equal
  logits give ``d = 0``, ``E = 0`` and exactly 0.
  """
  stats = _kl_rows_stats(target, logits, axis, target_is_log)
  cdt = stats[0].dtype

  def elementwise(target, logits, *stats):
    p, log_p, support, d, log_q = _kl_elems(target, logits, *stats, target_is_log)
    log_p = jnp.where(support, log_p, 0)
    # q' = p e^d on the support and q off it, as one exp.
    q_prime = jnp.exp(jnp.where(support, log_p + d, log_q))
    terms = jnp.where(support, _kl_term_fast(p, q_prime, d), q_prime)
    # E enters only through ψ(E/P) ≈ (E/P)²/2, so the direct Σ (q' - p) (p = 0
    # off the support) is accurate enough: its ~1e-7 rounding moves ψ by ~1e-13.
    # A log target is normalised: P = 1, or 0 for a row without target mass.
    return terms, q_prime - p, target if target_is_log else _widen(target, cdt)

  reducers = (jnp.sum, jnp.sum, jnp.max if target_is_log else jnp.sum)
  total, excess, mass_p = (
      jnp.squeeze(a, axis) for a in _row_reduce(elementwise, (target, logits), stats, axis, reducers))
  if target_is_log:
    mass_p = (mass_p > _NEG_INF).astype(cdt)
  r = jnp.where(mass_p > 0, excess / jnp.where(mass_p > 0, mass_p, 1), 0)
  # Both sides are non-negative and equal up to rounding when KL ≈ 0.
  return jnp.maximum(total - mass_p * _psi(r), 0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def kl_rows(target: jax.Array, logits: jax.Array, axis: int, target_is_log: bool) -> jax.Array:
  """KL(p ‖ softmax(logits)) summed over ``axis``.

  Args:
    target: target logits (``target_is_log``; masked entries ``-inf``) or target
      probabilities (masked entries 0), same shape as ``logits``; any floating
      dtype (bfloat16 is widened inside the fused passes, never copied).
    logits: model logits, masked entries ``-inf``.
    axis: the class axis (non-negative int).
    target_is_log: how ``target`` is given.

  Returns:
    ``logits.shape`` without ``axis``: ``S·KL(p/S ‖ q)`` with ``S = Σ p``, which
    is KL(p‖q) for normalised ``p`` (and agrees with ``Σ p log(p/q) - S + 1`` to
    second order in ``S - 1``); never negative, exactly 0 for equal logits.

  Derivatives (analytic): ``∂/∂z = q - p``; ``∂/∂t = p (log p - log q - KL)``
  for logit targets; ``∂/∂p = log p - log q`` for probability targets, defined
  as 0 where ``p = 0``. Each is one elementwise expression of the inputs and
  the row statistics, so the backward is one fused pass with no saved
  full-size residual.
  """
  return _kl_rows_value(target, logits, axis, target_is_log)


@kl_rows.defjvp
def _kl_rows_jvp(axis, target_is_log, primals, tangents):
  (target, logits), (dtarget, dlogits) = primals, tangents
  value = kl_rows(target, logits, axis, target_is_log)
  p, log_p, support, _, log_q = _kl_rows_elems(target, logits, axis, target_is_log)
  cdt = value.dtype
  q = jnp.exp(log_q)
  dlogits = _masked_tangent(logits, dlogits, cdt)
  log_ratio = jnp.where(support, jnp.where(support, log_p, 0) - jnp.where(support, log_q, 0), 0)
  log_ratio = jnp.where(support & (log_q == _NEG_INF), jnp.inf, log_ratio)
  if target_is_log:
    coeff = mul_safe(p, log_ratio - jnp.expand_dims(value, axis))
  else:
    coeff = log_ratio
  dtarget = jnp.where(support, dtarget.astype(cdt), 0)
  tangent = jnp.sum((q - p) * dlogits, axis=axis) + jnp.sum(coeff * dtarget, axis=axis)
  return value, tangent


# --------------------------------------------------------------------------- #
# jsd_rows: generalised Jensen–Shannon divergence along an axis, from logits
# --------------------------------------------------------------------------- #


def _log_probs(x: jax.Array, shift: jax.Array, norm: jax.Array, dtype) -> jax.Array:
  """``log softmax(x)`` in ``dtype`` from the row statistics of :func:`row_stats`."""
  hi, lo = _lse_parts(shift, norm)
  return (_widen(x, dtype) - hi) - lo


def _jsd_parts(target, logits, beta, axis):
  """``(KL(P‖M), KL(Q‖M), p, q, log p, log q, log m)``, all differentiable.

  The mixture is formed in linear space, ``m = β p + (1 - β) q``, and each KL
  term from ``m`` itself (``p φ(log m - log p)`` near ``m = p``, else
  ``m - p (1 + d)``; ``m`` off the support of ``p``): one log per class on top
  of the two exps, where composing :func:`log_mix` and :func:`kl_terms` takes
  eight transcendental functions. ``log m`` is ``-inf`` (with finite
  derivatives) only where ``p = q = 0``.
  """
  cdt = compute_dtype(target.dtype, logits.dtype)
  stats = tuple(a.astype(cdt) for a in (*row_stats(target, axis), *row_stats(logits, axis)))

  def elementwise(target, logits, shift_t, norm_t, shift_z, norm_z):
    log_p = _log_probs(target, shift_t, norm_t, cdt)
    log_q = _log_probs(logits, shift_z, norm_z, cdt)
    p, q = jnp.exp(log_p), jnp.exp(log_q)
    m = beta * p + (1 - beta) * q
    log_m = jnp.where(m > 0, jnp.log(jnp.where(m > 0, m, 1)), _NEG_INF)

    def kl_terms_to_m(a, log_a):
      support = a > 0
      d = jnp.where(support, log_m - jnp.where(support, log_a, 0), 0)
      return jnp.where(support, _kl_term_fast(a, m, d), m)

    return kl_terms_to_m(p, log_p), kl_terms_to_m(q, log_q), p, q, log_p, log_q, log_m

  kl_p, kl_q = _row_reduce(lambda *a: elementwise(*a)[:2], (target, logits), stats, axis, (jnp.sum, jnp.sum))
  return jnp.squeeze(kl_p, axis), jnp.squeeze(kl_q, axis), *elementwise(target, logits, *stats)[2:]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def jsd_rows(target: jax.Array, logits: jax.Array, beta: float, axis: int) -> jax.Array:
  """``β KL(P‖M) + (1 - β) KL(Q‖M)``, ``M = β P + (1 - β) Q``, for ``0 < β < 1``.

  Args:
    target: target logits (``P = softmax``), masked entries ``-inf``; any
      floating dtype (widened inside the fused passes).
    logits: model logits (``Q = softmax``), same shape.
    beta: the target's weight in the mixture.
    axis: the class axis (non-negative).

  Returns:
    ``logits.shape`` without ``axis``, in the compute dtype; each KL summed as
    the non-negative terms of :func:`kl_terms`.

  Derivatives (analytic): ``∂/∂z = (1 - β) q (log(q/m) - KL(Q‖M))`` and
  ``∂/∂t = β p (log(p/m) - KL(P‖M))``, 0 where ``q`` (or ``p``) is 0: one
  elementwise expression each, so the backward is one fused pass.
  """
  kl_p, kl_q = _jsd_parts(target, logits, beta, axis)[:2]
  return beta * kl_p + (1 - beta) * kl_q


@jsd_rows.defjvp
def _jsd_rows_jvp(beta, axis, primals, tangents):
  (target, logits), (dtarget, dlogits) = primals, tangents
  kl_p, kl_q, p, q, log_p, log_q, log_m = _jsd_parts(target, logits, beta, axis)
  value = beta * kl_p + (1 - beta) * kl_q
  cdt = value.dtype

  def coeff(a, log_a, kl_a, weight):
    log_ratio = jnp.where(a > 0, jnp.where(a > 0, log_a, 0) - log_m, 0)
    return weight * mul_safe(a, log_ratio - jnp.expand_dims(kl_a, axis))

  tangent = jnp.sum(coeff(q, log_q, kl_q, 1 - beta) * _masked_tangent(logits, dlogits, cdt), axis=axis)
  tangent += jnp.sum(coeff(p, log_p, kl_p, beta) * _masked_tangent(target, dtarget, cdt), axis=axis)
  return value, tangent
