"""optax's argument conventions (``axis`` as an int, a tuple or None; ``where`` per function) as jaxdiv's.

Shared by the drop-ins of :mod:`jaxdiv.optax` and :mod:`jaxdiv._optax_kl`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import _validation as v

Axis = int | tuple[int, ...] | None


def class_axes(axis: Axis, ndim: int) -> tuple[int, ...]:
  """optax's ``axis`` (int, tuple or None = all axes) as sorted-as-given non-negative ints."""
  if axis is None:
    return tuple(range(ndim))
  if isinstance(axis, int) and not isinstance(axis, bool):
    return (v.class_axis(axis, ndim),)
  if isinstance(axis, tuple) and axis:
    return v.reduce_axes(axis, ndim)
  raise TypeError(f"axis must be an int, a non-empty tuple of ints or None; got {axis!r}.")


def class_where(where: ArrayLike | None, shape: tuple[int, ...], axes: tuple[int, ...]) -> jax.Array | None:
  """optax's cross-entropy ``where``: of the logits' rank, or of another rank expanded at ``axes``.

  So a ``[batch]`` mask drops whole rows. (optax's KL functions broadcast
  ``where`` NumPy-style instead: :func:`_elementwise_where`.)
  """
  if where is None:
    return None
  w = jnp.asarray(where)
  if w.ndim != len(shape):
    if w.ndim + len(axes) != len(shape):
      raise ValueError(
          f"where must have the logits' shape {list(shape)} (or broadcast to it) or the batch shape "
          f"{[n for a, n in enumerate(shape) if a not in axes]}; got {list(w.shape)}."
      )
    w = jnp.expand_dims(w, axes)
  return v.mask(w, shape)


def elementwise_where(where: ArrayLike | None, shape: tuple[int, ...]) -> jax.Array | None:
  """optax's KL ``where``, as in ``jnp.sum(terms, axis, where=where)``: broadcast NumPy-style."""
  return v.mask(where, shape)


def num_classes(shape: tuple[int, ...], axes: tuple[int, ...]) -> int:
  return math.prod(shape[a] for a in axes)


def empty_rows(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """optax's value over an empty class axis: an empty sum, 0 per example."""
  batch = tuple(n for a, n in enumerate(x.shape) if a not in axes)
  return jnp.zeros(batch, v.to_compute(x)[0].dtype)


def rows(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """``x`` with the class axes moved last (in the order given) and flattened into one."""
  if axes == (x.ndim - 1,):
    return x
  batch = tuple(a for a in range(x.ndim) if a not in axes)
  x = jnp.transpose(x, batch + axes)
  return x.reshape(x.shape[: len(batch)] + (-1,))


def broadcast_to(name: str, value: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  try:
    return jnp.broadcast_to(value, shape)
  except ValueError as e:
    raise ValueError(
        f"{name} must be broadcastable to the logits shape {list(shape)}; got {list(value.shape)}."
    ) from e


def categorical(logits, target, axis, where, *, names=("logits", "labels"), broadcast=True):
  """(logits, target, mask) with the class axes flattened last, validated under optax's names.

  ``broadcast``: labels may broadcast to the logits (the cross-entropies; integer
  or bool one-hot labels are cast to float); otherwise they must match exactly.
  """
  x = v.as_floating(names[0], logits)
  if broadcast:
    t = broadcast_to(names[1], v.as_probabilities(names[1], target), x.shape)
  else:
    t = v.as_floating(names[1], target)
    v.same_shape(names[1], t, names[0], x)
  axes = class_axes(axis, x.ndim)
  mask = class_where(where, x.shape, axes)
  return rows(x, axes), rows(t, axes), None if mask is None else rows(mask, axes)
