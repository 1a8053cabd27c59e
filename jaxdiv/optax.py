"""Drop-in replacements for optax's classification losses, built on jaxdiv.

Switching is a one-line import change::

    # from optax import losses          # before
    from jaxdiv import optax as losses   # after
    loss = losses.softmax_cross_entropy(logits, labels).mean()

Every function here has optax 0.2.8's name, argument names, defaults, ``axis``
(an int, a tuple of ints, or None for all axes) and ``where`` conventions,
returns the same per-example shape, and computes **optax's formula**: the same
value as optax wherever optax's value is finite, including unnormalised targets
and unnormalised log-predictions. optax 0.2.8's own tests of these losses run
against the drop-ins in ``tests/test_optax_compat.py``.

* ``softmax_cross_entropy``, ``safe_softmax_cross_entropy`` →
  :func:`jaxdiv.soft_cross_entropy`
* ``softmax_cross_entropy_with_integer_labels`` → :func:`jaxdiv.cross_entropy`
  (optax's reading of a label on a masked class and of negative labels added)
* ``kl_divergence``, ``kl_divergence_with_log_targets``,
  ``generalized_kl_divergence`` → optax's sums, written here NaN-safe: nothing
  is normalised, so they are *not* :func:`jaxdiv.kl_divergence` (which
  normalises its inputs; use it for a KL between distributions given as logits)
* ``sigmoid_binary_cross_entropy`` → :func:`jaxdiv.binary_cross_entropy`
* ``sigmoid_focal_loss`` → :func:`jaxdiv.sigmoid_focal_loss`
* ``poly_loss_cross_entropy`` → :func:`jaxdiv.soft_cross_entropy` plus the
  polynomial term
* ``smooth_labels`` → optax's formula
* ``convex_kl_divergence`` → ``generalized_kl_divergence``, with optax's
  ``DeprecationWarning``

``where`` follows optax per function: the cross-entropies expand a ``where`` of
another rank at ``axis`` (a ``[batch]`` mask drops rows); the KL functions and
``smooth_labels`` broadcast it NumPy-style (a ``[num_classes]`` mask drops
classes), as ``jnp.sum(..., where=where)`` does in optax.

Where the two differ, optax's value is NaN, rounded wrong, or an error; each
case is tested by name in ``tests/test_optax_dropins.py``:

1. **NaN in optax, finite here.** A zero target against a ``-inf`` logit or
   log-prediction is ``0 · log 0 = 0``: ``softmax_cross_entropy`` and
   ``poly_loss_cross_entropy`` (optax: NaN value), ``kl_divergence`` (NaN value;
   NaN gradient w.r.t. a zero target even against a finite prediction),
   ``kl_divergence_with_log_targets`` (NaN as soon as one log-target is
   ``-inf``), ``generalized_kl_divergence`` (NaN value and target gradient),
   ``safe_softmax_cross_entropy`` on an all ``-inf`` row (NaN gradient);
   ``sigmoid_binary_cross_entropy`` and ``sigmoid_focal_loss`` at logits
   ``±inf`` with agreeing labels (optax: NaN; here 0 with zero gradient). A NaN
   in an unmasked input still gives NaN.
2. **Rounded wrong in optax.** Ties at ``|logit| = 1e30`` give ``log 2``
   (optax: 0).
3. **Return dtype.** bfloat16/float16 inputs are accumulated and returned in
   float32 (optax returns the input dtype, rounded to 8 or 11 bits).
   ``smooth_labels`` returns the labels' dtype, as optax does.
4. **Derivatives at the boundary.** The derivative w.r.t. a target probability
   of 0 is taken as 0 (its one-sided value is ``-inf``; optax: NaN), and a
   masked entry (``where`` False) holding NaN or inf reaches neither values
   nor gradients (optax: NaN gradients).
5. **Inputs optax refuses or garbles.** An empty class axis gives 0 (optax's
   empty sum) for every loss; ``poly_loss_cross_entropy`` takes a ``[batch]``
   ``where`` like the other cross-entropies (optax's fails);
   ``sigmoid_focal_loss`` refuses ``gamma < 0`` by name.

This module is reachable only as ``jaxdiv.optax``: imports are absolute, so
``import optax`` anywhere (inside jaxdiv included) still gives the real optax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

import jaxdiv
from jaxdiv import _kernels
from jaxdiv import _optax_conventions as conv
from jaxdiv import _validation as v
from jaxdiv._optax_conventions import Axis
from jaxdiv._optax_kl import (
    convex_kl_divergence,
    generalized_kl_divergence,
    kl_divergence,
    kl_divergence_with_log_targets,
)

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
  x, y, mask = conv.categorical(logits, labels, axis, where)
  if x.shape[-1] == 0:
    return conv.empty_rows(x, (x.ndim - 1,))
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
      the class axes in the order given. As in optax, a negative label
      ``-num_classes <= y < 0`` counts from the end (NumPy indexing).
    axis: the class axis or a tuple of class axes.
    where: classes to include, of ``logits.shape`` or of the batch shape.
      As in optax it restricts the normaliser: a label on a masked class
      gives ``logsumexp(kept logits) - logits[y]``.

  Returns:
    ``[...]`` per-example cross-entropies, float32 (float64 for float64).

  Numerics:
    :func:`jaxdiv.cross_entropy`: ties at ``1e30`` give ``log 2`` (optax: 0);
    a fully masked row gives 0 with zero gradient; a label outside
    ``[-num_classes, num_classes)`` gives NaN (as optax) with zero gradient.

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
  axes = conv.class_axes(axis, x.ndim)
  mask = conv.class_where(where, x.shape, axes)
  x = conv.rows(x, axes)
  k = x.shape[-1]
  if jnp.issubdtype(y.dtype, jnp.signedinteger):  # optax indexes NumPy-style: -1 is the last class
    y = y.astype(y.dtype if y.dtype.itemsize >= 4 else jnp.int32)  # y + k must not wrap in int8
    y = jnp.where((y < 0) & (y >= -k), y + k, y)
  if mask is None:
    return jaxdiv.cross_entropy(x, y, axis=-1)
  mask = conv.rows(mask, axes)
  # optax: logsumexp over the kept classes minus the label's logit, kept or not.
  # jaxdiv.cross_entropy gives +inf for a label on a masked class (it has
  # probability 0), so such rows take the label of their largest kept logit,
  # z_top, and add z_top - z_y: the kernel's value stays well conditioned.
  in_range = (y >= 0) & (y < k)
  y_safe = jnp.where(in_range, y, 0)[..., None]
  top = jnp.argmax(jnp.where(mask, x, -jnp.inf), axis=-1)[..., None]
  moved = in_range & ~jnp.take_along_axis(mask, y_safe, -1)[..., 0] & jnp.any(mask, axis=-1)
  ce = jaxdiv.cross_entropy(x, jnp.where(moved, top[..., 0], y), axis=-1, where=mask)
  z_top, z_y = (jnp.take_along_axis(x, i, -1)[..., 0].astype(ce.dtype) for i in (top, y_safe))
  return ce + jnp.where(moved, z_top - z_y, 0)


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
  x, y, mask = conv.categorical(logits, labels, axis, where)
  if x.shape[-1] == 0:
    return conv.empty_rows(x, (x.ndim - 1,))
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
      them. As in optax every entry, masked or not, gets ``α / K``; mask the
      loss with the same ``where`` so that masked classes do not count.

  Returns:
    ``labels.shape``, in the labels' dtype (as optax).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxdiv import optax as losses
    >>> losses.smooth_labels(jnp.array([0.0, 1.0, 0.0, 0.0]), 0.2)
    Array([0.05, 0.85, 0.05, 0.05], dtype=float32)
  """
  y = v.as_floating("labels", labels)
  axes = conv.class_axes(axis, y.ndim)
  a = jnp.asarray(alpha).astype(y.dtype)
  if where is None:
    num = jnp.asarray(conv.num_classes(y.shape, axes), y.dtype)
  else:
    mask = conv.elementwise_where(where, y.shape)
    assert mask is not None
    num = jnp.sum(mask, axis=axes, keepdims=True).astype(y.dtype)
  return (1 - a) * y + a / num


# --------------------------------------------------------------------------- #
# Sigmoid losses
# --------------------------------------------------------------------------- #


def _binary(logits, labels):
  x = v.as_floating("logits", logits)
  y = v.as_probabilities("labels", labels, "Pass 0/1 labels or probabilities in [0, 1].")
  return x, conv.broadcast_to("labels", y, x.shape)


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
    :func:`jaxdiv.sigmoid_focal_loss`: logits of ``±inf`` or ``±1e30`` with an
    agreeing label give 0 with zero gradient (optax: NaN at ``±inf``), and
    ``gamma = 0`` never forms ``0 · -inf``. ``gamma < 0`` is refused.

  References:
    Lin et al., "Focal Loss for Dense Object Detection", arXiv:1708.02002.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxdiv import optax as losses
    >>> losses.sigmoid_focal_loss(jnp.array([0.0, jnp.inf]), jnp.array([1.0, 1.0]))
    Array([0.1732868, 0.       ], dtype=float32)
  """
  x, y = _binary(logits, labels)
  return jaxdiv.sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma)
