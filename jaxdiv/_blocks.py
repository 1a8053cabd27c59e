"""Block schedules of the fused losses: blocks of ``hidden @ weight`` feeding the one loss definition.

The loss itself is :mod:`jaxdiv._core`'s (:class:`Spec` carries a
:class:`~jaxdiv._core.CEConfig` or a :class:`~jaxdiv._core.DivSpec`); this module
only decides where the blocks of logits come from and how the gradients with
respect to ``hidden``, ``weight`` and ``bias`` are formed, block by block:

* the token schedule (:func:`_token_core`, the fast mode): token blocks
  ``[B_t, V]``, each block's loss and gradient formed once in the forward pass,
  the weight gradient accumulated in a ``[D, V]`` buffer (under ``shard_map``,
  a device's own tokens, the buffer summed over the token axis once, after the
  loop; a vocabulary axis combines each block's row statistics);
* the vocabulary schedule (:func:`vocab_core`, the low-memory mode and the
  vocab-parallel fused loss): an online logsumexp over vocabulary blocks
  ``[N, B_v]``, statistics combined over a mesh axis if any, the logits
  recomputed in the backward pass.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxdiv import _core, _row_losses, _rows
from jaxdiv._core import CEConfig, DivSpec


class Spec(NamedTuple):
  """Static description of one fused loss (hashable: it is a ``nondiff_argnum``).

  ``loss`` is the loss itself, defined once in :mod:`jaxdiv._core`: a
  :class:`~jaxdiv._core.CEConfig` (cross-entropy against labels) or a
  :class:`~jaxdiv._core.DivSpec` (a divergence from a teacher). This module
  only decides where the blocks of logits come from.
  """

  loss: CEConfig | DivSpec
  teacher: str  # "labels", "logits" or "hidden"
  block: int
  vocab_size: int  # global V (differs from the local weight's V under vocab sharding)
  temperature: float = 1.0
  axis_name: Any = None  # vocab mesh axis (inside shard_map) or None
  token_axis: Any = None  # token mesh axis (inside shard_map) or None

  @property
  def is_ce(self) -> bool:
    return isinstance(self.loss, CEConfig)

  @property
  def ce(self) -> CEConfig:
    """The cross-entropy options (a CE spec only)."""
    assert isinstance(self.loss, CEConfig)
    return self.loss

  @property
  def div(self) -> DivSpec:
    """The divergence (a distillation spec only)."""
    assert isinstance(self.loss, DivSpec)
    return self.loss


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #


def _dot(a: jax.Array, b: jax.Array, contract: tuple[int, int]) -> jax.Array:
  """``a`` contracted with ``b`` on the given dims, accumulated in ``a``'s dtype."""
  dims = (((contract[0],), (contract[1],)), ((), ()))
  return jax.lax.dot_general(a, b, dims, preferred_element_type=a.dtype)


def _for_blocks(n: int, block: int, body, carry):
  """``carry = body(carry, start, size)`` over ``[0, n)`` in blocks; the remainder block last."""
  full, rest = divmod(n, block)
  if full == 1:
    carry = body(carry, 0, block)
  elif full > 1:
    carry = jax.lax.fori_loop(0, full, lambda i, c: body(c, i * block, block), carry)
  if rest:
    carry = body(carry, full * block, rest)
  return carry


def _cols(x: jax.Array, start, size: int) -> jax.Array:
  return jax.lax.dynamic_slice_in_dim(x, start, size, axis=x.ndim - 1)


def _row_slice(x: jax.Array, start, size: int) -> jax.Array:
  return jax.lax.dynamic_slice_in_dim(x, start, size, axis=0)


def _axes(*names) -> tuple:
  """Mesh axis names, flattened (a token axis may be a tuple of axes; None is no axis)."""
  return tuple(a for n in names if n is not None for a in (n if isinstance(n, tuple) else (n,)))


def _varying(spec: Spec, carry, axes: tuple | None = None):
  """Initial loop carries marked as varying over the mesh axes the loop body's values vary over.

  ``axes`` defaults to the token and vocabulary axes of ``spec``.
  """
  axes = _axes(spec.token_axis, spec.axis_name) if axes is None else axes
  return carry if not axes else jax.tree.map(lambda x: jax.lax.pcast(x, axes, to="varying"), carry)


# --------------------------------------------------------------------------- #
# Per-row losses on a full block of logits (token schedule)
# --------------------------------------------------------------------------- #


def _ce_block(
    spec: Spec, z: jax.Array, labels: jax.Array, start, v_local: int
) -> tuple[jax.Array, jax.Array]:
  """Capped logits of a block and the label's index in it (``[rows, 1]``; outside ``[0, size)`` if elsewhere).

  ``start`` is the block's first column in this device's ``v_local`` classes.
  """
  cfg = spec.ce
  zc = _core.capped(z, cfg.soft_cap, z.dtype)
  local = labels[:, None] - (_rows.local_offset(v_local, spec.axis_name) + start)
  return zc, local


def _ce_dlogits(spec: Spec, zc: jax.Array, local: jax.Array, st: _core.CEStats) -> jax.Array:
  """``∂loss/∂raw logits`` of a block, from the capped logits and the finished statistics."""
  cfg = spec.ce
  onehot = jax.lax.broadcasted_iota(jnp.int32, zc.shape, 1) == local
  return _core.ce_coefficient(cfg, zc, onehot, st) * _core.cap_slope(zc, cfg.soft_cap)


def _in_range(spec: Spec, labels: jax.Array) -> jax.Array:
  return (labels >= 0) & (labels < spec.vocab_size)


def _teacher_block(spec: Spec, aux: tuple, start, size: int, cols: bool) -> jax.Array:
  """The target for a block: labels / teacher logits (rows or columns), or teacher logits from hidden."""
  pick = _cols if cols else _row_slice
  if spec.teacher in ("labels", "logits"):
    (t,) = aux
    return pick(t, start, size) if (spec.teacher == "logits" or not cols) else t
  th, tw, tb = aux
  if cols:
    return _dot(th, _cols(tw, start, size).astype(th.dtype), (1, 0)) + _cols(tb, start, size)[None, :]
  return _dot(_row_slice(th, start, size), tw, (1, 0)) + tb[None, :]


# --------------------------------------------------------------------------- #
# The token schedule ("fast"): gradients formed in the forward pass
# --------------------------------------------------------------------------- #


def _token_pass(spec: Spec, h, w, b, aux, coef):
  n, d = h.shape
  v_size = w.shape[1]
  dt = h.dtype

  def body(carry, start, size):
    total, loss, lse, dh, dw, db = carry
    hb = _row_slice(h, start, size)
    z = _dot(hb, w, (1, 0)) + b[None, :]
    cb = _row_slice(coef, start, size)
    target = _teacher_block(spec, aux, start, size, cols=False)
    if spec.is_ce:  # the closed-form gradient: one pass over the block, no scatter
      zc, local = _ce_block(spec, z, target, 0, v_size)
      st = _core.ce_finish(_core.ce_all_reduce(_core.ce_block(spec.ce, zc, local), spec.axis_name))
      lb = jnp.where(_in_range(spec, target), _core.ce_value(spec.ce, st)[:, 0], jnp.nan)
      lse_b = _core.ce_lse(st)[:, 0]
      dz = jnp.where(_in_range(spec, target), cb, 0)[:, None] * _ce_dlogits(spec, zc, local, st)
    else:
      inv_t = 1.0 / spec.temperature
      row = lambda z: _row_losses.divergence_rows(z * inv_t, target * inv_t, 1, spec.div, spec.axis_name)
      lb, vjp = jax.vjp(row, z)
      (dz,) = vjp(cb)
      lse_b = jnp.zeros_like(lb)
    total = total + jnp.sum(jnp.where(cb != 0, cb * lb, 0))
    loss = jax.lax.dynamic_update_slice_in_dim(loss, lb, start, 0)
    lse = jax.lax.dynamic_update_slice_in_dim(lse, lse_b, start, 0)
    dh = jax.lax.dynamic_update_slice_in_dim(dh, _dot(dz, w, (1, 1)), start, 0)
    return total, loss, lse, dh, dw + _dot(hb, dz, (0, 0)), db + jnp.sum(dz, axis=0)

  zeros = functools.partial(jnp.zeros, dtype=dt)
  # Under shard_map the per-token values vary over the token axis only (the vocabulary statistics are
  # combined within each block); the gradient buffers vary over both until their one psum, after the loop.
  carry = (*_varying(spec, (zeros(()), zeros((n,)), zeros((n,))), _axes(spec.token_axis)),
           *_varying(spec, (zeros((n, d)), zeros((d, v_size)), zeros((v_size,)))))
  total, loss, lse, dh, dw, db = _for_blocks(n, spec.block, body, carry)
  over_tokens = lambda x: _rows.all_reduce(x, "sum", spec.token_axis)
  total, dw, db = over_tokens(total), over_tokens(dw), over_tokens(db)
  dh = _rows.all_reduce(dh, "sum", spec.axis_name)
  return (total, loss, lse), (dh, dw, db)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _token_core(spec: Spec, h, w, b, aux, coef):
  """``(Σ coef·loss, loss, lse)``; only the first output is differentiable."""
  return _token_pass(spec, h, w, b, aux, coef)[0]


def _token_fwd(spec, h, w, b, aux, coef):
  out, grads = _token_pass(spec, h, w, b, aux, coef)
  return out, (grads, aux)


def _token_bwd(spec, res, ct):
  (dh, dw, db), aux = res
  g = ct[0]
  return g * dh, g * dw, g * db, jax.tree.map(lambda _: None, aux), None


_token_core.defvjp(_token_fwd, _token_bwd)


# --------------------------------------------------------------------------- #
# The vocabulary schedule ("low_memory"): logsumexp first, logits recomputed
# --------------------------------------------------------------------------- #


def _student_block(spec, h, w, b, start, size):
  """Raw student logits for vocabulary columns ``[start, start + size)`` of the local weight."""
  return _dot(h, _cols(w, start, size).astype(h.dtype), (1, 0)) + _cols(b, start, size)[None, :]


def _vocab_pass(spec: Spec, h, w, b, aux):
  """Forward passes of the vocabulary schedule: per-token loss, lse and the statistics the backward needs."""
  n = h.shape[0]
  v_local = w.shape[1]
  dt = h.dtype
  zeros = jnp.zeros((n, 1), dt)
  neg_inf = jnp.full((n, 1), -jnp.inf, dt)

  if spec.is_ce:
    (labels,) = aux

    def body(carry, start, size):
      zc, local = _ce_block(spec, _student_block(spec, h, w, b, start, size), labels, start, v_local)
      return _core.ce_merge(carry, _core.ce_block(spec.ce, zc, local))

    init = _varying(spec, _core.CEPartial(neg_inf, zeros, zeros, zeros, zeros))
    st = _core.ce_finish(_core.ce_all_reduce(_for_blocks(v_local, spec.block, body, init), spec.axis_name))
    loss = jnp.where(_in_range(spec, labels), _core.ce_value(spec.ce, st)[:, 0], jnp.nan)
    return loss, _core.ce_lse(st)[:, 0], st

  inv_t = 1.0 / spec.temperature
  student = lambda start, size: _student_block(spec, h, w, b, start, size) * inv_t
  teacher = lambda start, size: _teacher_block(spec, aux, start, size, cols=True) * inv_t

  def lse_body(carry, start, size):
    return (_rows.lse_merge(carry[0], _rows.lse_block(student(start, size))),
            _rows.lse_merge(carry[1], _rows.lse_block(teacher(start, size))))

  init = _varying(spec, ((neg_inf, zeros), (neg_inf, zeros)))
  pairs = _for_blocks(v_local, spec.block, lse_body, init)
  (m_s, s_s), (m_t, s_t) = (_rows.lse_all_reduce(p, spec.axis_name) for p in pairs)
  stats = (_rows.finite_or_zero(m_s), _rows.log_norm(s_s), _rows.finite_or_zero(m_t), _rows.log_norm(s_t))
  kinds = _core.div_kinds(spec.div)
  reducers = tuple(jnp.sum if k == "sum" else jnp.max for k in kinds)

  def value_body(carry, start, size):
    terms = _core.div_elementwise(spec.div, student(start, size), teacher(start, size), stats, dt)
    block = tuple(r(t, axis=1, keepdims=True) for r, t in zip(reducers, terms, strict=True))
    return tuple(c + t if k == "sum" else jnp.maximum(c, t)
                 for c, t, k in zip(carry, block, kinds, strict=True))

  init = _varying(spec, tuple(zeros if k == "sum" else neg_inf for k in kinds))
  sums = _for_blocks(v_local, spec.block, value_body, init)
  sums = tuple(_rows.all_reduce(t, k, spec.axis_name) for t, k in zip(sums, kinds, strict=True))
  value, residual = _core.div_finish(spec.div, sums)
  return value[:, 0], (m_s + jnp.log(s_s))[:, 0], (stats, residual)


def _vocab_dlogits(spec: Spec, z, start, size, aux, stats, v_local: int):
  """d loss / d raw logits for one vocabulary block, per unit cotangent."""
  if spec.is_ce:
    zc, local = _ce_block(spec, z, aux[0], start, v_local)
    return _ce_dlogits(spec, zc, local, stats)
  inv_t = 1.0 / spec.temperature
  (row_stats, residual) = stats
  teacher = _teacher_block(spec, aux, start, size, cols=True) * inv_t
  c_student, _ = _core.div_coefficients(spec.div, z * inv_t, teacher, row_stats, residual, z.dtype)
  return c_student * inv_t


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def vocab_core(spec: Spec, h, w, b, aux):
  """``(loss, lse)`` per token; only ``loss`` is differentiable."""
  loss, lse, _ = _vocab_pass(spec, h, w, b, aux)
  return loss, lse


def _vocab_fwd(spec, h, w, b, aux):
  loss, lse, stats = _vocab_pass(spec, h, w, b, aux)
  return (loss, lse), (h, w, b, aux, stats)


def _vocab_bwd(spec, res, ct):
  h, w, b, aux, stats = res
  g = ct[0]
  if spec.is_ce:  # an out-of-range label has a NaN loss and zero gradient
    g = jnp.where(_in_range(spec, aux[0]), g, 0)
  n, d = h.shape
  v_local = w.shape[1]

  def body(carry, start, size):
    dh, dw, db = carry
    z = _student_block(spec, h, w, b, start, size)
    dz = g[:, None] * _vocab_dlogits(spec, z, start, size, aux, stats, v_local)
    dh = dh + _dot(dz, _cols(w, start, size).astype(h.dtype), (1, 1))
    dw = jax.lax.dynamic_update_slice_in_dim(dw, _dot(h, dz, (0, 0)).astype(w.dtype), start, 1)
    db = jax.lax.dynamic_update_slice_in_dim(db, jnp.sum(dz, axis=0), start, 0)
    return dh, dw, db

  carry = (jnp.zeros((n, d), h.dtype), jnp.zeros((d, v_local), w.dtype), jnp.zeros((v_local,), b.dtype))
  dh, dw, db = _for_blocks(v_local, spec.block, body, _varying(spec, carry))
  dh = _rows.all_reduce(dh, "sum", spec.axis_name)
  dw, db = _rows.all_reduce(dw, "sum", spec.token_axis), _rows.all_reduce(db, "sum", spec.token_axis)
  return dh, dw, db, jax.tree.map(lambda _: None, aux)


vocab_core.defvjp(_vocab_fwd, _vocab_bwd)


# --------------------------------------------------------------------------- #
# Argument handling shared by the public functions
