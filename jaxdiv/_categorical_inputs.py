"""Inputs of the whole-row categorical losses: checked (model, target) pairs, class masks, row reduction.

Shared by :mod:`jaxdiv._categorical` (the cross-entropies and the entropy),
:mod:`jaxdiv._divergences` (KL and JSD) and :mod:`jaxdiv._distill`, so that
every family checks its arguments with the same words and masks classes the
same way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import _kernels, _reduction
from jaxdiv import _validation as v

INT_HINT = "For integer class labels use jaxdiv.cross_entropy."
PROB_HINT = "For probability targets use jaxdiv.soft_cross_entropy."


def model(logits: ArrayLike, axis: int, where: ArrayLike | None) -> tuple[jax.Array, int, jax.Array | None]:
  """Validated model logits (input dtype), the non-negative class axis and the class mask."""
  x = v.as_floating("logits", logits)
  ax = v.class_axis(axis, x.ndim)
  mask = v.mask(where, x.shape)
  return x, ax, mask


def masked(x: jax.Array, mask: jax.Array | None, fill: float) -> jax.Array:
  """``x`` with the masked classes replaced by ``fill`` (NaN there never reaches the loss)."""
  return x if mask is None else jnp.where(mask, x, jnp.asarray(fill, x.dtype))


def log_probs(x: jax.Array, ax: int, mask: jax.Array | None) -> jax.Array:
  """Log-probabilities over the unmasked classes (``-inf`` at masked ones)."""
  return _kernels.log_softmax(masked(x, mask, -jnp.inf), ax)[0]


def pair(logits, target, target_name: str, axis: int, where, hint: str, cast: bool = True):
  """Validated ``(model, target, axis, mask)`` of equal shape.

  ``cast=False`` (for the kernels that widen inside their fusions) keeps a
  shared input dtype such as bfloat16 as it is, avoiding a float32 copy.
  """
  x, ax, mask = model(logits, axis, where)
  t = v.as_floating(target_name, target, hint)
  v.same_shape(target_name, t, "logits", x)
  if cast or x.dtype != t.dtype:
    x, t = v.to_compute(x, t)
  return x, t, ax, mask


def reduce_rows(loss: jax.Array, mask: jax.Array | None, ax: int, reduction, normalizer) -> jax.Array:
  """Reduces per-example ``loss``; a row counts towards the mean if any class is unmasked."""
  weight = None if mask is None else jnp.any(mask, axis=ax).astype(loss.dtype)
  return _reduction.reduce(loss, reduction, weight=weight, normalizer=normalizer)
