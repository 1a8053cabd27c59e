"""One definition of each loss: row statistics, the value from them, the gradient coefficient.

Every path — the materialised losses (a whole row on one device), the fused
losses (blocks of ``hidden @ weight``) and the vocab-parallel losses (parts of a
row on several devices) — computes its loss with the functions here, so a
numerical fix lands in every path at once. Each loss is written as

1. *statistics* that combine block by block: the logsumexp pair
   ``(max, Σ exp(z - max))`` and plain sums over classes;
2. the *value* of a row from its statistics;
3. the *gradient coefficient* of each class from the statistics and the
   block's logits, so that ``∂loss/∂z = coefficient`` without storing any
   ``[*, V]`` residual.

The drivers (:mod:`jaxdiv._row_losses` for whole rows, possibly spread over a
mesh axis; :mod:`jaxdiv._fused` for blocks of ``hidden @ weight``) decide where
the blocks come from and how statistics travel (a fold over blocks,
``pmax``/``psum`` over a mesh axis).

Cross-entropy against integer labels (:class:`CEStats`). With ``m`` the row
shift, per row: ``norm = log Σ exp(z - m)``, the label's logit ``z_y``,
``r = Σ_{c ∈ S} (z_c - m)`` and ``k = |S|`` over the supported classes
``S = {c : z_c > -inf}``. With the smoothed target ``a·onehot(y) + b·1_S``
(uniform: ``a = 1 - ε``, ``b = ε/k``; t5x: ``ε/(k - 1)`` off the label):

  loss = a (norm - (z_y - m)) + b (k·norm - r) + λ lse²,
  ∂loss/∂z_c = (a + b k + 2λ lse) q_c - a [c = y] - b [c ∈ S].

Masked classes (``-inf`` logits, a padded vocabulary) get no smoothing mass, so
the smoothed loss stays finite where torch and Liger give ``+inf``.

Divergences (KL, reverse KL, JSD) need both logsumexps before their sums, so
they are two passes: ``(shift, norm)`` of both rows, then the sums of
:func:`kl_elementwise` / :func:`jsd_elementwise`, combined by plain sums.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxdiv._kernels import kl_term, mul_safe
from jaxdiv._options import CEConfig
from jaxdiv._rows import (
  finite_or_zero,
  log_norm,
  lse_all_reduce,
  lse_block,
  lse_merge,
  lse_parts,
  widen,
)
from jaxdiv._series import psi

_NEG_INF = -jnp.inf


# --------------------------------------------------------------------------- #
# Logit transforms
# --------------------------------------------------------------------------- #


def capped(x: jax.Array, soft_cap: float | None, dtype) -> jax.Array:
  """``x`` widened to ``dtype`` and soft-capped as ``c·tanh(x/c)``; ``-inf`` (masked) stays ``-inf``."""
  z = widen(x, dtype)
  if soft_cap is None:
    return z
  off = z == _NEG_INF
  c = jnp.asarray(soft_cap, dtype)
  return jnp.where(off, z, c * jnp.tanh(jnp.where(off, jnp.zeros_like(z), z) / c))


def cap_slope(z: jax.Array, soft_cap: float | None):
  """``d capped / d raw`` from the capped logits ``z`` (1 at ``-inf`` entries)."""
  if soft_cap is None:
    return 1.0
  r = jnp.where(z == _NEG_INF, 0, z / soft_cap)
  return 1 - r * r


# --------------------------------------------------------------------------- #
# Cross-entropy against integer labels
# --------------------------------------------------------------------------- #


class CEStats(NamedTuple):
  """Row statistics of the label cross-entropy, each ``[rows, 1]`` (see the module docstring)."""

  max: jax.Array  # raw row max (-inf for an empty row, NaN with a NaN logit); no derivative
  norm: jax.Array  # log Σ exp(z - shift): 0 for an empty row, NaN with a NaN logit
  picked: jax.Array  # z_y
  rel_sum: jax.Array  # Σ_S (z - shift); zeros without label smoothing
  count: jax.Array  # |S|; zeros without label smoothing

  @property
  def shift(self) -> jax.Array:
    """The finite shift: the max, 0 for an empty row."""
    return finite_or_zero(self.max)


class CEPartial(NamedTuple):
  """Statistics of a block of classes, before the logsumexp is finished (combined by :func:`ce_merge`)."""

  max: jax.Array  # raw max (-inf for an empty block, NaN with a NaN logit)
  sum_exp: jax.Array  # Σ exp(z - finite_or_zero(max))
  picked: jax.Array  # z_y, 0 where the label is not in this block
  rel_sum: jax.Array  # Σ_S (z - finite_or_zero(max))
  count: jax.Array  # |S|


def ce_picked(z: jax.Array, local: jax.Array, axis: int) -> jax.Array:
  """``z[local]`` along ``axis`` where ``0 <= local < size``, else 0 (``local`` keeps ``axis`` as size 1)."""
  size = z.shape[axis]
  hit = (local >= 0) & (local < size)
  got = jnp.take_along_axis(z, jnp.clip(local, 0, size - 1).astype(jnp.int32), axis=axis)
  return jnp.where(hit, got, jnp.zeros_like(got))


def ce_smoothing_terms(z: jax.Array, shift: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Summands of ``(r, k)``: ``z - shift`` and 1 on the support, 0 off it."""
  support = z > _NEG_INF
  return jnp.where(support, z - shift, jnp.zeros_like(z)), support.astype(z.dtype)


def ce_block(cfg: CEConfig, z: jax.Array, local: jax.Array) -> CEPartial:
  """:class:`CEPartial` of a ``[rows, block]`` block of capped, widened logits (``local``: ``[rows, 1]``)."""
  m, s = lse_block(z)
  rel = count = jnp.zeros_like(s)
  if cfg.label_smoothing:
    rel, count = (jnp.sum(t, axis=1, keepdims=True) for t in ce_smoothing_terms(z, finite_or_zero(m)))
  return CEPartial(m, s, ce_picked(z, local, 1), rel, count)


def _rebase(st: CEPartial, new_max: jax.Array) -> jax.Array:
  """``st.rel_sum`` re-expressed against ``finite_or_zero(new_max)``."""
  return st.rel_sum - st.count * (finite_or_zero(new_max) - finite_or_zero(st.max))


def ce_merge(a: CEPartial, b: CEPartial) -> CEPartial:
  """Statistics of the union of two disjoint sets of classes of the same rows."""
  m, s = lse_merge((a.max, a.sum_exp), (b.max, b.sum_exp))
  return CEPartial(m, s, a.picked + b.picked, _rebase(a, m) + _rebase(b, m), a.count + b.count)


def ce_all_reduce(st: CEPartial, axis_name: Any) -> CEPartial:
  """Statistics combined over the devices of ``axis_name`` (each holding other classes)."""
  if axis_name is None:
    return st
  m, s = lse_all_reduce((st.max, st.sum_exp), axis_name)
  picked, rel, count = jax.lax.psum((st.picked, _rebase(st, m), st.count), axis_name)
  return CEPartial(m, s, picked, rel, count)


def ce_finish(st: CEPartial) -> CEStats:
  """:class:`CEStats` from the statistics of all classes of the rows."""
  return CEStats(jax.lax.stop_gradient(st.max), log_norm(st.sum_exp), st.picked, st.rel_sum, st.count)


def ce_target(cfg: CEConfig, st: CEStats):
  """``(a, b, const)``: the smoothed target ``a·onehot(y) + b·1_S`` and the t5x normaliser's constant."""
  eps, count = cfg.label_smoothing, st.count
  if eps == 0.0:
    return jnp.ones_like(count), jnp.zeros_like(count), None
  safe = lambda n: jnp.where(n > 0, n, jnp.ones_like(n))
  if cfg.smoothing == "uniform":
    return jnp.full_like(count, 1 - eps), jnp.where(count > 0, eps / safe(count), 0), None
  on_support = (st.picked > _NEG_INF).astype(count.dtype)
  k_off = count - on_support
  off = jnp.where(k_off > 0, eps / safe(k_off), 0)
  conf = jnp.where(k_off > 0, jnp.asarray(1 - eps, count.dtype), jnp.ones_like(count))
  const = None
  if cfg.t5x_normalize:
    xlogx = lambda a: jnp.where(a > 0, a * jnp.log(jnp.where(a > 0, a, 1)), 0)
    const = xlogx(conf) + jnp.where(k_off > 0, eps * jnp.log(jnp.where(off > 0, off, 1)), 0)
  return conf - off * on_support, off, const


def ce_lse(st: CEStats) -> jax.Array:
  """The row logsumexp ``shift + norm``: ``-inf`` for an empty row, NaN with a NaN logit."""
  return jnp.where(st.max == _NEG_INF, st.max, st.shift + st.norm)


def weighted_support_ce(norm: jax.Array, weight_sum: jax.Array, weighted_rel_sum: jax.Array) -> jax.Array:
  """``Σ_{c ∈ S} w_c (-log q_c) = (Σ_S w_c)·norm - Σ_S w_c (z_c - m)``: the smoothing sum, class-weighted."""
  return weight_sum * norm - weighted_rel_sum


def support_ce(st: CEStats) -> jax.Array:
  """``Σ_{c ∈ S} -log q_c = k·norm - r``: the cross-entropy against 1 on every supported class."""
  return weighted_support_ce(st.norm, st.count, st.rel_sum)


def z_loss_part(cfg: CEConfig, lse: jax.Array) -> jax.Array:
  """``λ·lse²``; 0 with zero derivative for an empty row (``lse = -inf``), exactly 0 when ``λ = 0``."""
  if not cfg.z_loss:
    return jnp.zeros_like(lse)
  return cfg.z_loss * jnp.square(jnp.where(lse == _NEG_INF, jnp.zeros_like(lse), lse))


def ce_value(cfg: CEConfig, st: CEStats) -> jax.Array:
  """Per-row loss ``[rows, 1]`` from the statistics.

  ``norm - (z_y - m)`` keeps ties at ``|z| = 1e30`` exact (log 2); a label on a
  ``-inf`` logit gives ``+inf``; NaN in the row gives NaN.
  """
  nll = st.norm - (st.picked - st.shift)
  if cfg.label_smoothing:
    a, b, const = ce_target(cfg, st)
    nll = mul_safe(a, nll) + b * support_ce(st)
    if const is not None:
      nll = nll + const
  return nll + z_loss_part(cfg, ce_lse(st)) if cfg.z_loss else nll


def ce_coefficient(cfg: CEConfig, z: jax.Array, onehot: jax.Array, st: CEStats) -> jax.Array:
  """``∂loss/∂z`` for capped, widened logits ``z`` of a block (``onehot``: the label's class there).

  The soft-cap slope is not included (see :func:`cap_slope`).
  """
  hi, lo = lse_parts(st.shift, st.norm)
  q = jnp.exp((z - hi) - lo)
  if not cfg.label_smoothing and not cfg.z_loss:
    return q - onehot.astype(z.dtype)
  a, b, _ = ce_target(cfg, st)
  total = a + b * st.count
  if cfg.z_loss:
    lse = ce_lse(st)
    total = total + 2 * cfg.z_loss * jnp.where(lse == _NEG_INF, jnp.zeros_like(lse), lse)
  coeff = total * q - jnp.where(onehot, a, 0)
  if cfg.label_smoothing:
    coeff = coeff - jnp.where(z > _NEG_INF, b, 0)
  return coeff


# --------------------------------------------------------------------------- #
# KL(p ‖ q) from target logits (or probabilities) and logits
# --------------------------------------------------------------------------- #


def kl_parts(target, logits, stats, target_is_log: bool, cdt):
  """Elementwise ``(p, log p, support, d, log q)``, all differentiable, given both rows' statistics.

  ``stats = (shift_z, norm_z, shift_t, norm_t)`` (the target's are zeros for a
  probability target). ``d = log q - log p`` is formed as
  ``((z - t) - (max z - max t)) - (norm_z - norm_t)``: for nearly equal logits
  ``z - t`` is exact, whereas two separately rounded log-softmaxes carry ~1e-6
  of noise per class, whose square alone is 1e-4 of a KL of 5e-9. Where the two
  rows' maxima are far apart that grouping cancels, and the shifted form is used
  (per class, whichever has the smaller rounding bound). A NaN in either input
  stays NaN.
  """
  shift_z, norm_z, shift_t, norm_t = stats
  if target_is_log:
    t = widen(target, cdt)
  else:
    pw = widen(target, cdt)
    t = jnp.where(pw > 0, jnp.log(jnp.where(pw > 0, pw, 1)), jnp.where(pw == 0, _NEG_INF, jnp.nan))
  z = widen(logits, cdt)
  hi_t, lo_t = lse_parts(shift_t, norm_t)
  log_p = (t - hi_t) - lo_t
  p = jnp.exp(log_p)
  support = p > 0
  t_s = jnp.where(support, t, 0)
  z_rel, t_rel, norms = z - shift_z, t_s - shift_t, norm_z - norm_t
  raw = ((z - t_s) - (shift_z - shift_t)) - norms
  shifted = (z_rel - t_rel) - norms
  use_raw = jnp.abs(z - t_s) + jnp.abs(shift_z - shift_t) <= jnp.abs(z_rel) + jnp.abs(t_rel)
  d = jnp.where(support | jnp.isnan(log_p), jnp.where(use_raw, raw, shifted), 0)
  hi_z, lo_z = lse_parts(shift_z, norm_z)
  return p, log_p, support, d, (z - hi_z) - lo_z


def kl_elementwise(target, logits, stats, target_is_log: bool, cdt):
  """Summands ``(terms, excess, mass)`` of the KL value, given both rows' statistics.

  Renormalising ``q' = p e^d`` to the target mass ``P`` removes the rounding
  left in the per-row offset: the value is ``S - P ψ(E/P)`` (:func:`kl_value`)
  with ``S`` the sum of the terms, ``E = Σ (q' - p)`` and ``P = Σ p``. Reduce
  them with :func:`kl_kinds` (a log target's mass is a max: it is normalised).
  """
  p, log_p, support, d, log_q = kl_parts(target, logits, stats, target_is_log, cdt)
  log_p = jnp.where(support, log_p, 0)
  q_prime = jnp.exp(jnp.where(support, log_p + d, log_q))
  terms = jnp.where(support, kl_term(p, q_prime, d), q_prime)
  # A log target's mass is found by a max, exact in its own dtype (no widened copy of bf16).
  return terms, q_prime - p, target if target_is_log else widen(target, cdt)


def kl_kinds(target_is_log: bool) -> tuple[str, str, str]:
  return ("sum", "sum", "max" if target_is_log else "sum")


def kl_mass(mass: jax.Array, target_is_log: bool) -> jax.Array:
  """The target mass ``P`` from the reduced third sum: 1 (or 0 for an empty row) for a log target."""
  if not target_is_log:
    return mass
  return jnp.where(jnp.isnan(mass), mass, (mass > _NEG_INF).astype(mass.dtype))


def kl_value(total, excess, mass):
  """``P·KL(p/P ‖ q)`` per row from the sums of :func:`kl_elementwise` (``mass`` from :func:`kl_mass`).

  ``P = 1`` gives KL(p‖q); a row without target mass gives 0. Never negative.
  """
  has = mass > 0
  r = jnp.where(has, excess / jnp.where(has, mass, 1), 0)
  value = jnp.maximum(total - mass * psi(r), 0)  # equal up to rounding when KL ≈ 0
  return jnp.where(has | jnp.isnan(total + mass), value, 0)


def kl_coefficients(target, logits, stats, value, mass, target_is_log: bool, cdt):
  """``(∂/∂logits, ∂/∂target)`` per class of ``P·KL(p/P ‖ q)`` (``value``, ``mass`` keep the class axis).

  ``∂/∂z = P q - p``; for a log target (``P = 1``) ``∂/∂t = p (log p - log q - KL)``, and 0 on a
  row whose KL is ``+inf``;
  for a probability target ``∂/∂p = log p - log q - log P``, 0 where ``p = 0``
  and ``+inf`` where ``p > 0 = q``.
  """
  p, log_p, support, _, log_q = kl_parts(target, logits, stats, target_is_log, cdt)
  q = jnp.exp(log_q)
  log_ratio = jnp.where(support, jnp.where(support, log_p, 0) - jnp.where(support, log_q, 0), 0)
  log_ratio = jnp.where(support & (log_q == _NEG_INF), jnp.inf, log_ratio)
  if target_is_log:
    # A row whose divergence is +inf (target mass where q = 0) has no derivative: zero, never NaN.
    c_target = jnp.where(value == jnp.inf, 0, mul_safe(p, log_ratio - jnp.where(value == jnp.inf, 0, value)))
  else:
    log_mass = jnp.log(jnp.where(mass > 0, mass, 1))
    c_target = jnp.where(support, log_ratio - log_mass, 0)
  return mass * q - p, c_target


# --------------------------------------------------------------------------- #
# Generalised Jensen–Shannon divergence
# --------------------------------------------------------------------------- #


def jsd_parts(target, logits, stats, beta: float, cdt):
  """Elementwise ``(KL(P‖M) terms, KL(Q‖M) terms, p, q, log p, log q, log m)`` given both rows' statistics.

  ``stats = (shift_z, norm_z, shift_t, norm_t)``. The mixture is formed in
  linear space, ``m = β p + (1 - β) q``, and each KL term from ``m`` itself
  (:func:`kl_term` with ``d = log m - log a``; ``m`` off the support of ``a``):
  one log per class on top of the two exps.
  """
  shift_z, norm_z, shift_t, norm_t = stats
  hi_t, lo_t = lse_parts(shift_t, norm_t)
  hi_z, lo_z = lse_parts(shift_z, norm_z)
  log_p = (widen(target, cdt) - hi_t) - lo_t
  log_q = (widen(logits, cdt) - hi_z) - lo_z
  p, q = jnp.exp(log_p), jnp.exp(log_q)
  m = beta * p + (1 - beta) * q
  log_m = jnp.where(m > 0, jnp.log(jnp.where(m > 0, m, 1)), jnp.where(jnp.isnan(m), m, _NEG_INF))

  def to_m(a, log_a):
    support = a > 0
    d = jnp.where(support, log_m - jnp.where(support, log_a, 0), 0)
    return jnp.where(support, kl_term(a, m, d), jnp.where(jnp.isnan(a), a, m))

  return to_m(p, log_p), to_m(q, log_q), p, q, log_p, log_q, log_m


def jsd_value(kl_p: jax.Array, kl_q: jax.Array, beta: float) -> jax.Array:
  """``β KL(P‖M) + (1 - β) KL(Q‖M)`` from the two row sums."""
  return beta * kl_p + (1 - beta) * kl_q


def jsd_coefficients(parts, kl_p, kl_q, beta: float):
  """``(∂/∂logits, ∂/∂target)``: ``(1 - β) q (log(q/m) - KL(Q‖M))`` and ``β p (log(p/m) - KL(P‖M))``."""
  _, _, p, q, log_p, log_q, log_m = parts

  def coeff(a, log_a, kl_a, weight):
    log_ratio = jnp.where(a > 0, jnp.where(a > 0, log_a, 0) - log_m, 0)
    return weight * mul_safe(a, log_ratio - kl_a)

  return coeff(q, log_q, kl_q, 1 - beta), coeff(p, log_p, kl_p, beta)


# --------------------------------------------------------------------------- #
# The divergences as one family: which KL, whose statistics, which coefficient
# --------------------------------------------------------------------------- #


class DivSpec(NamedTuple):
  """A divergence between a student (model) row and a teacher (target) row (hashable, static).

  ``kind``: ``"forward_kl"`` = KL(teacher ‖ student), ``"reverse_kl"`` =
  KL(student ‖ teacher), ``"jsd"`` = JSD_β with the teacher's weight ``β`` in
  the mixture (``0 < β < 1``; :func:`jaxdiv._options.divergence` resolves the
  ends). ``teacher_is_log``: the teacher is given as logits (else as
  probabilities; forward KL only).
  """

  kind: str = "forward_kl"
  beta: float = 0.5
  teacher_is_log: bool = True


def _swap(stats):
  shift_s, norm_s, shift_t, norm_t = stats
  return shift_t, norm_t, shift_s, norm_s


def div_elementwise(spec: DivSpec, student, teacher, stats, cdt) -> tuple[jax.Array, ...]:
  """Summands of the divergence's row sums; ``stats = (shift_s, norm_s, shift_t, norm_t)``."""
  if spec.kind == "forward_kl":
    return kl_elementwise(teacher, student, stats, spec.teacher_is_log, cdt)
  if spec.kind == "reverse_kl":
    return kl_elementwise(student, teacher, _swap(stats), True, cdt)
  return jsd_parts(teacher, student, stats, spec.beta, cdt)[:2]


def div_kinds(spec: DivSpec) -> tuple[str, ...]:
  """How each sum of :func:`div_elementwise` combines across blocks and devices."""
  if spec.kind == "jsd":
    return ("sum", "sum")
  return kl_kinds(spec.teacher_is_log if spec.kind == "forward_kl" else True)


def div_finish(spec: DivSpec, sums: tuple[jax.Array, ...]) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """``(value, residual)`` per row from the combined sums; ``residual`` feeds :func:`div_coefficients`."""
  if spec.kind == "jsd":
    kl_p, kl_q = sums
    return jsd_value(kl_p, kl_q, spec.beta), (kl_p, kl_q)
  is_log = spec.teacher_is_log if spec.kind == "forward_kl" else True
  mass = kl_mass(sums[2].astype(sums[0].dtype), is_log)
  value = kl_value(sums[0], sums[1], mass)
  return value, (value, mass)


def div_coefficients(spec: DivSpec, student, teacher, stats, residual, cdt) -> tuple[jax.Array, jax.Array]:
  """``(∂/∂student, ∂/∂teacher)`` per class (the teacher's w.r.t. its logits, or its probabilities)."""
  if spec.kind == "forward_kl":
    value, mass = residual
    return kl_coefficients(teacher, student, stats, value, mass, spec.teacher_is_log, cdt)
  if spec.kind == "reverse_kl":
    value, mass = residual
    c_teacher, c_student = kl_coefficients(student, teacher, _swap(stats), value, mass, True, cdt)
    return c_student, c_teacher
  kl_p, kl_q = residual
  return jsd_coefficients(jsd_parts(teacher, student, stats, spec.beta, cdt), kl_p, kl_q, spec.beta)


# --------------------------------------------------------------------------- #
# The pointwise form (torch's kl_div, optax's kl_divergence, TRL's and Liger's per-class terms)
# --------------------------------------------------------------------------- #


def _nan_of(x: jax.Array) -> jax.Array:
  """0 where ``x`` is not NaN; NaN, with a NaN derivative, where it is."""
  n = jnp.where(jnp.isnan(x), x, 0)
  return n * n


def pointwise_kl(p: jax.Array, log_p: jax.Array | None, log_r: jax.Array) -> jax.Array:
  """The summands ``p (log p - log r)``, with ``0 log 0 = 0`` against any ``log r``.

  The per-class terms users compare with torch's ``kl_div(reduction="none")``
  and differentiate w.r.t. free log-probabilities. Their row sum is the KL
  only up to rounding (it cancels for nearly equal rows; the row values use
  :func:`kl_elementwise`).

  Args:
    p: the first distribution's probabilities (``>= 0``).
    log_p: ``log p`` (a log target, ``-inf`` where ``p = 0``), or None for
      a probability target: then ``log p`` is taken here, at 1 where ``p = 0``,
      so that its derivative there is not ``0 · inf``.
    log_r: the second distribution's log-probabilities, ``-inf`` allowed.

  Returns:
    The terms, shape of the broadcast inputs: 0 where ``p = 0`` with zero
    derivatives (NaN if ``log_r`` is NaN), ``+inf`` for mass on ``log r = -inf``.
  """
  zero = p == 0
  p_s, log_r_s = jnp.where(zero, 1, p), jnp.where(zero, 0, log_r)
  log_p_s = jnp.log(p_s) if log_p is None else jnp.where(zero, 0, log_p)
  return jnp.where(zero, _nan_of(log_r), p_s * (log_p_s - log_r_s))
