"""Binary (sigmoid) cross-entropy and Bernoulli KL divergence from logits.

Elementwise losses: with the default ``axis=None`` they return one value per
element, as ``optax.sigmoid_binary_cross_entropy`` does; ``axis`` (an int or a
tuple) sums over those axes, e.g. the label axis of a multi-label classifier.
``where`` (broadcastable to ``logits.shape``) drops elements from the sum; a
dropped element contributes 0 with zero gradient. ``reduction`` and
``normalizer`` (see :mod:`jaxdiv._reduction`) reduce the returned values; an
output element counts towards ``"mean"`` if any of its elements is unmasked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import _kernels
from jaxdiv import _reduction
from jaxdiv import _validation as v
from jaxdiv._reduction import Reduction


def _log_sigmoids(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(log σ(x), log σ(-x)) = (log P(1), log P(0)), exact at ±inf and 1e30."""
  return jax.nn.log_sigmoid(x), jax.nn.log_sigmoid(-x)


def _inputs(x: jax.Array, target: jax.Array, axis, where):
  """Inputs in the compute dtype with masked elements zeroed *before* any
  arithmetic (so NaN there reaches neither values nor gradients), the mask,
  and the axes to sum over."""
  axes = v.reduce_axes(axis, x.ndim)
  mask = v.mask(where, x.shape)
  x, target = v.to_compute(x, target)
  if mask is not None:
    x, target = jnp.where(mask, x, 0), jnp.where(mask, target, 0)
  return x, target, mask, axes


def binary_cross_entropy(
    logits: ArrayLike,
    target_probs: ArrayLike,
    *,
    axis: int | tuple[int, ...] | None = None,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
    normalizer: ArrayLike | None = None,
) -> jax.Array:
  r"""Binary cross-entropy of sigmoid(``logits``) against target probabilities.

  .. math:: \ell = -[y \log \sigma(z) + (1 - y) \log(1 - \sigma(z))]
     = y\,\mathrm{softplus}(-z) + (1 - y)\,\mathrm{softplus}(z)

  Args:
    logits: model logits ``z``, any shape.
    target_probs: targets ``y`` in ``[0, 1]``, same shape; bool or integer 0/1
      labels are accepted and cast to float.
    axis: None (per element), or the axes to sum over.
    where: optional boolean mask broadcastable to ``logits.shape``.
    reduction: ``"none"`` (default), ``"sum"``, ``"mean"`` (over unmasked
      output elements) or ``"batchmean"`` (sum / leading-axis size).
    normalizer: optional scalar the means divide by instead (micro-batching).

  Returns:
    ``logits.shape`` without ``axis`` (a scalar if reduced), float32 (float64
    for float64 input).

  Numerics:
    Never forms ``σ(z)``: ``log σ`` is taken from the logit, so ``z = ±1e30``
    and ``z = ±inf`` give the exact answer (0 where the target agrees, ``+inf``
    where it has mass on the impossible side) and ``y = 0`` or ``1`` against an
    infinite logit contributes exactly 0 with finite derivatives.

  Examples:
    The note jaxdiv started from: BCE of predictions [0.2, 0.8] for labels [0, 1].

    >>> import jax.numpy as jnp, jaxdiv
    >>> pred = jnp.array([0.2, 0.8])
    >>> bce = jaxdiv.binary_cross_entropy(jnp.log(pred) - jnp.log1p(-pred), jnp.array([0, 1]))
    >>> print(f"{bce.mean():.4f}")
    0.2231
  """
  _reduction.check(reduction, normalizer)
  x = v.as_floating("logits", logits)
  y = v.as_probabilities("target_probs", target_probs, "Pass probabilities in [0, 1] or 0/1 labels.")
  v.same_shape("target_probs", y, "logits", x)
  x, y, mask, axes = _inputs(x, y, axis, where)
  log_p1, log_p0 = _log_sigmoids(x)
  terms = _kernels.mul_safe(y, -log_p1) + _kernels.mul_safe(1 - y, -log_p0)
  return _reduction.reduce_elements(terms, mask, axes, reduction, normalizer)


def binary_kl_divergence(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    axis: int | tuple[int, ...] | None = None,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
    normalizer: ArrayLike | None = None,
) -> jax.Array:
  r"""KL(Bernoulli(σ(t)) ‖ Bernoulli(σ(z))) from logits.

  .. math:: \mathrm{KL} = p \log\frac{p}{q} + (1 - p) \log\frac{1 - p}{1 - q},
     \quad p = \sigma(t),\ q = \sigma(z)

  Args:
    logits: model logits ``z``, any shape.
    target_logits: target logits ``t``, same shape (``±inf`` for a
      deterministic target).
    axis: None (per element), or the axes to sum over.
    where: optional boolean mask broadcastable to ``logits.shape``.
    reduction: ``"none"`` (default), ``"sum"``, ``"mean"`` (over unmasked
      output elements) or ``"batchmean"`` (sum / leading-axis size).
    normalizer: optional scalar the means divide by instead (micro-batching).

  Returns:
    ``logits.shape`` without ``axis`` (a scalar if reduced), float32 (float64
    for float64 input).

  Numerics:
    Uses the categorical KL kernel on the two outcomes: non-negative, accurate
    for nearly equal distributions, 0 with finite derivatives on a side of
    probability 0, ``+inf`` only where ``p > 0 = q``.

  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> logit = lambda p: jnp.log(p) - jnp.log1p(-p)
    >>> kl = jaxdiv.binary_kl_divergence(logit(jnp.array(0.8)), logit(jnp.array(0.9)))
    >>> print(f"{kl:.4f}")
    0.0367
  """
  _reduction.check(reduction, normalizer)
  x = v.as_floating("logits", logits)
  t = v.as_floating("target_logits", target_logits, "Pass target logits; for 0/1 labels use binary_cross_entropy.")
  v.same_shape("target_logits", t, "logits", x)
  x, t, mask, axes = _inputs(x, t, axis, where)
  # Finite logits: Bernoulli(σ(z)) is Categorical(softmax([z, 0])), and the
  # categorical KL kernel forms log q - log p from the exact z - t, so nearly
  # equal logits keep their relative accuracy (two separately rounded
  # log-sigmoids lose it). Infinite logits (deterministic outcomes, where [±inf, 0]
  # is not a valid logit row): the pointwise terms on the log-sigmoids, exact
  # there. Each path sees only the inputs it is used for, so neither leaks NaN
  # into the other's gradient.
  infinite = jnp.isinf(x) | jnp.isinf(t)
  two_outcomes = lambda a: jnp.stack([jnp.where(infinite, 0, a), jnp.zeros_like(a)], axis=-1)
  accurate = _kernels.kl_rows(two_outcomes(t), two_outcomes(x), x.ndim, True)
  xi, ti = jnp.where(infinite, x, 0), jnp.where(infinite, t, 0)
  log_q1, log_q0 = _log_sigmoids(xi)
  log_p1, log_p0 = _log_sigmoids(ti)
  exact_at_inf = _kernels.kl_terms(log_p1, log_q1, True) + _kernels.kl_terms(log_p0, log_q0, True)
  terms = jnp.where(infinite, exact_at_inf, accurate)
  return _reduction.reduce_elements(terms, mask, axes, reduction, normalizer)


def binary_entropy(
    logits: ArrayLike,
    *,
    axis: int | tuple[int, ...] | None = None,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
    normalizer: ArrayLike | None = None,
) -> jax.Array:
  r"""Entropy of Bernoulli(sigmoid(``logits``)), in nats.

  .. math:: H = -q \log q - (1 - q) \log(1 - q), \qquad q = \sigma(z)

  Args:
    logits: logits ``z``, any shape.
    axis: None (per element), or the axes to sum over.
    where: optional boolean mask broadcastable to ``logits.shape``.
    reduction: ``"none"`` (default), ``"sum"``, ``"mean"`` (over unmasked
      output elements) or ``"batchmean"`` (sum / leading-axis size).
    normalizer: optional scalar the means divide by instead (micro-batching).

  Returns:
    ``logits.shape`` without ``axis`` (a scalar if reduced), float32 (float64
    for float64 input).

  Numerics:
    Both log-probabilities come from the logit (``log σ(±z)``), never from
    ``σ(z)``, so ``|z| = 30`` keeps full relative accuracy (``H ≈ 31 e^{-30}``,
    where ``1 - σ(z)`` rounds to 0) and ``z = ±inf`` gives exactly 0 with
    finite derivatives.

  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> jaxdiv.binary_entropy(jnp.array([0.0, jnp.inf]))
    Array([0.6931472, 0.       ], dtype=float32)
  """
  _reduction.check(reduction, normalizer)
  x = v.as_floating("logits", logits)
  x, _, mask, axes = _inputs(x, x, axis, where)
  log_p1, log_p0 = _log_sigmoids(x)
  terms = _kernels.mul_safe(jnp.exp(log_p1), -log_p1) + _kernels.mul_safe(jnp.exp(log_p0), -log_p0)
  return _reduction.reduce_elements(terms, mask, axes, reduction, normalizer)
