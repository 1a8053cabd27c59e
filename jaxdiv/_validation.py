"""Trace-time argument checks shared by every jaxdiv loss.

Everything here looks only at static facts (dtype, shape, axis), so the checks
run once at trace time under ``jit`` and cost nothing at run time. Each error
names the argument, what was expected, what was passed and how to fix it.
Value checks (a label in range) cannot run under ``jit`` without help; see
:func:`jaxdiv.check_labels`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import checkify
from jax.typing import ArrayLike

from jaxdiv import _rows


def _describe(x: jax.Array) -> str:
  return f"{x.dtype}{list(x.shape)}"


def as_floating(name: str, value: ArrayLike, hint: str = "") -> jax.Array:
  """``value`` as a JAX array, which must have a floating dtype."""
  x = jnp.asarray(value)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
        f"{name} must be a floating-point array; got {_describe(x)}. {hint}".rstrip()
    )
  return x


def as_integer(name: str, value: ArrayLike, hint: str = "") -> jax.Array:
  """``value`` as a JAX array, which must have an integer dtype."""
  x = jnp.asarray(value)
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise TypeError(
        f"{name} must be an integer array of class indices; got {_describe(x)}. {hint}".rstrip()
    )
  return x


def as_probabilities(name: str, value: ArrayLike, hint: str = "") -> jax.Array:
  """Binary targets: floating probabilities, or bool/int 0-1 labels cast to float."""
  x = jnp.asarray(value)
  if jnp.issubdtype(x.dtype, jnp.bool_) or jnp.issubdtype(x.dtype, jnp.integer):
    return x.astype(jnp.float32)
  return as_floating(name, x, hint)


def class_axis(axis: Any, ndim: int, name: str = "logits") -> int:
  """``axis`` normalised to a non-negative int for an array of rank ``ndim``."""
  if isinstance(axis, bool) or not isinstance(axis, int):
    raise TypeError(f"axis must be an int; got {axis!r} of type {type(axis).__name__}.")
  if ndim == 0:
    raise ValueError(f"{name} must have at least one dimension (the class axis); got a scalar.")
  if not -ndim <= axis < ndim:
    raise ValueError(
        f"axis={axis} is out of range for {name} of rank {ndim}; expected -{ndim} <= axis < {ndim}."
    )
  return axis % ndim


def reduce_axes(axis: Any, ndim: int, name: str = "logits") -> tuple[int, ...]:
  """``axis`` (None, an int or a tuple of ints) as a tuple of non-negative ints."""
  if axis is None:
    return ()
  axes = (axis,) if isinstance(axis, int) else axis
  if not isinstance(axes, tuple):
    raise TypeError(f"axis must be None, an int or a tuple of ints; got {axis!r}.")
  normalised = tuple(class_axis(a, ndim, name) for a in axes)
  if len(set(normalised)) != len(normalised):
    raise ValueError(f"axis={axis} names the same axis twice.")
  return normalised


def same_shape(name: str, x: jax.Array, ref_name: str, ref: jax.Array) -> None:
  if x.shape != ref.shape:
    raise ValueError(
        f"{name} must have the same shape as {ref_name}, {list(ref.shape)}; got {list(x.shape)}."
    )


def label_shape(labels: jax.Array, logits: jax.Array, axis: int) -> None:
  expected = logits.shape[:axis] + logits.shape[axis + 1 :]
  if labels.shape != expected:
    raise ValueError(
        f"labels must have the shape of logits without the class axis {axis}, "
        f"{list(expected)}; got {list(labels.shape)} (logits {list(logits.shape)})."
    )


def mask(where: ArrayLike | None, shape: tuple[int, ...]) -> jax.Array | None:
  """``where`` as a bool array of exactly ``shape``, or None."""
  if where is None:
    return None
  w = jnp.asarray(where)
  if w.dtype != jnp.bool_:
    raise TypeError(f"where must be a boolean mask; got {_describe(w)}.")
  if w.ndim > len(shape) or any(a not in (1, b) for a, b in zip(w.shape[::-1], shape[::-1])):
    raise ValueError(
        f"where must be broadcastable to the logits shape {list(shape)} "
        f"(use where[..., None] to mask whole rows); got {list(w.shape)}."
    )
  return jnp.broadcast_to(w, shape)


def to_compute(*arrays: jax.Array) -> list[jax.Array]:
  """Cast floating arrays to the accumulation dtype (float32, or float64 under x64)."""
  dtype = _rows.compute_dtype(*(a.dtype for a in arrays))
  return [a.astype(dtype) for a in arrays]


def wide_labels(labels: jax.Array) -> jax.Array:
  """Integer labels in a signed type wide enough to compare with any class count and index with.

  int64 under x64, else int32. A small type (int8, uint16) would wrap the range
  check ``y < num_classes`` and a one-hot built in it; an unsigned value beyond
  the signed range becomes negative, which the range check flags.
  """
  wide = jnp.int64 if jax.config.read("jax_enable_x64") else jnp.int32
  return labels.astype(wide)


def check_labels(labels: ArrayLike, num_classes: int, *, ignore_index: int | None = None) -> jax.Array:
  """Checks that every label lies in ``[0, num_classes)`` and returns ``labels``.

  Label values cannot be checked at trace time. jaxdiv's losses define the
  result for an out-of-range label (a NaN loss for that example, and zero
  gradient); this is the opt-in check that fails loudly instead. Eagerly it
  raises at once; under ``jit`` wrap the function with
  ``jax.experimental.checkify.checkify`` and call ``err.throw()``.

  Args:
    labels: integer class indices, any shape.
    num_classes: the number of classes.
    ignore_index: a label value that is allowed as well (e.g. ``-100``).

  Returns:
    ``labels``, unchanged.

  Raises:
    JaxRuntimeError: eagerly, if a label is out of range.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdiv
    >>> from jax.experimental import checkify
    >>> f = checkify.checkify(jax.jit(lambda y: jaxdiv.check_labels(y, 3)))
    >>> err, _ = f(jnp.array([0, 2, 3]))
    >>> print(err.get())  # doctest: +ELLIPSIS
    labels must lie in [0, 3); found 3 ...
  """
  given = as_integer("labels", labels)
  y = wide_labels(given)
  valid = (y >= 0) & (y < num_classes)
  if ignore_index is not None:
    valid = valid | (y == ignore_index)
  bad = jnp.where(valid, 0, y)
  first_bad = bad.reshape(-1)[jnp.argmax(~valid.reshape(-1))] if y.size else jnp.asarray(0)
  checkify.check(
      jnp.all(valid), "labels must lie in [0, {n}); found {bad}", n=jnp.asarray(num_classes), bad=first_bad
  )
  return labels if isinstance(labels, jax.Array) else given
