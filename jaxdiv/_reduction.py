"""The one reduction every jaxdiv loss uses: ``none``, ``sum``, ``mean``, ``batchmean``.

Each loss computes per-example values (already zero, with zero gradient, for
masked rows and ignored labels) and a per-example *weight* for the denominator
of ``mean`` (1 for a counted example, 0 for a masked or ignored one, ``w[y_n]``
with class weights), then calls :func:`reduce`. Keeping this in one place means
the all-masked case, the torch semantics and the micro-batch normaliser are
right for every loss at once.

Semantics (``ℓ_n`` the per-example losses, ``w_n`` the weights):

* ``"none"``: ``ℓ_n`` unchanged (weighted by the class weight if one is given).
* ``"sum"``: ``Σ ℓ_n``.
* ``"mean"``: ``Σ ℓ_n / Σ w_n`` — the mean over unmasked, non-ignored examples,
  and with class weights torch's weighted mean ``Σ w[y_n] ℓ_n / Σ w[y_n]``.
* ``"batchmean"``: ``Σ ℓ_n / B`` with ``B`` the size of the leading axis of
  the per-example output, as ``torch.nn.functional.kl_div(reduction="batchmean")``
  (``input.size(0)``); for a scalar per-example output ``B = 1``.
* ``normalizer``: with ``"mean"`` or ``"batchmean"``, ``Σ ℓ_n / normalizer``
  instead. Pass the count (or weight sum) of the *whole* batch when the batch is
  split into micro-batches, and the micro-batch losses add up to the full-batch
  loss exactly, gradients included.

A zero denominator (every example masked or ignored, or ``normalizer=0``)
gives 0 with zero gradient, never NaN (torch returns NaN for ``mean`` when every
target is ``ignore_index``).
"""

from __future__ import annotations

from typing import Literal, get_args

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

Reduction = Literal["none", "sum", "mean", "batchmean"]
_REDUCTIONS = get_args(Reduction)

def check(reduction: str, normalizer: ArrayLike | None) -> None:
  """Trace-time check of the ``reduction`` and ``normalizer`` arguments."""
  if reduction not in _REDUCTIONS:
    raise ValueError(f"reduction must be one of {list(_REDUCTIONS)}; got {reduction!r}.")
  if normalizer is None:
    return
  if reduction not in ("mean", "batchmean"):
    raise ValueError(
        f"normalizer is only used with reduction='mean' or 'batchmean'; got reduction={reduction!r}. "
        "Drop normalizer or choose a mean."
    )
  if isinstance(normalizer, (str, bytes)):
    raise TypeError(f"normalizer must be an integer or floating scalar; got {normalizer!r}.")
  try:
    n = jnp.asarray(normalizer)
  except TypeError as e:
    raise TypeError(f"normalizer must be an integer or floating scalar; got {normalizer!r}.") from e
  if n.shape != ():
    raise ValueError(f"normalizer must be a scalar (a count or weight sum); got shape {list(n.shape)}.")
  if not (jnp.issubdtype(n.dtype, jnp.integer) or jnp.issubdtype(n.dtype, jnp.floating)):
    raise TypeError(f"normalizer must be an integer or floating scalar; got {n.dtype}.")


def reduce_elements(
    terms: jax.Array,
    mask: jax.Array | None,
    axes: tuple[int, ...],
    reduction: Reduction,
    normalizer: ArrayLike | None,
) -> jax.Array:
  """Elementwise losses: masked terms zeroed, summed over ``axes``, then :func:`reduce`.

  An output element counts towards ``"mean"`` if any of the elements summed into
  it is unmasked.
  """
  if mask is not None:
    terms = jnp.where(mask, terms, 0)
  loss = jnp.sum(terms, axis=axes) if axes else terms
  weight = None
  if mask is not None:
    weight = (jnp.any(mask, axis=axes) if axes else mask).astype(loss.dtype)
  return reduce(loss, reduction, weight=weight, normalizer=normalizer)


def _safe_divide(total: jax.Array, denominator: jax.Array) -> jax.Array:
  """``total / denominator``, and 0 with zero gradient where the denominator is 0."""
  zero = denominator == 0
  safe_denominator = jnp.where(zero, jnp.ones_like(denominator), denominator)
  return jnp.where(zero, jnp.zeros_like(total), total / safe_denominator)


def reduce(
    loss: jax.Array,
    reduction: Reduction,
    *,
    weight: jax.Array | None = None,
    normalizer: ArrayLike | None = None,
) -> jax.Array:
  """Reduces per-example ``loss`` as described in the module docstring.

  Args:
    loss: per-example values, any shape, zero where an example is masked or
      ignored (and already multiplied by its class weight).
    reduction: ``"none"``, ``"sum"``, ``"mean"`` or ``"batchmean"``.
    weight: per-example denominators for ``"mean"``, same shape as ``loss``
      (1 per counted example, 0 per masked one); None counts every example.
    normalizer: optional scalar denominator for ``"mean"``/``"batchmean"``.

  Returns:
    ``loss`` for ``"none"``, else a scalar of ``loss.dtype``.
  """
  check(reduction, normalizer)
  if reduction == "none":
    return loss
  total = jnp.sum(loss)
  if reduction == "sum":
    return total
  if normalizer is not None:
    denominator = jnp.asarray(normalizer).astype(loss.dtype)
  elif reduction == "batchmean":
    denominator = jnp.asarray(loss.shape[0] if loss.ndim else 1, loss.dtype)
  elif weight is None:
    denominator = jnp.asarray(loss.size, loss.dtype)
  else:
    denominator = jnp.sum(weight.astype(loss.dtype))
  return _safe_divide(total, denominator)
