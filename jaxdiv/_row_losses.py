"""The whole-row driver: each loss of :mod:`jaxdiv._core` over complete rows, on one device or several.

The materialised losses hold a whole row on one device; the vocab-parallel
losses hold a row's classes spread over the devices of a mesh axis
(``axis_name``, inside ``shard_map``), where every reduction over the row is
followed by a ``pmax``/``psum``. Both are this one driver.

Each loss is a ``custom_jvp`` whose tangent is ``Σ coefficient · dx`` with the
coefficient from :mod:`jaxdiv._core`: one elementwise expression of the inputs
and the row statistics, so the backward pass is one fused pass with no saved
full-size residual, and the rule is itself differentiable (Hessians, forward
over reverse). Inputs are read in their own dtype (bfloat16 is widened inside
the fused passes, never copied) and the result is in the compute dtype.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiv import _core
from jaxdiv._options import CEConfig
from jaxdiv._rows import (
    all_reduce,
    compute_dtype,
    finite_or_zero,
    local_offset,
    masked_tangent,
    row_lse,
    row_reduce,
    widen,
)

# --------------------------------------------------------------------------- #
# Cross-entropy against integer labels
# --------------------------------------------------------------------------- #


def _ce_stats(z, index, axis: int, cfg: CEConfig, axis_name: Any):
  cdt = compute_dtype(z.dtype)
  m, norm = row_lse(z, axis, cdt, axis_name)
  local = jnp.expand_dims(index, axis) - local_offset(z.shape[axis], axis_name)
  picked = all_reduce(_core.ce_picked(widen(z, cdt), local, axis), "sum", axis_name)
  rel = count = jnp.zeros_like(norm)
  if cfg.label_smoothing:
    terms = lambda z, shift: _core.ce_smoothing_terms(widen(z, cdt), shift)
    rel, count = row_reduce(terms, (z,), (finite_or_zero(m),), axis, ("sum", "sum"), axis_name)
  return _core.CEStats(m, norm, picked, rel, count), local


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def ce_rows(z: jax.Array, index: jax.Array, axis: int, cfg: CEConfig, axis_name: Any = None) -> jax.Array:
  """The cross-entropy of :func:`jaxdiv._core.ce_value` per row.

  Args:
    z: logits in any floating dtype, masked entries ``-inf``, already soft-capped
      (the cap's slope comes from differentiating the cap itself).
    index: int32 class per row, in range (``z.shape`` without ``axis``); global
      indices when the row is spread over ``axis_name``.
    axis: the class axis (non-negative).
    cfg: label smoothing and z-loss (``cfg.soft_cap`` is not applied here).
    axis_name: the mesh axis the row's classes are spread over, or None.

  Returns:
    ``z.shape`` without ``axis``, in the compute dtype.
  """
  st, _ = _ce_stats(z, index, axis, cfg, axis_name)
  return jnp.squeeze(_core.ce_value(cfg, st), axis)


@ce_rows.defjvp
def _ce_rows_jvp(axis, cfg, axis_name, primals, tangents):
  (z, index), (dz, _) = primals, tangents
  st, local = _ce_stats(z, index, axis, cfg, axis_name)
  value = jnp.squeeze(_core.ce_value(cfg, st), axis)
  cdt = st.norm.dtype
  onehot = jax.lax.broadcasted_iota(jnp.int32, z.shape, axis) == local
  # The softmax is recomputed from the row statistics in the backward's one
  # fused pass, rather than kept from the forward: when the logits are an
  # intermediate (hidden @ weight), XLA then writes the gradient over their
  # buffer. It is exactly 0 at -inf entries, so no mask on dz (whose transpose
  # would read z once more).
  coeff = _core.ce_coefficient(cfg, widen(z, cdt), onehot, st)
  return value, all_reduce(jnp.sum(coeff * dz.astype(cdt), axis=axis), "sum", axis_name)


def support_mean_rows(z: jax.Array, axis: int, class_weights: jax.Array | None = None) -> jax.Array:
  """``Σ_S w_c (-log q_c) / |S|`` per row (the uniform smoothing term; ``w = 1`` without class weights).

  0 for an empty row. Plain autodiff through :func:`jaxdiv._rows.row_lse`.
  """
  cdt = compute_dtype(z.dtype)
  m, norm = row_lse(z, axis, cdt)
  shift = finite_or_zero(m)
  if class_weights is None:
    support_terms = lambda z, shift: _core.ce_smoothing_terms(widen(z, cdt), shift)
    rel, count = row_reduce(support_terms, (z,), (shift,), axis, ("sum", "sum"))
    total = _core.support_ce(_core.CEStats(m, norm, jnp.zeros_like(norm), rel, count))
  else:
    shape = [1] * z.ndim
    shape[axis] = z.shape[axis]
    w = jnp.broadcast_to(class_weights.astype(cdt).reshape(shape), z.shape)

    def terms(z, w, shift):
      rel, support = _core.ce_smoothing_terms(widen(z, cdt), shift)
      return w * rel, w * support, support

    w_rel, w_sum, count = row_reduce(terms, (z, w), (shift,), axis, ("sum", "sum", "sum"))
    total = _core.weighted_support_ce(norm, w_sum, w_rel)
  return jnp.squeeze(jnp.where(count > 0, total / jnp.where(count > 0, count, 1), 0), axis)


def lse_rows(z: jax.Array, axis: int, axis_name: Any = None) -> jax.Array:
  """The logsumexp of each row, ``-inf`` for an empty row (differentiable through ``row_lse``)."""
  m, norm = row_lse(z, axis, compute_dtype(z.dtype), axis_name)
  return jnp.squeeze(jnp.where(m == -jnp.inf, m, finite_or_zero(m) + norm), axis)


# --------------------------------------------------------------------------- #
# Divergences: forward KL, reverse KL, JSD
# --------------------------------------------------------------------------- #


def _div_sums(student, teacher, axis: int, spec: _core.DivSpec, axis_name: Any):
  cdt = compute_dtype(student.dtype, teacher.dtype)
  m_s, norm_s = row_lse(student, axis, cdt, axis_name)
  if spec.teacher_is_log:
    m_t, norm_t = row_lse(teacher, axis, cdt, axis_name)
  else:
    m_t = norm_t = jnp.zeros_like(norm_s)
  stats = (finite_or_zero(m_s), norm_s, finite_or_zero(m_t), norm_t)
  fn = lambda s, t, *stats: _core.div_elementwise(spec, s, t, stats, cdt)
  sums = row_reduce(fn, (student, teacher), stats, axis, _core.div_kinds(spec), axis_name)
  value, residual = _core.div_finish(spec, sums)
  return value, residual, stats, cdt


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def divergence_rows(
    student: jax.Array, teacher: jax.Array, axis: int, spec: _core.DivSpec, axis_name: Any = None
) -> jax.Array:
  """The divergence ``spec`` between each row of ``student`` and ``teacher`` logits.

  Args:
    student: model logits, masked entries ``-inf``; any floating dtype.
    teacher: target logits (masked entries ``-inf``) or, with
      ``spec.teacher_is_log=False``, target probabilities (masked entries 0);
      same shape.
    axis: the class axis (non-negative).
    spec: which divergence (:class:`jaxdiv._core.DivSpec`).
    axis_name: the mesh axis the rows' classes are spread over, or None.

  Returns:
    ``student.shape`` without ``axis``, in the compute dtype; never negative,
    exactly 0 for equal rows.
  """
  return jnp.squeeze(_div_sums(student, teacher, axis, spec, axis_name)[0], axis)


@divergence_rows.defjvp
def _divergence_rows_jvp(axis, spec, axis_name, primals, tangents):
  (student, teacher), (d_student, d_teacher) = primals, tangents
  value, residual, stats, cdt = _div_sums(student, teacher, axis, spec, axis_name)
  c_s, c_t = _core.div_coefficients(spec, student, teacher, stats, residual, cdt)
  # Zero coefficients (classes off both supports) meet tangents that may be NaN
  # (masked entries): select them away rather than multiply.
  d_s = masked_tangent(student, d_student, cdt)
  d_t = jnp.where(c_t == 0, 0, d_teacher.astype(cdt))
  tangent = jnp.sum(c_s * d_s, axis=axis) + jnp.sum(c_t * d_t, axis=axis)
  return jnp.squeeze(value, axis), all_reduce(tangent, "sum", axis_name)
