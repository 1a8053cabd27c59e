"""Fused linear losses: cross-entropy and distillation from hidden states, never building the logits.

A language model's loss multiplies hidden states ``h [N, D]`` by the
unembedding ``W [D, V]`` and takes a softmax over ``V`` classes. With
``V ~ 10^5`` the ``[N, V]`` logits (and their gradient) dominate the memory of
a training step. The functions here compute the same losses block by block,
with an online logsumexp, and a custom VJP that forms the gradients w.r.t.
``h``, ``W`` and the bias block by block too. Two schedules:

* ``"fast"`` — token blocks ``[B_t, V]``: each block's logits, loss and
  gradient are formed once, in the forward pass; the weight gradient is
  accumulated in a ``[D, V]`` float32 buffer; the backward pass only scales by
  the incoming cotangent. Same matrix products as the materialised loss (no
  recomputation). Needs a scalar output (``reduction="sum"`` or ``"mean"``).
* ``"low_memory"`` — vocabulary blocks ``[N, B_v]``: a first pass over the
  vocabulary forms the logsumexp per token; the backward pass recomputes each
  block of logits and writes its slice of the weight gradient directly. One
  extra matrix product (about 4/3 of the work), no ``[D, V]`` accumulator.

``mode="auto"`` picks ``"fast"`` when the output is a scalar and the ``[D, V]``
accumulator is at most half the size of the ``[N, V]`` logits it replaces
(``N >= 2 D``), else ``"low_memory"``.

The same vocabulary-block core, with collectives, is the vocab-parallel fused
loss of :mod:`jaxdiv._sharded`.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Literal, NamedTuple, cast, overload

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import _core, _options, _reduction, _row_losses, _rows
from jaxdiv import _validation as v
from jaxdiv._core import CEConfig, DivSpec
from jaxdiv._kernels import mul_safe

Mode = Literal["auto", "fast", "low_memory"]
Reduction = _reduction.Reduction
Divergence = _options.Divergence

# Default blocks of logits: 44 MiB of float32 for the fast mode (fewer read-modify-writes of the [D, V]
# accumulator; measured by `python -m jaxdiv bench-fused`), 32 MiB for the low-memory mode.
_FAST_BLOCK_ELEMENTS = 11 << 20
_LOW_MEMORY_BLOCK_ELEMENTS = 1 << 23


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


def _varying(spec: Spec, carry):
  """Initial loop carries marked as varying over the mesh axes the loop body's values vary over."""
  axes = tuple(a for a in (spec.token_axis, spec.axis_name) if a is not None)
  return carry if not axes else jax.tree.map(lambda x: jax.lax.pcast(x, axes, to="varying"), carry)


def _psum(x, axis):
  return x if axis is None else jax.lax.psum(x, axis)


# --------------------------------------------------------------------------- #
# Per-row losses on a full block of logits (token schedule)
# --------------------------------------------------------------------------- #


def _ce_block(spec: Spec, z: jax.Array, labels: jax.Array, start, v_local: int) -> tuple[jax.Array, jax.Array]:
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
      st = _core.ce_finish(_core.ce_block(spec.ce, zc, local))
      lb = jnp.where(_in_range(spec, target), _core.ce_value(spec.ce, st)[:, 0], jnp.nan)
      lse_b = _core.ce_lse(st)[:, 0]
      dz = jnp.where(_in_range(spec, target), cb, 0)[:, None] * _ce_dlogits(spec, zc, local, st)
    else:
      inv_t = 1.0 / spec.temperature
      row = lambda z: _row_losses.divergence_rows(z * inv_t, target * inv_t, 1, spec.div)
      lb, vjp = jax.vjp(row, z)
      (dz,) = vjp(cb)
      lse_b = jnp.zeros_like(lb)
    total = total + jnp.sum(jnp.where(cb != 0, cb * lb, 0))
    loss = jax.lax.dynamic_update_slice_in_dim(loss, lb, start, 0)
    lse = jax.lax.dynamic_update_slice_in_dim(lse, lse_b, start, 0)
    dh = jax.lax.dynamic_update_slice_in_dim(dh, _dot(dz, w, (1, 1)), start, 0)
    return total, loss, lse, dh, dw + _dot(hb, dz, (0, 0)), db + jnp.sum(dz, axis=0)

  zeros = functools.partial(jnp.zeros, dtype=dt)
  carry = (zeros(()), zeros((n,)), zeros((n,)), zeros((n, d)), zeros((d, v_size)), zeros((v_size,)))
  total, loss, lse, dh, dw, db = _for_blocks(n, spec.block, body, carry)
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
    return tuple(c + t if k == "sum" else jnp.maximum(c, t) for c, t, k in zip(carry, block, kinds, strict=True))

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
  dh = _psum(dh, spec.axis_name)
  dw, db = _psum(dw, spec.token_axis), _psum(db, spec.token_axis)
  return dh, dw, db, jax.tree.map(lambda _: None, aux)


vocab_core.defvjp(_vocab_fwd, _vocab_bwd)


# --------------------------------------------------------------------------- #
# Argument handling shared by the public functions
# --------------------------------------------------------------------------- #


def check_linear(hidden: ArrayLike, weight: ArrayLike, bias: ArrayLike | None, prefix: str = ""):
  """Validated ``(hidden, weight, bias)``: hidden ``[..., D]``, weight ``[D, V]``, bias ``[V]`` or None."""
  h = v.as_floating(f"{prefix}hidden", hidden)
  w = v.as_floating(f"{prefix}weight", weight)
  if h.ndim < 1:
    raise ValueError(f"{prefix}hidden must have shape [..., D]; got a scalar.")
  if w.ndim != 2 or w.shape[0] != h.shape[-1]:
    raise ValueError(
        f"{prefix}weight must have shape [D, V] with D = {prefix}hidden.shape[-1] = {h.shape[-1]}; "
        f"got {list(w.shape)}. (Pass the unembedding as [D, V]; transpose an embedding table [V, D].)"
    )
  b = None
  if bias is not None:
    b = v.as_floating(f"{prefix}bias", bias)
    if b.shape != (w.shape[1],):
      raise ValueError(f"{prefix}bias must have shape [V] = [{w.shape[1]}]; got {list(b.shape)}.")
  return h, w, b


def linear_dtypes(h, w, b):
  """Compute dtype (f32, or f64 if any input is f64), hidden and bias cast to it, bias zeros if None."""
  dt = _rows.compute_dtype(h.dtype, w.dtype, *(() if b is None else (b.dtype,)))
  b = jnp.zeros((w.shape[1],), dt) if b is None else b.astype(dt)
  return dt, h.astype(dt), b


def block_size(name: str, requested: int | None, other: int, total: int) -> int:
  """A block along an axis of length ``total``: ``requested``, or a default block of logits ``[*, other]``."""
  if requested is None:
    elements = _FAST_BLOCK_ELEMENTS if name == "token_block" else _LOW_MEMORY_BLOCK_ELEMENTS
    elements = min(elements, other * total // 16)  # and at most 1/16 of the logits
    return max(1, min(total, max(8, elements // max(other, 1))))
  checked = _options.block(name, requested)
  assert checked is not None
  return min(checked, max(total, 1))


def choose_mode(mode: str, reduction: str, n: int, d: int) -> Mode:
  _options.choice("mode", mode, ("auto", "fast", "low_memory"))
  if mode == "fast" and reduction == "none":
    raise ValueError(
        "mode='fast' forms the gradients in the forward pass and needs a scalar loss: use reduction='sum' or "
        "'mean', or mode='low_memory' (or 'auto') for per-token losses."
    )
  if mode == "auto":
    return "fast" if reduction != "none" and n >= 2 * d else "low_memory"
  return cast(Mode, mode)


def run(spec: Spec, mode: str, reduction: Reduction, normalizer, token_shape, h, w, b, aux, weights, token_mask):
  """The reduced loss, the per-token losses (masked, weighted; ``token_shape``) and the per-token logsumexp.

  The fast mode needs the coefficient of every token's loss in the reduced
  output before the backward pass; :func:`jaxdiv._reduction.reduce` is linear
  in the losses, so that coefficient is its gradient, taken once here.
  """

  def reduce(per_token):
    return _reduction.reduce(per_token.reshape(token_shape), reduction, weight=weights.reshape(token_shape),
                             normalizer=normalizer)

  if mode == "fast":
    coef = weights * jax.grad(reduce)(jnp.zeros_like(weights))
    total, loss, lse = cast(tuple[jax.Array, jax.Array, jax.Array],
                            _token_core(spec, h, w.astype(h.dtype), b, aux, jax.lax.stop_gradient(coef)))
    return total, jnp.where(token_mask, weights * loss, 0).reshape(token_shape), jax.lax.stop_gradient(lse)
  loss, lse = cast(tuple[jax.Array, jax.Array], vocab_core(spec, h, w, b, aux))
  per_token = jnp.where(token_mask, weights * jnp.where(token_mask, loss, 0), 0)
  return reduce(per_token), per_token.reshape(token_shape), jax.lax.stop_gradient(lse)


# --------------------------------------------------------------------------- #
# Public functions
# --------------------------------------------------------------------------- #


def prepare_labels(labels, token_shape, ignore_index, shift_labels, class_weights, vocab_size, dt):
  """Flat labels, mask of counted tokens, per-token weights (the label's class weight; 0 if not counted)."""
  y = v.as_integer("labels", labels)
  if y.shape != token_shape:
    raise ValueError(
        f"labels must have the shape of hidden without its last axis, {list(token_shape)}; "
        f"got {list(y.shape)}."
    )
  ignore_index = _options.ignore_index(ignore_index)
  y = v.wide_labels(y)  # no silent narrowing: range checks in a wide type, then int32 indices
  active = jnp.ones(y.shape, bool) if ignore_index is None else y != ignore_index
  if shift_labels:
    if y.ndim == 0 or y.shape[-1] == 0:
      raise ValueError("shift_labels=True needs a sequence axis: labels of shape [..., T] with T >= 1.")
    y = jnp.concatenate([y[..., 1:], y[..., :1]], axis=-1)
    active = jnp.concatenate([active[..., 1:], jnp.zeros_like(active[..., :1])], axis=-1)
  y, active = y.reshape(-1), active.reshape(-1)
  in_range = (y >= 0) & (y < vocab_size)
  # An out-of-range label that is counted becomes -1: a NaN loss with zero gradient, never another class.
  safe = jnp.where(active, jnp.where(in_range, y, -1), 0).astype(jnp.int32)
  if class_weights is None:
    weights = active.astype(dt)
  else:
    cw = v.as_floating("class_weights", class_weights)
    if cw.shape != (vocab_size,):
      raise ValueError(f"class_weights must have shape [V] = [{vocab_size}]; got {list(cw.shape)}.")
    picked = jnp.take(cw.astype(dt), jnp.clip(safe, 0, vocab_size - 1))
    weights = jnp.where(active, jnp.where(in_range, picked, 1), 0)
  return safe, active, jax.lax.stop_gradient(weights)


def class_keep(where: ArrayLike | None, vocab: int) -> jax.Array | None:
  """``where`` (a class mask, as everywhere in jaxdiv) checked and broadcast to ``[V]``, or None."""
  if where is None:
    return None
  m = jnp.asarray(where)
  if m.dtype != jnp.bool_:
    raise TypeError(f"where must be a boolean mask; got {m.dtype}{list(m.shape)}.")
  if m.ndim > 1 or (m.ndim == 1 and m.shape[0] not in (1, vocab)):
    raise ValueError(
        f"where masks classes and must be broadcastable to [V] = [{vocab}] in the fused losses; got "
        f"{list(m.shape)}. Mask tokens with token_mask (or weights)."
    )
  return jnp.broadcast_to(m, (vocab,))


def class_mask(where: ArrayLike | None, vocab: int, b: jax.Array) -> jax.Array:
  """The bias ``[V]`` with ``-inf`` on the classes ``where`` masks."""
  keep = class_keep(where, vocab)
  return b if keep is None else jnp.where(keep, b, jnp.asarray(-jnp.inf, b.dtype))


def token_weights(
    token_shape: tuple, weights: ArrayLike | None, token_mask: ArrayLike | None, dt
) -> tuple[jax.Array, jax.Array]:
  """Flat per-token ``(weights, mask)`` from ``weights`` (float, ``token_shape``) and ``token_mask`` (bool).

  A masked token is left out entirely (its loss is not computed into anything, NaN included); a
  weight of 0 keeps the token counted with zero weight.
  """
  out = jnp.ones(token_shape, dt)
  mask = jnp.ones(token_shape, bool)
  if weights is not None:
    w = v.as_floating("weights", weights, "Per-token weights are floats; mask tokens with token_mask.")
    if w.shape != token_shape:
      raise ValueError(f"weights must have the token shape {list(token_shape)}; got {list(w.shape)}.")
    out = jax.lax.stop_gradient(w.astype(dt))
  if token_mask is not None:
    mask = jnp.asarray(token_mask)
    if mask.dtype != jnp.bool_:
      raise TypeError(f"token_mask must be a boolean mask; got {mask.dtype}{list(mask.shape)}.")
    if mask.shape != token_shape:
      raise ValueError(f"token_mask must have the token shape {list(token_shape)}; got {list(mask.shape)}.")
  return jnp.where(mask, out, 0).reshape(-1), mask.reshape(-1)


def aux_outputs(cfg: CEConfig, lse, reduction, weights, active, token_shape, normalizer) -> dict[str, jax.Array]:
  """``{"logsumexp", "z_loss"}`` side outputs (no gradient): per token under ``"none"``, else reduced."""
  lse = jax.lax.stop_gradient(jnp.where(active, lse, 0))
  z_part = jnp.where(active, weights * _core.z_loss_part(cfg, lse), 0)
  if reduction == "none":
    return {"logsumexp": lse.reshape(token_shape), "z_loss": z_part.reshape(token_shape)}
  red = lambda a: _reduction.reduce(a.reshape(token_shape), reduction, weight=weights.reshape(token_shape),
                                     normalizer=normalizer)
  return {"logsumexp": red(weights * lse), "z_loss": red(z_part)}


@overload
def fused_linear_cross_entropy(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    ignore_index: int | None = None,
    class_weights: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    soft_cap: float | None = None,
    shift_labels: bool = False,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    token_mask: ArrayLike | None = None,
    reduction: Reduction = "mean",
    normalizer: ArrayLike | None = None,
    return_lse: Literal[False] = False,
    return_aux: Literal[False] = False,
    mode: Mode = "auto",
    token_block: int | None = None,
    vocab_block: int | None = None,
) -> jax.Array: ...


@overload
def fused_linear_cross_entropy(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    ignore_index: int | None = None,
    class_weights: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    soft_cap: float | None = None,
    shift_labels: bool = False,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    token_mask: ArrayLike | None = None,
    reduction: Reduction = "mean",
    normalizer: ArrayLike | None = None,
    return_lse: Literal[True],
    return_aux: Literal[False] = False,
    mode: Mode = "auto",
    token_block: int | None = None,
    vocab_block: int | None = None,
) -> tuple[jax.Array, jax.Array]: ...


@overload
def fused_linear_cross_entropy(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    ignore_index: int | None = None,
    class_weights: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    soft_cap: float | None = None,
    shift_labels: bool = False,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    token_mask: ArrayLike | None = None,
    reduction: Reduction = "mean",
    normalizer: ArrayLike | None = None,
    return_lse: Literal[False] = False,
    return_aux: Literal[True],
    mode: Mode = "auto",
    token_block: int | None = None,
    vocab_block: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]: ...


def fused_linear_cross_entropy(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    ignore_index: int | None = None,
    class_weights: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    soft_cap: float | None = None,
    shift_labels: bool = False,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    token_mask: ArrayLike | None = None,
    reduction: Reduction = "mean",
    normalizer: ArrayLike | None = None,
    return_lse: bool = False,
    return_aux: bool = False,
    mode: Mode = "auto",
    token_block: int | None = None,
    vocab_block: int | None = None,
) -> Any:
  r"""Cross-entropy of ``softmax(hidden @ weight + bias)`` against ``labels``, without the ``[N, V]`` logits.

  With ``z = c(h W + b)`` (``c`` the optional soft-cap ``s·tanh(x/s)``),
  ``ε`` the label smoothing, ``λ`` the z-loss coefficient and ``K`` the number
  of classes on the support (not masked by ``where`` or a ``-inf`` bias), the
  loss of a token is the one definition of :func:`jaxdiv.cross_entropy`

  .. math:: \ell = (1 - ε)\,(\mathrm{lse}(z) - z_y) + \frac{ε}{K} \sum_{c \in \mathrm{supp}}
     (\mathrm{lse}(z) - z_c) + λ\,\mathrm{lse}(z)^2

  times the class weight ``w[y]`` and the token weight if given. It equals
  ``jaxdiv.cross_entropy(hidden @ weight + bias, labels)`` (plus the options)
  but is computed block by block, forward and backward.

  Args:
    hidden: hidden states ``[..., D]`` (e.g. ``[N, D]`` or ``[B, T, D]``).
    weight: the unembedding ``[D, V]``.
    labels: integer classes, ``hidden.shape[:-1]``.
    bias: optional ``[V]`` output bias.
    ignore_index: a label value whose tokens give 0 loss and zero gradient and
      are left out of the mean (e.g. ``-100``).
    class_weights: optional ``[V]`` weight per class (torch's ``weight``); the
      mean is then ``Σ w[y] ℓ / Σ w[y]``. Not differentiated.
    label_smoothing: ``ε`` in ``[0, 1]``.
    z_loss: ``λ >= 0``, the PaLM auxiliary loss on ``lse(z)^2``.
    soft_cap: ``s > 0`` to soft-cap the logits as ``s·tanh(z/s)`` (Gemma 2), or None.
    shift_labels: next-token prediction: position ``t`` of the last axis
      predicts ``labels[..., t + 1]``; the last position is ignored. Only the
      labels are shifted, the hidden states are not copied.
    where: optional boolean class mask broadcastable to ``[V]`` (e.g. a padded
      vocabulary): masked classes leave the softmax, as in
      :func:`jaxdiv.cross_entropy` (whose ``where`` masks classes too).
    weights: optional float per-token weights, ``labels.shape`` (levanter's
      ``weight``; gradient accumulation): token ``n`` contributes
      ``weights[n]·ℓ_n`` and ``"mean"`` divides by ``Σ weights`` (times the
      class weights). Not differentiated.
    token_mask: optional boolean per-token mask, ``labels.shape``: masked
      tokens are left out (0 loss, not counted), as ``ignore_index``.
    reduction: ``"mean"`` (the default here: over counted tokens,
      class-weighted; 0 if none), ``"sum"``, ``"batchmean"`` or ``"none"``
      (per-token losses of ``labels.shape``, 0 where ignored), as
      :func:`jaxdiv.cross_entropy`.
    normalizer: optional scalar that ``"mean"``/``"batchmean"`` divide by
      instead (micro-batching).
    return_lse: also return the per-token ``lse(z)`` (``labels.shape``,
      float32; a side output with no gradient).
    return_aux: also return ``{"logsumexp", "z_loss"}`` side outputs (no
      gradient): per token under ``"none"``, otherwise reduced like the loss;
      ``aux["z_loss"]`` is the z-loss part of the loss.
    mode: ``"fast"`` (token blocks, gradients formed in the forward pass, a
      ``[D, V]`` float32 accumulator; needs ``reduction != "none"``),
      ``"low_memory"`` (vocabulary blocks, logits recomputed in the backward
      pass) or ``"auto"`` (``"fast"`` if the loss is a scalar and ``N >= 2D``).
    token_block: tokens per block in the fast mode (default ``11·2^20 / V``:
      44 MiB of float32 logits per block, at most ``N / 16``).
    vocab_block: classes per block in the low-memory mode (default
      ``2^23 / N``: 32 MiB of float32 logits per block, at most ``V / 16``).

  Returns:
    The reduced loss (scalar) or the per-token losses (``labels.shape``),
    float32 (float64 for float64 inputs); with ``return_aux`` a pair
    ``(loss, aux)``; with ``return_lse`` a pair ``(loss, lse)``.

  Numerics:
    Logits are accumulated in float32 whatever the input dtype (bf16
    ``hidden`` and ``weight`` give the float32 result of the upcast inputs),
    and the loss is formed as ``log Σ exp(z - m) - (z_y - m)`` as in
    :func:`jaxdiv.cross_entropy`: values and gradients match the materialised
    computation to float32 rounding (tested to 1e-6 relative). No gradient
    filtering. An out-of-range label that is not ``ignore_index`` gives a NaN
    loss and zero gradient, as :func:`jaxdiv.cross_entropy`.

  Transforms:
    ``jit``, ``grad``/``vjp`` and ``vmap`` are supported. The derivative is a
    ``custom_vjp`` (forming weight gradients block by block has no
    forward-mode counterpart worth its cost), so ``jax.jvp``, ``jacfwd`` and
    ``hessian`` raise JAX's ``TypeError`` ("can't apply forward-mode autodiff
    (jvp) to a custom_vjp function"); use the materialised
    :func:`jaxdiv.cross_entropy` for those. Only ``hidden``, ``weight`` and
    ``bias`` are differentiated.

  References:
    Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models"
    (Cut Cross-Entropy), arXiv:2411.09009. Chowdhery et al., PaLM (z-loss),
    arXiv:2204.02311.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdiv
    >>> h = jax.random.normal(jax.random.key(0), (6, 4))
    >>> w = jax.random.normal(jax.random.key(1), (4, 10))
    >>> y = jnp.array([1, 2, 3, 4, 5, -100])
    >>> fused = jaxdiv.fused_linear_cross_entropy(h, w, y, ignore_index=-100)
    >>> direct = jaxdiv.cross_entropy(h @ w, y, ignore_index=-100, reduction="mean")
    >>> bool(jnp.allclose(fused, direct, rtol=1e-6))
    True
  """
  h, w, b = check_linear(hidden, weight, bias)
  _reduction.check(reduction, normalizer)
  if return_lse and return_aux:
    raise ValueError("return_lse and return_aux both ask for the logsumexp; pass one (aux['logsumexp']).")
  cfg = _options.ce_config(label_smoothing, "uniform", False, z_loss, soft_cap)
  token_shape = h.shape[:-1]
  d, vocab = w.shape
  dt, h32, b32 = linear_dtypes(h, w, b)
  b32 = class_mask(where, vocab, b32)
  y, active, per_token = prepare_labels(
      labels, token_shape, ignore_index, shift_labels, class_weights, vocab, dt)
  user_weights, user_mask = token_weights(token_shape, weights, token_mask, dt)
  per_token, active = per_token * user_weights, active & user_mask
  h32 = h32.reshape(-1, d)
  if token_mask is not None:  # a masked token's hidden state (NaN included) reaches no value or gradient
    h32 = jnp.where(user_mask[:, None], h32, 0)
  n = h32.shape[0]
  mode = choose_mode(mode, reduction, n, d)
  block = block_size("token_block", token_block, vocab, n) if mode == "fast" else block_size(
      "vocab_block", vocab_block, n, vocab)
  spec = Spec(cfg, "labels", block, vocab)
  out, _, lse = run(spec, mode, reduction, normalizer, token_shape, h32, w, b32, (y,), per_token, active)
  if return_aux:
    return out, aux_outputs(cfg, lse, reduction, per_token, active, token_shape, normalizer)
  return (out, lse.reshape(token_shape)) if return_lse else out


def fused_linear_distillation(
    hidden: ArrayLike,
    weight: ArrayLike,
    teacher: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    teacher_weight: ArrayLike | None = None,
    teacher_bias: ArrayLike | None = None,
    divergence: Divergence = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    scale_by_temperature_squared: bool = False,
    labels: ArrayLike | None = None,
    alpha: float = 0.5,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    token_mask: ArrayLike | None = None,
    reduction: Reduction = "mean",
    normalizer: ArrayLike | None = None,
    mode: Mode = "auto",
    token_block: int | None = None,
    vocab_block: int | None = None,
) -> jax.Array:
  r"""Distillation divergence between a student ``(hidden, weight)`` and a teacher, without ``[N, V]`` logits.

  With student ``q = softmax((h W + b)/T)`` and teacher
  ``p = softmax(t/T)``, where ``t`` is ``teacher`` (logits ``[..., V]``) or
  ``teacher @ teacher_weight + teacher_bias`` (teacher hidden states):

  * ``"forward_kl"``: ``KL(p ‖ q)`` (as :func:`jaxdiv.kl_divergence_with_log_targets`; ``"kl"`` is
    the deprecated old spelling);
  * ``"reverse_kl"``: ``KL(q ‖ p)`` (as :func:`jaxdiv.reverse_kl_divergence`);
  * ``"jsd"``: ``JSD_β = β KL(p‖m) + (1-β) KL(q‖m)``, ``m = βp + (1-β)q``
    (as :func:`jaxdiv.jensen_shannon_divergence`, with its ``β = 0, 1`` ends).

  Args:
    hidden: student hidden states ``[..., D]``.
    weight: student unembedding ``[D, V]``.
    teacher: teacher logits ``[..., V]`` or, with ``teacher_weight``,
      teacher hidden states ``[..., D_t]`` (same leading shape as ``hidden``).
    bias: optional student bias ``[V]``.
    teacher_weight: teacher unembedding ``[D_t, V]``, or None if ``teacher``
      holds logits.
    teacher_bias: optional teacher bias ``[V]``.
    divergence: ``"forward_kl"``, ``"reverse_kl"`` or ``"jsd"`` (the vocabulary of
      :func:`jaxdiv.distillation_loss`).
    beta: the teacher's weight in the JSD mixture, in ``[0, 1]``.
    temperature: ``T > 0``, dividing both logits.
    scale_by_temperature_squared: multiply the divergence by ``T**2``
      (Hinton's gradient scale), as :func:`jaxdiv.distillation_loss`. Off by
      default here, as before.
    labels: optional integer hard labels, ``hidden.shape[:-1]``: the loss is
      then ``α·CE(student, labels) + (1 - α)·divergence`` per token, as
      :func:`jaxdiv.distillation_loss` (the CE at temperature 1, by
      :func:`jaxdiv.fused_linear_cross_entropy` in the same mode).
    alpha: ``α`` in ``[0, 1]``, the hard-label weight (with ``labels``).
    ignore_index: a label value whose tokens are left out entirely (with ``labels``).
    where: optional boolean class mask broadcastable to ``[V]``: masked classes
      leave both distributions, as in :func:`jaxdiv.distillation_loss`. (A
      ``where`` of the token shape is the old token mask: deprecated, use
      ``token_mask``.)
    weights: optional float per-token weights, ``hidden.shape[:-1]``; ``"mean"``
      divides by their sum.
    token_mask: optional boolean per-token mask, ``hidden.shape[:-1]``: masked
      tokens give 0 and are left out of the mean.
    reduction: ``"mean"`` (over unmasked tokens; the default), ``"sum"``,
      ``"batchmean"`` or ``"none"``.
    normalizer: optional scalar that ``"mean"``/``"batchmean"`` divide by instead.
    mode, token_block, vocab_block: as :func:`fused_linear_cross_entropy`.

  Returns:
    The reduced divergence (scalar) or per-token divergences
    (``hidden.shape[:-1]``), float32 (float64 for float64 inputs).

  Numerics:
    Both modes compute the one definition of each divergence
    (:mod:`jaxdiv._core`) that :func:`jaxdiv.kl_divergence_with_log_targets`,
    :func:`jaxdiv.reverse_kl_divergence` and
    :func:`jaxdiv.jensen_shannon_divergence` compute: the fast mode over whole
    rows of a token block, the low-memory mode from an online logsumexp and
    block sums. Their accuracy is the same, a tiny KL (5e-9) between nearly
    equal distributions included. The teacher is a constant: it receives no gradient
    (as under ``jax.lax.stop_gradient``).

  Transforms:
    ``jit``, ``grad`` and ``vmap``; a ``custom_vjp``, so no forward mode (see
    :func:`fused_linear_cross_entropy`).

  References:
    Hinton et al., "Distilling the Knowledge in a Neural Network",
    arXiv:1503.02531. Agarwal et al. (GKD, JSD_β), arXiv:2306.13649.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdiv
    >>> h = jax.random.normal(jax.random.key(0), (6, 4))
    >>> w = jax.random.normal(jax.random.key(1), (4, 10))
    >>> t = jax.random.normal(jax.random.key(2), (6, 10))
    >>> fused = jaxdiv.fused_linear_distillation(h, w, t, divergence="forward_kl", reduction="none")
    >>> bool(jnp.allclose(fused, jaxdiv.kl_divergence_with_log_targets(h @ w, t), rtol=1e-6))
    True
  """
  h, w, b = check_linear(hidden, weight, bias)
  kind, beta = _options.divergence(divergence, beta)
  _reduction.check(reduction, normalizer)
  temp = _options.temperature(temperature)
  d, vocab = w.shape
  token_shape = h.shape[:-1]
  if where is not None and jnp.shape(where) == token_shape and jnp.shape(where) not in ((), (1,), (vocab,)):
    warnings.warn("where= as a token mask of fused_linear_distillation is deprecated: where masks classes in "
                  "every jaxdiv loss; pass token_mask= instead.", DeprecationWarning, stacklevel=2)
    if token_mask is not None:
      raise ValueError("pass the token mask once, as token_mask (where= is its deprecated spelling).")
    where, token_mask = None, where
  if teacher_weight is None:
    if teacher_bias is not None:
      raise ValueError(
          "teacher_bias needs teacher_weight (teacher holds logits when teacher_weight is None).")
    t = v.as_floating("teacher", teacher)
    if t.shape != token_shape + (vocab,):
      raise ValueError(
          f"teacher logits must have shape {list(token_shape + (vocab,))} (hidden's tokens × V); "
          f"got {list(t.shape)}. Pass teacher_weight if teacher holds hidden states."
      )
    dt, h32, b32 = linear_dtypes(h, w, b)
    dt = _rows.compute_dtype(dt, t.dtype)
    h32, b32 = h32.astype(dt), class_mask(where, vocab, b32.astype(dt))
    keep = class_keep(where, vocab)
    t = t.astype(dt) if keep is None else jnp.where(jnp.broadcast_to(keep, t.shape), t.astype(dt), -jnp.inf)
    aux: tuple[jax.Array, ...] = (jax.lax.stop_gradient(t.reshape(-1, vocab)),)
    teacher_kind = "logits"
  else:
    th, tw, tb = check_linear(teacher, teacher_weight, teacher_bias, prefix="teacher_")
    if tw.shape[1] != vocab or th.shape[:-1] != token_shape:
      raise ValueError(
          f"teacher_weight must have V = {vocab} columns and teacher hidden states the tokens "
          f"{list(token_shape)}; "
          f"got teacher_weight {list(tw.shape)}, teacher {list(th.shape)}."
      )
    dt, h32, b32 = linear_dtypes(h, w, b)
    dt_t, th32, tb32 = linear_dtypes(th, tw, tb)
    dt = _rows.compute_dtype(dt, dt_t)
    h32, b32 = h32.astype(dt), class_mask(where, vocab, b32.astype(dt))
    tb32 = class_mask(where, vocab, tb32.astype(dt))
    aux = jax.lax.stop_gradient((th32.astype(dt).reshape(-1, th.shape[-1]), tw, tb32))
    teacher_kind = "hidden"
  user_weights, mask = token_weights(token_shape, weights, token_mask, dt)
  if labels is not None:
    ignore_index = _options.ignore_index(ignore_index)
    y = v.as_integer("labels", labels)
    if y.shape != token_shape:
      raise ValueError(f"labels must have the token shape {list(token_shape)}; got {list(y.shape)}.")
    if ignore_index is not None:
      mask = mask & (v.wide_labels(y) != ignore_index).reshape(-1)
  user_weights = jnp.where(mask, user_weights, 0)
  h32 = h32.reshape(-1, d)
  if token_mask is not None:  # a masked token's hidden state (NaN included) reaches no value or gradient
    h32 = jnp.where(mask[:, None], h32, 0)
  n = h32.shape[0]
  mode = choose_mode(mode, reduction, n, d)
  if mode == "fast" and teacher_kind == "hidden":
    th_, tw_, tb_ = cast(tuple[jax.Array, jax.Array, jax.Array], aux)
    aux = (th_, tw_.astype(dt), tb_)
  block = block_size("token_block", token_block, vocab, n) if mode == "fast" else block_size(
      "vocab_block", vocab_block, n, vocab)
  spec = Spec(DivSpec(kind, beta), teacher_kind, block, vocab, temperature=temp)
  if labels is None:
    out = run(spec, mode, reduction, normalizer, token_shape, h32, w, b32, aux, user_weights, mask)[0]
    return temp * temp * out if scale_by_temperature_squared else out
  # Hard labels: both terms reduced over the same tokens with the same denominator, so that
  # α·CE + (1 - α)·D is exactly distillation_loss's per-token mixture, reduced once.
  alpha = _options.scalar("alpha", alpha, 0.0, 1.0)
  scale = temp * temp if scale_by_temperature_squared else 1.0
  if reduction in ("mean", "batchmean") and normalizer is None:
    weight = user_weights.reshape(token_shape)
    normalizer = jnp.sum(weight) if reduction == "mean" else (weight.shape[0] if weight.ndim else 1)
    reduction = "sum" if reduction == "batchmean" else reduction
  soft = run(spec, mode, reduction, normalizer, token_shape, h32, w, b32, aux, user_weights, mask)[0]
  hard = fused_linear_cross_entropy(
      h32.reshape(*token_shape, d), w, jnp.where(mask.reshape(token_shape), y, 0), bias=b32,
      weights=user_weights.reshape(token_shape), token_mask=mask.reshape(token_shape), reduction=reduction,
      normalizer=normalizer, mode=mode, token_block=token_block, vocab_block=vocab_block)
  mix = lambda c, x: mul_safe(jnp.asarray(c, x.dtype), x)  # a zero weight on an infinite term is 0
  return mix(alpha, hard) + mix((1 - alpha) * scale, soft)
