"""optax's KL sums as drop-ins, written NaN-safe; re-exported and documented by :mod:`jaxdiv.optax`.

Nothing is normalised, as in optax: these are optax's formulas, not the KL between the distributions
that unnormalised inputs stand for (that is :func:`jaxdiv.kl_divergence`).
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import _core, _series
from jaxdiv import _validation as v
from jaxdiv._optax_conventions import Axis, class_axes, elementwise_where


def _kl_inputs(log_predictions, target, axis, where, target_name, neutral):
  """(log_predictions, target, axes, mask), broadcast together, in the compute dtype.

  Masked entries are replaced by (0, ``neutral``) *before* any arithmetic, so
  NaN or inf there reaches neither values nor gradients.
  """
  x = v.as_floating("log_predictions", log_predictions)
  t = v.as_floating(target_name, target)
  try:
    shape = jnp.broadcast_shapes(x.shape, t.shape)
  except ValueError as e:
    raise ValueError(
        f"{target_name} must have the same shape as log_predictions, {list(x.shape)}, or broadcast with it "
        f"(as in optax); got {list(t.shape)}."
    ) from e
  x, t = v.to_compute(jnp.broadcast_to(x, shape), jnp.broadcast_to(t, shape))
  axes = class_axes(axis, len(shape))
  mask = elementwise_where(where, shape)
  if mask is not None:
    x, t = jnp.where(mask, x, 0), jnp.where(mask, t, neutral)
  return x, t, axes, mask


def _sum(terms: jax.Array, axes: tuple[int, ...], mask: jax.Array | None) -> jax.Array:
  if mask is not None:
    terms = jnp.where(mask, terms, 0)
  return jnp.sum(terms, axis=axes)


def kl_divergence(
    log_predictions: ArrayLike,
    targets: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""optax's ``kl_divergence``: ``Σ p (log p - log_predictions)``.

  .. math:: \ell = \sum_c p_c (\log p_c - x_c), \qquad 0 \log 0 = 0

  With normalised ``targets`` and log-probabilities ``x`` this is
  KL(targets ‖ exp(x)). Like optax, nothing is normalised: a target row
  summing to 0.9, or raw logits as ``x``, give optax's number, which is not a
  divergence (it can be negative). For the KL between the distributions that
  unnormalised inputs stand for, use :func:`jaxdiv.kl_divergence`.

  Args:
    log_predictions: ``x``, log-probabilities of the model, ``[..., num_classes]``.
    targets: target probabilities ``p``, same shape (or broadcastable, as in optax).
    axis: the class axis, a tuple of axes, or None for all axes.
    where: elements to include in the sum, broadcastable to
      ``log_predictions.shape`` (a ``[num_classes]`` mask drops classes).

  Returns:
    ``[...]`` per-example values, float32 (float64 for float64).

  Numerics:
    Each summand is ``p (log p - x)``, formed as optax does; a target of 0
    contributes 0 with zero derivatives even against ``x = -inf`` (optax: NaN
    value, and a NaN target gradient at every zero target), unless ``x`` is
    NaN. Accumulated in float32 for low-precision inputs.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxdiv import optax as losses
    >>> kl = losses.kl_divergence(jnp.log(jnp.array([0.2, 0.8])), jnp.array([0.1, 0.9]))
    >>> print(f"{kl:.4f}")
    0.0367
    >>> kl = losses.kl_divergence(jnp.log(jnp.array([0.5, 0.0, 0.5])), jnp.array([0.5, 0.0, 0.5]))
    >>> print(f"{kl:.4f}")
    0.0000
  """
  x, p, axes, mask = _kl_inputs(log_predictions, targets, axis, where, "targets", 0)
  terms = _core.pointwise_kl(p, None, x)
  return _sum(terms, axes, mask)


def kl_divergence_with_log_targets(
    log_predictions: ArrayLike,
    log_targets: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""optax's ``kl_divergence_with_log_targets``: ``Σ e^t (t - log_predictions)``.

  .. math:: \ell = \sum_c e^{t_c} (t_c - x_c)

  KL(exp(t) ‖ exp(x)) for normalised log-probabilities; like optax, nothing
  is normalised (see :func:`kl_divergence`; for logits use
  :func:`jaxdiv.kl_divergence_with_log_targets`).

  Args:
    log_predictions: ``x``, log-probabilities of the model, ``[..., num_classes]``.
    log_targets: ``t``, log-probabilities of the target, same shape (or
      broadcastable); ``-inf`` marks a class of probability 0.
    axis: the class axis, a tuple of axes, or None for all axes.
    where: elements to include in the sum, broadcastable to
      ``log_predictions.shape``.

  Returns:
    ``[...]`` per-example values, float32 (float64 for float64).

  Numerics:
    A ``-inf`` log-target contributes 0 with zero derivatives (optax: NaN,
    since ``0 · -inf``), unless ``x`` is NaN.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxdiv import optax as losses
    >>> log_p = jnp.log(jnp.array([0.5, 0.5, 0.0]))
    >>> log_q = jnp.log(jnp.array([0.25, 0.5, 0.25]))
    >>> kl = losses.kl_divergence_with_log_targets(log_q, log_p)
    >>> print(f"{kl:.4f}")
    0.3466
  """
  x, t, axes, mask = _kl_inputs(log_predictions, log_targets, axis, where, "log_targets", -jnp.inf)
  terms = _core.pointwise_kl(jnp.exp(t), t, x)
  return _sum(terms, axes, mask)


def generalized_kl_divergence(
    log_predictions: ArrayLike,
    targets: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""optax's ``generalized_kl_divergence``: the KL between unnormalised measures.

  .. math:: D(p \,\|\, q) = \sum_c \left(p_c \log \frac{p_c}{q_c} - p_c + q_c\right),
     \qquad q = e^{\text{log\_predictions}}

  The Bregman divergence of ``x log x - x``; equal to the KL when both sum
  to one. Nothing is normalised.

  Args:
    log_predictions: log of the (unnormalised) predicted measure, ``[..., dim]``.
    targets: the (unnormalised, non-negative) target measure, same shape (or
      broadcastable).
    axis: the axis, a tuple of axes, or None for all axes.
    where: elements to include, broadcastable to ``log_predictions.shape``.

  Returns:
    ``[...]`` per-example divergences, float32 (float64 for float64).

  Numerics:
    Summed as the non-negative terms ``p (e^d - 1 - d)``,
    ``d = log q - log p``, with a series for small ``d``: accurate when
    ``p ≈ q`` (optax's sum of ``p log(p/q)`` and ``q - p`` cancels). ``p = 0``
    contributes ``q`` with finite derivatives, 0 against ``q = 0`` (optax: NaN).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxdiv import optax as losses
    >>> d = losses.generalized_kl_divergence(jnp.log(jnp.array([1.0, 2.0])), jnp.array([2.0, 2.0]))
    >>> print(f"{d:.4f}")
    0.3863
  """
  x, p, axes, mask = _kl_inputs(log_predictions, targets, axis, where, "targets", 0)
  zero = p == 0
  p_s, x_s = jnp.where(zero, 1, p), jnp.where(zero, 0, x)
  terms = jnp.where(zero, jnp.exp(jnp.where(zero, x, 0)), p_s * _series.phi(x_s - jnp.log(p_s)))
  return _sum(terms, axes, mask)


@functools.wraps(generalized_kl_divergence)
def convex_kl_divergence(*args, **kwargs) -> jax.Array:
  """optax's deprecated name for :func:`generalized_kl_divergence`; warns as optax's does."""
  warnings.warn(
      "The function convex_kl_divergence is deprecated. Please use generalized_kl_divergence instead.",
      category=DeprecationWarning,
      stacklevel=2,
  )
  return generalized_kl_divergence(*args, **kwargs)


convex_kl_divergence.__doc__ = (
    "optax's deprecated name for :func:`generalized_kl_divergence`: the same function, and a\n"
    "``DeprecationWarning`` on each call, as optax's."
)
