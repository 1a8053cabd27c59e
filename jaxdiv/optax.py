"""Drop-in replacements for optax's classification losses, built on jaxdiv.

Switching is a one-line import change::

    # from optax import losses          # before
    from jaxdiv import optax as losses   # after
    loss = losses.softmax_cross_entropy(logits, labels).mean()

Every function here has optax 0.2.8's name, argument names, defaults, ``axis``
(an int, a tuple of ints, or None for all axes) and ``where`` conventions, and
returns the same per-example shape. Each is a thin adapter: it converts optax's
conventions (tuple axes, a ``where`` of shape ``[batch]``, broadcastable labels)
and calls the jaxdiv function that does the work, so the numerics are jaxdiv's:

* ``softmax_cross_entropy``, ``safe_softmax_cross_entropy`` →
  :func:`jaxdiv.soft_cross_entropy`
* ``softmax_cross_entropy_with_integer_labels`` → :func:`jaxdiv.cross_entropy`
* ``kl_divergence`` → :func:`jaxdiv.kl_divergence`
* ``kl_divergence_with_log_targets`` → :func:`jaxdiv.kl_divergence_with_log_targets`
* ``generalized_kl_divergence`` (alias ``convex_kl_divergence``) → the
  generalised-KL kernel behind every jaxdiv KL
* ``sigmoid_binary_cross_entropy`` → :func:`jaxdiv.binary_cross_entropy`
* ``sigmoid_focal_loss`` → :func:`jaxdiv.binary_cross_entropy` times the focal
  weight, formed in log space
* ``poly_loss_cross_entropy`` → :func:`jaxdiv.soft_cross_entropy` plus the
  polynomial term
* ``smooth_labels`` → the same formula as optax

Where optax is finite and correct the results agree to float32 rounding
(``tests/test_optax_dropins.py`` checks this on random inputs). The known
differences, each tested by name:

1. **NaN in optax, finite here.** A zero-probability target against a ``-inf``
   logit is ``0 · log 0 = 0``: ``softmax_cross_entropy`` and
   ``poly_loss_cross_entropy`` (optax: NaN value), ``kl_divergence`` (NaN value;
   NaN gradient w.r.t. a zero target even against a finite prediction),
   ``kl_divergence_with_log_targets`` (NaN value as soon as one log-target is
   ``-inf``), ``generalized_kl_divergence`` (NaN value and target gradient),
   ``safe_softmax_cross_entropy`` on an all ``-inf`` row (NaN gradient);
   ``sigmoid_binary_cross_entropy`` and ``sigmoid_focal_loss`` at logits
   ``±inf`` with agreeing labels (optax: NaN; here 0 with zero gradient).
2. **Wrong in optax, right here.** Ties at ``|logit| = 1e30`` give ``log 2``,
   not 0; a KL of 5e-9 between nearly equal distributions keeps its relative
   accuracy (optax's ``Σ p (log p - log q)`` is off by orders of magnitude).
3. **Return dtype.** bfloat16/float16 inputs are accumulated and returned in
   float32 (optax returns the input dtype, rounded to 8 or 11 bits).
   ``smooth_labels`` returns the labels' dtype, as optax does.
4. **Log-predictions are normalised.** ``kl_divergence``,
   ``kl_divergence_with_log_targets`` and the cross-entropies treat their first
   argument as logits, so log-probabilities (optax's documented input) give the
   same result, and unnormalised log-predictions give KL(targets ‖
   softmax(log_predictions)) — a divergence — where optax's sum can be
   negative. ``log_targets`` are normalised too. ``generalized_kl_divergence``
   is the one divergence between *unnormalised* measures and normalises
   nothing, like optax.
5. **``where`` removes classes from the distributions.** For the KL functions,
   masked classes leave the normalisation as well as the sum (optax drops them
   from the sum only); the two agree when the kept classes carry all of both
   distributions' mass, the usual padded-vocabulary case. NaN or inf in a
   masked entry never reaches values or gradients.
6. **Derivatives at the boundary.** The derivative w.r.t. a target probability
   that is 0 where the model probability is 0 is taken as 0 (optax: ``+inf``
   or NaN); ``kl_divergence`` expects normalised ``targets`` (for unnormalised
   ones it returns ``Σ p log(p/q) - Σ p + 1``; use
   ``generalized_kl_divergence``).
7. **Labels out of range.** ``softmax_cross_entropy_with_integer_labels`` gives
   NaN for a label outside ``[0, num_classes)`` with zero gradient (optax
   wraps negative labels numpy-style); see :func:`jaxdiv.check_labels`.
8. **smooth_labels with ``where``** gives masked classes 0 instead of
   ``alpha / num_kept``, so each smoothed row still sums to one.
9. ``convex_kl_divergence`` is a plain alias of ``generalized_kl_divergence``
   (optax's emits a DeprecationWarning).

This module is reachable only as ``jaxdiv.optax``: imports are absolute, so
``import optax`` anywhere (inside jaxdiv included) still gives the real optax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

import jaxdiv
from jaxdiv import _kernels
from jaxdiv import _validation as v

Axis = int | tuple[int, ...] | None

__all__ = [
    "convex_kl_divergence",
    "generalized_kl_divergence",
    "kl_divergence",
    "kl_divergence_with_log_targets",
    "poly_loss_cross_entropy",
    "safe_softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "sigmoid_focal_loss",
    "smooth_labels",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
]


# --------------------------------------------------------------------------- #
# optax's conventions → jaxdiv's
# --------------------------------------------------------------------------- #


def _class_axes(axis: Axis, ndim: int) -> tuple[int, ...]:
  """optax's ``axis`` (int, tuple or None = all axes) as sorted-as-given non-negative ints."""
  if axis is None:
    return tuple(range(ndim))
  if isinstance(axis, int) and not isinstance(axis, bool):
    return (v.class_axis(axis, ndim),)
  if isinstance(axis, tuple) and axis:
    return v.reduce_axes(axis, ndim)
  raise TypeError(f"axis must be an int, a non-empty tuple of ints or None; got {axis!r}.")


def _where(where: ArrayLike | None, shape: tuple[int, ...], axes: tuple[int, ...]) -> jax.Array | None:
  """optax's ``where``: of the logits' rank, or of the batch shape (then one entry per row)."""
  if where is None:
    return None
  w = jnp.asarray(where)
  if w.ndim != len(shape):
    w = jnp.expand_dims(w, axes)
  return v.mask(w, shape)


def _rows(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """``x`` with the class axes moved last (in the order given) and flattened into one."""
  if axes == (x.ndim - 1,):
    return x
  batch = tuple(a for a in range(x.ndim) if a not in axes)
  x = jnp.transpose(x, batch + axes)
  return x.reshape(x.shape[: len(batch)] + (-1,))


def _broadcast(name: str, value: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  try:
    return jnp.broadcast_to(value, shape)
  except ValueError as e:
    raise ValueError(
        f"{name} must be broadcastable to the logits shape {list(shape)}; got {list(value.shape)}."
    ) from e


def _categorical(logits, target, axis, where, *, names=("logits", "labels"), broadcast=True):
  """(logits, target, mask) with the class axes flattened last, validated under optax's names.

  ``broadcast``: labels may broadcast to the logits (the cross-entropies; integer
  or bool one-hot labels are cast to float); otherwise they must match exactly.
  """
  x = v.as_floating(names[0], logits)
  if broadcast:
    t = _broadcast(names[1], v.as_probabilities(names[1], target), x.shape)
  else:
    t = v.as_floating(names[1], target)
    v.same_shape(names[1], t, names[0], x)
  axes = _class_axes(axis, x.ndim)
  mask = _where(where, x.shape, axes)
  return _rows(x, axes), _rows(t, axes), None if mask is None else _rows(mask, axes)


# --------------------------------------------------------------------------- #
# Categorical cross-entropies
# --------------------------------------------------------------------------- #


def softmax_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""optax's ``softmax_cross_entropy``: cross-entropy against probability labels.

  .. math:: \ell = -\sum_c y_c \log \mathrm{softmax}(z)_c

  Args:
    logits: unnormalised log-probabilities, ``[..., num_classes]``.
    labels: target probabilities (one-hot or smoothed), broadcastable to
      ``logits.shape``.
    axis: the class axis, a tuple of axes (flattened into one class axis), or
      None for all axes.
    where: classes to include, of ``logits.shape`` or of the batch shape (one
      entry per example).

  Returns:
    ``[...]``: ``logits.shape`` without ``axis``, float32 (float64 for float64).

  Numerics:
    :func:`jaxdiv.soft_cross_entropy`: a label of 0 on a ``-inf`` logit
    contributes 0 with finite derivatives (optax: NaN).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxdiv import optax as losses
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> losses.softmax_cross_entropy(logits, labels)
    Array([0.2761297, 2.951799 ], dtype=float32)
    >>> losses.softmax_cross_entropy(jnp.array([0.0, -jnp.inf]), jnp.array([1.0, 0.0]))
    Array(0., dtype=float32)
  """
  x, y, mask = _categorical(logits, labels, axis, where)
  return jaxdiv.soft_cross_entropy(x, y, axis=-1, where=mask)


def safe_softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  """optax's ``safe_softmax_cross_entropy``: the same function as :func:`softmax_cross_entropy`.

  optax keeps two versions that differ at ``-inf`` logits; jaxdiv has one that
  is right at both, so this is :func:`softmax_cross_entropy` over the last axis.

  Args:
    logits: unnormalised log-probabilities, ``[..., num_classes]``.
    labels: target probabilities, broadcastable to ``logits.shape``.

  Returns:
    ``[...]`` per-example cross-entropies, float32 (float64 for float64).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxdiv import optax as losses
    >>> losses.safe_softmax_cross_entropy(jnp.array([0.0, -jnp.inf, 1.0]), jnp.array([0.5, 0.0, 0.5]))
    Array(0.8132616, dtype=float32)
  """
  return softmax_cross_entropy(logits, labels)


def softmax_cross_entropy_with_integer_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""optax's ``softmax_cross_entropy_with_integer_labels``.

  .. math:: \ell = \mathrm{logsumexp}(z) - z_y

  Args:
    logits: unnormalised log-probabilities, ``[..., num_classes]``.
    labels: integer class indices of the batch shape (``logits.shape``
      without ``axis``); with a tuple ``axis``, a flat (row-major) index into
      the class axes in the order given.
    axis: the class axis or a tuple of class axes.
    where: classes to include, of ``logits.shape`` or of the batch shape.

  Returns:
    ``[...]`` per-example cross-entropies, float32 (float64 for float64).

  Numerics:
    :func:`jaxdiv.cross_entropy`: ties at ``1e30`` give ``log 2`` (optax: 0);
    a fully masked row gives 0 with zero gradient; an out-of-range label gives
    NaN with zero gradient.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxdiv import optax as losses
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> losses.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 1]))
    Array([0.2761297, 2.951799 ], dtype=float32)
  """
  if axis is None:
    raise TypeError("axis must be an int or a tuple of ints, as in optax; got None.")
  x = v.as_floating("logits", logits)
  y = v.as_integer("labels", labels, "For probability labels use softmax_cross_entropy.")
  axes = _class_axes(axis, x.ndim)
  mask = _where(where, x.shape, axes)
  x = _rows(x, axes)
  return jaxdiv.cross_entropy(x, y, axis=-1, where=None if mask is None else _rows(mask, axes))


def poly_loss_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    epsilon: ArrayLike = 2.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""optax's ``poly_loss_cross_entropy`` (Poly-1): cross-entropy plus ``ε (1 - p_t)``.

  .. math:: \ell = -\sum_c y_c \log q_c + \epsilon \sum_c y_c (1 - q_c),
     \qquad q = \mathrm{softmax}(z)

  Args:
    logits: unnormalised log-probabilities, ``[..., num_classes]``.
    labels: target probabilities, broadcastable to ``logits.shape``.
    epsilon: the coefficient of the first polynomial term (2 for ImageNet
      classification, -1 for detection, per the paper).
    axis: the class axis, a tuple of axes, or None for all axes.
    where: classes to include, of ``logits.shape`` or of the batch shape.

  Returns:
    ``[...]`` per-example losses, float32 (float64 for float64).

  Numerics:
    The cross-entropy is :func:`jaxdiv.soft_cross_entropy`; ``1 - q_c`` is
    ``-expm1(log q_c)``, exact for ``q_c`` near 1.

  References:
    Leng et al., "PolyLoss: A Polynomial Expansion Perspective of
    Classification Loss Functions", ICLR 2022, arXiv:2204.12511.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxdiv import optax as losses
    >>> losses.poly_loss_cross_entropy(jnp.array([0.0, 0.0]), jnp.array([1.0, 0.0]))
    Array(1.6931472, dtype=float32)
  """
  x, y, mask = _categorical(logits, labels, axis, where)
  ce = jaxdiv.soft_cross_entropy(x, y, axis=-1, where=mask)
  x, y = v.to_compute(x, y)
  if mask is not None:
    x, y = jnp.where(mask, x, -jnp.inf), jnp.where(mask, y, 0)
  log_q = _kernels.log_softmax(x, x.ndim - 1)[0]
  one_minus_pt = jnp.sum(y * -jnp.expm1(log_q), axis=-1)
  eps = jnp.asarray(epsilon).astype(ce.dtype)
  return ce + eps * one_minus_pt


def smooth_labels(
    labels: ArrayLike,
    alpha: ArrayLike,
    *,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""optax's ``smooth_labels``: ``(1 - α) y + α / K``.

  Args:
    labels: one-hot (or probability) labels, floating, ``[..., num_classes]``.
    alpha: the smoothing factor.
    axis: the class axis, a tuple of axes, or None for all axes.
    where: classes that exist, broadcastable to ``labels.shape``; ``K`` counts
      them, and masked classes get 0 (optax gives them ``α / K`` too, so its
      rows sum to more than one).

  Returns:
    ``labels.shape``, in the labels' dtype (as optax).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxdiv import optax as losses
    >>> losses.smooth_labels(jnp.array([0.0, 1.0, 0.0, 0.0]), 0.2)
    Array([0.05, 0.85, 0.05, 0.05], dtype=float32)
  """
  y = v.as_floating("labels", labels)
  axes = _class_axes(axis, y.ndim)
  a = jnp.asarray(alpha).astype(y.dtype)
  if where is None:
    num = 1
    for ax in axes:
      num *= y.shape[ax]
    return (1 - a) * y + a / num
  mask = v.mask(where, y.shape)
  num = jnp.sum(mask, axis=axes, keepdims=True).astype(y.dtype)
  return jnp.where(mask, (1 - a) * y + a / num, jnp.zeros_like(y))


# --------------------------------------------------------------------------- #
# KL divergences
# --------------------------------------------------------------------------- #

_KL_NAMES = ("log_predictions", "targets")


def kl_divergence(
    log_predictions: ArrayLike,
    targets: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""optax's ``kl_divergence``: KL(targets ‖ predictions) from log-predictions.

  .. math:: \mathrm{KL}(p \,\|\, q) = \sum_c p_c (\log p_c - \log q_c)

  Args:
    log_predictions: log-probabilities of the model, ``[..., num_classes]``
      (logits are normalised first, so raw logits work too).
    targets: target probabilities, normalised, same shape (zeros allowed).
    axis: the class axis, a tuple of axes, or None for all axes.
    where: classes to include (removed from both distributions),
      broadcastable to ``log_predictions.shape``.

  Returns:
    ``[...]`` per-example divergences, float32 (float64 for float64).

  Numerics:
    :func:`jaxdiv.kl_divergence`: never negative, accurate for tiny KL; a
    target of 0 contributes 0 with zero gradient even against a ``-inf``
    log-prediction (optax: NaN value, and a NaN target gradient at every zero
    target).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxdiv import optax as losses
    >>> kl = losses.kl_divergence(jnp.log(jnp.array([0.2, 0.8])), jnp.array([0.1, 0.9]))
    >>> print(f"{kl:.4f}")
    0.0367
  """
  x, p, mask = _categorical(log_predictions, targets, axis, where, names=_KL_NAMES, broadcast=False)
  return jaxdiv.kl_divergence(x, p, axis=-1, where=mask)


def kl_divergence_with_log_targets(
    log_predictions: ArrayLike,
    log_targets: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""optax's ``kl_divergence_with_log_targets``: KL(targets ‖ predictions), both in log space.

  .. math:: \mathrm{KL}(p \,\|\, q) = \sum_c e^{\log p_c} (\log p_c - \log q_c)

  Args:
    log_predictions: log-probabilities (or logits) of the model, ``[..., num_classes]``.
    log_targets: log-probabilities (or logits) of the target, same shape;
      ``-inf`` marks a class of probability 0.
    axis: the class axis, a tuple of axes, or None for all axes.
    where: classes to include, broadcastable to ``log_predictions.shape``.

  Returns:
    ``[...]`` per-example divergences, float32 (float64 for float64).

  Numerics:
    :func:`jaxdiv.kl_divergence_with_log_targets`: a ``-inf`` log-target
    contributes 0 (optax: NaN, since ``0 · -inf``), never negative, accurate
    for tiny KL.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxdiv import optax as losses
    >>> log_p = jnp.log(jnp.array([0.5, 0.5, 0.0]))
    >>> log_q = jnp.log(jnp.array([0.25, 0.5, 0.25]))
    >>> kl = losses.kl_divergence_with_log_targets(log_q, log_p)
    >>> print(f"{kl:.4f}")
    0.3466
  """
  names = ("log_predictions", "log_targets")
  x, t, mask = _categorical(log_predictions, log_targets, axis, where, names=names, broadcast=False)
  return jaxdiv.kl_divergence_with_log_targets(x, t, axis=-1, where=mask)


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
    targets: the (unnormalised, non-negative) target measure, same shape.
    axis: the axis, a tuple of axes, or None for all axes.
    where: elements to include, broadcastable to ``log_predictions.shape``.

  Returns:
    ``[...]`` per-example divergences, float32 (float64 for float64).

  Numerics:
    Summed as jaxdiv's non-negative terms ``p (expm1(d) - d)``,
    ``d = log q - log p``: accurate when ``p ≈ q``; ``p = 0`` contributes ``q``
    with finite derivatives, ``0`` against ``q = 0`` (optax: NaN).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxdiv import optax as losses
    >>> d = losses.generalized_kl_divergence(jnp.log(jnp.array([1.0, 2.0])), jnp.array([2.0, 2.0]))
    >>> print(f"{d:.4f}")
    0.3863
  """
  x = v.as_floating("log_predictions", log_predictions)
  p = v.as_floating("targets", targets)
  v.same_shape("targets", p, "log_predictions", x)
  axes = _class_axes(axis, x.ndim)
  mask = v.mask(where, x.shape)
  x, p = v.to_compute(x, p)
  if mask is not None:
    x, p = jnp.where(mask, x, -jnp.inf), jnp.where(mask, p, 0)
  return jnp.sum(_kernels.kl_terms(p, x, False), axis=axes)


convex_kl_divergence = generalized_kl_divergence
"""optax's deprecated name for :func:`generalized_kl_divergence` (here without the warning)."""


# --------------------------------------------------------------------------- #
# Sigmoid losses
# --------------------------------------------------------------------------- #


def _binary(logits, labels):
  x = v.as_floating("logits", logits)
  y = v.as_probabilities("labels", labels, "Pass 0/1 labels or probabilities in [0, 1].")
  return x, _broadcast("labels", y, x.shape)


def sigmoid_binary_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  r"""optax's ``sigmoid_binary_cross_entropy``, elementwise.

  .. math:: \ell = -y \log \sigma(z) - (1 - y) \log(1 - \sigma(z))

  Args:
    logits: logits of the positive outcome, any shape.
    labels: 0/1 labels or probabilities, broadcastable to ``logits.shape``.

  Returns:
    ``logits.shape``, float32 (float64 for float64).

  Numerics:
    :func:`jaxdiv.binary_cross_entropy`: at ``z = ±inf`` with an agreeing
    label the loss is 0 with zero gradient (optax: NaN).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxdiv import optax as losses
    >>> losses.sigmoid_binary_cross_entropy(jnp.array([jnp.inf, 0.0]), jnp.array([1.0, 1.0]))
    Array([0.       , 0.6931472], dtype=float32)
  """
  x, y = _binary(logits, labels)
  return jaxdiv.binary_cross_entropy(x, y)


def sigmoid_focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    alpha: ArrayLike | None = None,
    gamma: ArrayLike = 2.0,
) -> jax.Array:
  r"""optax's ``sigmoid_focal_loss``: binary cross-entropy scaled by ``(1 - p_t)^γ``.

  .. math:: \ell = \alpha_t (1 - p_t)^\gamma\, \mathrm{BCE}(z, y), \quad
     1 - p_t = (1 - y)\,\sigma(z) + y\,(1 - \sigma(z)),\quad
     \alpha_t = \alpha y + (1 - \alpha)(1 - y)

  Args:
    logits: logits of the positive outcome, any shape.
    labels: 0/1 labels or probabilities, broadcastable to ``logits.shape``.
    alpha: optional weight of the positive class in ``(0, 1)``.
    gamma: the focusing exponent (0 gives the cross-entropy).

  Returns:
    ``logits.shape``, float32 (float64 for float64).

  Numerics:
    The cross-entropy is :func:`jaxdiv.binary_cross_entropy`; ``log(1 - p_t)``
    is a log-sum-exp of ``log σ(±z)``, so logits of ``±inf`` or ``±1e30`` give
    0 with zero gradient where the label agrees (optax: NaN), and
    ``gamma = 0`` never forms ``0 · -inf``.

  References:
    Lin et al., "Focal Loss for Dense Object Detection", arXiv:1708.02002.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxdiv import optax as losses
    >>> losses.sigmoid_focal_loss(jnp.array([0.0, jnp.inf]), jnp.array([1.0, 1.0]))
    Array([0.17328680, 0.        ], dtype=float32)
  """
  x, y = _binary(logits, labels)
  ce = jaxdiv.binary_cross_entropy(x, y)
  x, y = v.to_compute(x, y)
  # log(1 - p_t) = logsumexp(log(1 - y) + log σ(z), log y + log σ(-z)), with the
  # weights' logs -inf (not NaN) at y = 0 or 1; the kernel's logsumexp gives
  # -inf with zero derivative where both terms vanish.
  log_w1 = jnp.log(jnp.where(y < 1, 1 - y, 1))
  log_w0 = jnp.log(jnp.where(y > 0, y, 1))
  terms = jnp.stack(
      [jnp.where(y < 1, log_w1 + jax.nn.log_sigmoid(x), -jnp.inf),
       jnp.where(y > 0, log_w0 + jax.nn.log_sigmoid(-x), -jnp.inf)],
      axis=-1,
  )
  _, shift, log_sum = _kernels.log_softmax(terms, terms.ndim - 1)
  log_one_minus_pt = jnp.squeeze(shift + log_sum, -1)
  g = jnp.asarray(gamma).astype(ce.dtype)
  loss = ce * jnp.exp(_kernels.mul_safe(jnp.broadcast_to(g, log_one_minus_pt.shape), log_one_minus_pt))
  if alpha is None:
    return loss
  a = jnp.asarray(alpha).astype(ce.dtype)
  return (a * y + (1 - a) * (1 - y)) * loss
