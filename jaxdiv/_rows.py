"""Row machinery shared by every driver: row statistics, their combination, widening, probabilities.

A row is the class axis of one example. Each loss (:mod:`jaxdiv._core`) is a
function of a few *row statistics* — the ``(shift, norm)`` pair of a
logsumexp and plain sums over the classes — and of the elementwise inputs.
The drivers compute those statistics over a whole row (:mod:`jaxdiv._row_losses`),
over blocks of a row formed from ``hidden @ weight`` (:mod:`jaxdiv._fused`),
or over the devices that hold parts of a row (both, with ``axis_name``): the
combination rules are here, once.

XLA:CPU's fused row reductions slow down ~10x on rows longer than 32768
entries once a program has more than one of them (measured at [512, 131072]
float32: Σ exp(x - max) alone 26 ms, together with Σ p·x 450 ms; in chunks of
32768, 64 ms). Every whole-row reduction therefore goes through
:func:`row_reduce`, which reduces a long last axis as ``[rows · k, c]`` chunks
of at most 32768 (``c`` dividing the row), then over ``k``; the barrier keeps
XLA from moving the reshape behind the elementwise terms. Other backends
reduce long rows well.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

_NEG_INF = -jnp.inf
_FAST_ROW = 32768


def compute_dtype(*dtypes: Any) -> jnp.dtype:
  """The dtype losses accumulate in: float32, or float64 if an input is float64."""
  wide = any(jnp.dtype(d) == jnp.float64 for d in dtypes)
  return jnp.dtype(jnp.float64 if wide else jnp.float32)


def widen(x: jax.Array, dtype) -> jax.Array:
  """``x.astype(dtype)``; bfloat16 to float32 as the exact bit shift it is.

  A separate HLO from the ``convert`` of a forward reduction, so XLA does not
  write one shared full-size float32 copy of ``x`` for two passes.
  """
  if x.dtype == jnp.bfloat16 and dtype == jnp.float32:
    bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32) << 16
    return jax.lax.bitcast_convert_type(bits, jnp.float32)
  return x.astype(dtype)


def finite_or_zero(x: jax.Array) -> jax.Array:
  """``x`` where finite, else 0 (a row max of ``-inf`` or NaN shifts by 0)."""
  return jnp.where(jnp.isfinite(x), x, jnp.zeros_like(x))


def log_norm(sum_exp: jax.Array) -> jax.Array:
  """``log Σ exp(x - shift)``: 0 for an empty row (sum 0), NaN stays NaN."""
  return jnp.log(jnp.where(sum_exp == 0, jnp.ones_like(sum_exp), sum_exp))


def lse_parts(shift: jax.Array, norm: jax.Array, log_scale: jax.Array | None = None):
  """``(hi, lo)`` with ``hi + lo = shift + norm (- log_scale)`` exactly (two-sum).

  ``x - hi - lo`` is then the log-probability to float accuracy even at
  ``|x| ~ 1e30`` (where ``hi`` alone rounds away ``norm``), and, being a
  different expression from the ``x - shift`` of the forward reduction, XLA
  does not share one full-size ``x - shift`` between the two.
  """
  lo = norm if log_scale is None else norm - log_scale
  hi = shift + lo
  return hi, lo - (hi - shift)


def log_probs(x: jax.Array, shift: jax.Array, norm: jax.Array, dtype) -> jax.Array:
  """``log softmax(x)`` in ``dtype`` from the row statistics."""
  hi, lo = lse_parts(shift, norm)
  return (widen(x, dtype) - hi) - lo


def probs(x: jax.Array, shift: jax.Array, norm: jax.Array, log_scale: jax.Array | None = None) -> jax.Array:
  """``softmax(x) * exp(log_scale)`` from the row statistics: exactly 0 at ``-inf`` entries."""
  hi, lo = lse_parts(shift, norm, log_scale)
  return jnp.exp((widen(x, hi.dtype) - hi) - lo)


def masked_tangent(x: jax.Array, dx: jax.Array, dtype) -> jax.Array:
  """``dx`` in ``dtype``, 0 where ``x = -inf`` (tested on the widened ``x``, see :func:`widen`)."""
  return jnp.where(widen(x, dtype) == _NEG_INF, 0, dx.astype(dtype))


# --------------------------------------------------------------------------- #
# Reductions over a row, and their combination across devices
# --------------------------------------------------------------------------- #


def chunk(shape: tuple[int, ...], axis: int) -> int | None:
  """Chunk length for a reduction over ``axis`` of ``shape``, or None to reduce it whole."""
  n = shape[axis]
  if axis != len(shape) - 1 or n <= _FAST_ROW or jax.default_backend() != "cpu":
    return None
  return next((c for c in range(_FAST_ROW, 1023, -1) if n % c == 0), None)


def all_reduce(x: jax.Array, kind: str, axis_name: Any) -> jax.Array:
  """``x`` combined over the devices of ``axis_name`` (``psum`` or ``pmax``); ``x`` if None."""
  if axis_name is None:
    return x
  return jax.lax.psum(x, axis_name) if kind == "sum" else jax.lax.pmax(x, axis_name)


def row_reduce(fn, full: tuple, rows: tuple, axis: int, kinds: tuple, axis_name: Any = None):
  """Reduces each output of ``fn(*full, *rows)`` along ``axis``, keeping it as size 1.

  ``full`` are arrays of the row shape, ``rows`` row-level arrays (size 1 along
  ``axis``); ``fn`` is elementwise and returns a tuple with one array per entry
  of ``kinds`` (``"sum"`` or ``"max"``). One fused pass over ``full`` for all
  outputs; long last axes are reduced in chunks (see the module docstring);
  with ``axis_name`` each result is then combined over that mesh axis.
  """
  reducers = tuple(jnp.sum if k == "sum" else jnp.max for k in kinds)
  shape = full[0].shape
  c = chunk(shape, axis)
  if c is None:
    outs = tuple(r(t, axis=axis, keepdims=True) for r, t in zip(reducers, fn(*full, *rows), strict=True))
  else:
    k = shape[-1] // c
    folded = jax.lax.optimization_barrier(tuple(a.reshape(-1, c) for a in full))
    spread = [jnp.broadcast_to(r[..., None], (*shape[:-1], k, 1)).reshape(-1, 1) for r in rows]
    terms = fn(*folded, *spread)
    outs = tuple(r(r(t, axis=-1).reshape(*shape[:-1], k), axis=-1, keepdims=True)
                 for r, t in zip(reducers, terms, strict=True))
  # A max carries no derivative here (a row shift, a log target's mass indicator), and pmax has no
  # differentiation rule: stopped before the collective.
  outs = tuple(jax.lax.stop_gradient(o) if kind == "max" else o for o, kind in zip(outs, kinds, strict=True))
  return tuple(all_reduce(o, kind, axis_name) for o, kind in zip(outs, kinds, strict=True))


def row_max(x: jax.Array, axis: int, cdt, axis_name: Any = None) -> jax.Array:
  """The raw row max of ``x`` in ``cdt`` (and over ``axis_name``), ``-inf`` for an empty row; no gradient."""
  (m,) = row_reduce(lambda x: (x,), (jax.lax.stop_gradient(x),), (), axis, ("max",))
  # Stopped before the pmax, so that no derivative (pmax has none) is ever asked of it, at any order.
  return all_reduce(jax.lax.stop_gradient(m.astype(cdt)), "max", axis_name)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def row_lse(x: jax.Array, axis: int, cdt, axis_name: Any = None) -> tuple[jax.Array, jax.Array]:
  """``(max, norm)`` of the logsumexp of ``x`` along ``axis`` (and over ``axis_name``), in ``cdt``.

  ``max`` is the raw row max (``-inf`` for an all ``-inf`` row, NaN with a NaN
  entry; zero derivative): the shift is ``finite_or_zero(max)``, and
  ``norm = log Σ exp(x - shift)`` (0 for an all ``-inf`` row, whose
  log-probabilities are then ``-inf``; NaN for a row holding NaN); both keep
  ``axis`` as size 1. Two passes over ``x``, no full-size temporary.
  Derivative: ``∂norm/∂x = softmax(x)``, 0 at ``-inf`` entries, so the row
  losses' own derivative rules can themselves be differentiated (hessians).
  """
  m = row_max(x, axis, cdt, axis_name)
  # exp(x + (-shift)), never the x - shift of the losses' elementwise passes: XLA would merge
  # the two (or their broadcast of the shift) into one full-size array, which XLA:CPU writes out
  # because its reduction fusion cannot share it (KL forward+backward at [8192, 1024] float32:
  # 12 passes over [N, V] with x - shift, 10 with this). Likewise a plain convert here and
  # widen() there: no shared full-size float32 copy of bfloat16 input.
  neg_shift = jnp.where(jnp.isfinite(m), -m, jnp.zeros_like(m))
  exp_terms = lambda x, s: (jnp.exp(x.astype(cdt) + s),)
  (sum_exp,) = row_reduce(exp_terms, (x,), (neg_shift,), axis, ("sum",), axis_name)
  return m, log_norm(sum_exp)


@row_lse.defjvp
def _row_lse_jvp(axis, cdt, axis_name, primals, tangents):
  (x,), (dx,) = primals, tangents
  m, norm = row_lse(x, axis, cdt, axis_name)
  q = probs(x, finite_or_zero(m), norm)
  dnorm = all_reduce(jnp.sum(q * masked_tangent(x, dx, cdt), axis=axis, keepdims=True), "sum", axis_name)
  return (m, norm), (jnp.zeros_like(m), dnorm)


# --------------------------------------------------------------------------- #
# The online logsumexp over blocks of a row
# --------------------------------------------------------------------------- #


def lse_block(z: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(max, Σ exp(z - shift))`` of a ``[rows, block]`` block, ``[rows, 1]`` each; the max has no gradient."""
  m = jnp.max(jax.lax.stop_gradient(z), axis=1, keepdims=True)
  return m, jnp.sum(jnp.exp(z - finite_or_zero(m)), axis=1, keepdims=True)


def lse_rescale(m: jax.Array, s: jax.Array, new_max: jax.Array) -> jax.Array:
  """``s`` (a sum of ``exp(z - finite_or_zero(m))``) re-expressed against ``finite_or_zero(new_max)``."""
  return s * jnp.exp(m - finite_or_zero(new_max))


def lse_merge(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """The ``(max, sum-exp)`` pair of the union of two disjoint blocks of the same rows."""
  m = jnp.maximum(a[0], b[0])
  return m, lse_rescale(*a, m) + lse_rescale(*b, m)


def lse_all_reduce(pair: tuple[jax.Array, jax.Array], axis_name: Any) -> tuple[jax.Array, jax.Array]:
  """The ``(max, sum-exp)`` pair combined over the devices of ``axis_name`` (``pmax``, then ``psum``)."""
  if axis_name is None:
    return pair
  m = jax.lax.pmax(pair[0], axis_name)
  return m, jax.lax.psum(lse_rescale(*pair, m), axis_name)


def local_offset(local_size: int, axis_name: Any):
  """Global index of this device's first class (0 without a vocabulary mesh axis)."""
  return 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_size
