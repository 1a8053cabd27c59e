"""KL divergence (forward and reverse) and the Jensen–Shannon divergence between categorical distributions.

Same conventions as :mod:`jaxdiv._categorical`: the model's ``logits`` first,
the target second, one value per row over the class ``axis`` (float32, or
float64 for float64 input), ``where`` masks classes. The row values are the
cancellation-free sums of :mod:`jaxdiv._core` (never negative, accurate for a
KL of 1e-9). Two options serve users who port per-class code from torch, TRL,
optax or Liger-Kernel:

* ``per_class=True`` returns the ``[..., num_classes]`` terms of the pointwise
  form ``p_c (log p_c - log q_c)`` (:func:`jaxdiv._core.pointwise_kl`), which
  sum to the row value up to rounding, and reduces over every element.
* ``assume_normalized=True``: the inputs are normalised log-probabilities, and
  derivatives are those of the pointwise sum w.r.t. free log-probabilities
  (``∂/∂log q_c = -p_c`` for the forward KL) instead of those of the
  re-normalised form (``∂/∂z_c = q_c - p_c``). The value is the same.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import _core, _kernels, _options, _reduction, _row_losses
from jaxdiv import _validation as v
from jaxdiv._categorical_inputs import INT_HINT, masked, pair, reduce_rows
from jaxdiv._reduction import Reduction


def _log_pair(spec: _core.DivSpec, model: jax.Array, target: jax.Array, ax: int, normalize: bool):
  """``(p, log p, log q)`` in the compute dtype; ``log p`` is None for a probability target."""
  model, target = v.to_compute(model, target)
  log_q = _kernels.log_softmax(model, ax)[0] if normalize else model
  if spec.teacher_is_log:
    log_p = _kernels.log_softmax(target, ax)[0] if normalize else target
    return jnp.exp(log_p), log_p, log_q
  return target, None, log_q


def _pointwise_terms(spec: _core.DivSpec, model, target, ax: int, normalize: bool) -> jax.Array:
  """The per-class terms of the divergence in the pointwise form (see the module docstring)."""
  p, log_p, log_q = _log_pair(spec, model, target, ax, normalize)
  if spec.kind == "forward_kl":
    return _core.pointwise_kl(p, log_p, log_q)
  assert log_p is not None, "the reverse KL and the JSD take log targets"
  q = jnp.exp(log_q)
  if spec.kind == "reverse_kl":
    return _core.pointwise_kl(q, log_q, log_p)
  log_m = _kernels.log_mix(log_p, log_q, spec.beta)
  beta = spec.beta
  return beta * _core.pointwise_kl(p, log_p, log_m) + (1 - beta) * _core.pointwise_kl(q, log_q, log_m)


def _divergence(
    spec: _core.DivSpec,
    logits: ArrayLike,
    target: ArrayLike,
    target_name: str,
    axis: int,
    where: ArrayLike | None,
    reduction: Reduction,
    normalizer: ArrayLike | None,
    per_class: bool,
    assume_normalized: bool,
) -> jax.Array:
  """The divergence ``spec`` of the target from the model, checked, masked and reduced."""
  _reduction.check(reduction, normalizer)
  per_class = _options.flag("per_class", per_class)
  assume_normalized = _options.flag("assume_normalized", assume_normalized)
  x, t, ax, mask = pair(logits, target, target_name, axis, where, INT_HINT, cast=False)
  model = masked(x, mask, -jnp.inf)
  target_ = masked(t, mask, -jnp.inf if spec.teacher_is_log else 0)
  if per_class:
    terms = _pointwise_terms(spec, model, target_, ax, normalize=not assume_normalized)
    full_mask = None if mask is None else jnp.broadcast_to(mask, terms.shape)
    return _reduction.reduce_elements(terms, full_mask, (), reduction, normalizer)
  if not assume_normalized:
    return reduce_rows(_row_losses.divergence_rows(model, target_, ax, spec), mask, ax, reduction, normalizer)
  # The accurate value, with the derivatives of the pointwise sum over the free inputs (of every order:
  # the value part is constant). A row whose pointwise sum is infinite keeps zero derivatives, as the
  # row losses give an infinite value.
  sg = jax.lax.stop_gradient
  value = _row_losses.divergence_rows(sg(model), sg(target_), ax, spec)
  free = jnp.sum(_pointwise_terms(spec, model, target_, ax, normalize=False), axis=ax)
  value = value + jnp.where(jnp.isinf(sg(free)), 0, free - sg(free))
  return reduce_rows(value, mask, ax, reduction, normalizer)


_OPTIONS = """per_class: return the ``[..., num_classes]`` per-class terms of the
      pointwise form ({terms}; torch's ``kl_div(reduction="none")``, TRL's
      ``reduction="none"``) instead of one value per row. ``reduction`` then
      reduces every element: ``"mean"`` divides by the number of unmasked
      elements (torch's ``kl_div(reduction="mean")``), ``"batchmean"`` by the
      size of the leading axis (torch's ``"batchmean"``). The row value is the
      sum of the terms up to rounding: for a KL near 0 prefer the row value.
    assume_normalized: the caller guarantees normalised inputs (``logits`` and
      a log target are log-probabilities; a probability target sums to 1).
      The value is unchanged; derivatives become those of the pointwise sum
      w.r.t. the free inputs ({free}), as torch, optax and Liger-Kernel
      compute them, instead of those of the re-normalised form
      ({renormalised}). With ``per_class``, the terms are taken on the inputs
      as they are."""


_KL_NUMERICS = """
  Numerics:
    Summed as non-negative terms ``p (expm1(d) - d)`` with ``d = log q - log p``
    (plus ``q`` for classes where ``p = 0``), so the result is never negative and
    a KL of 5e-9 between nearly equal distributions over 32768 classes keeps a
    relative error below 1e-4 in float32, where ``Σ p (log p - log q)`` is off
    by more than 100%. ``p = 0`` contributes 0 against any logit, ``-inf``
    included, with finite derivatives; target mass on a ``-inf`` logit gives
    ``+inf``.
"""


def kl_divergence(
    logits: ArrayLike,
    target_probs: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
    normalizer: ArrayLike | None = None,
    per_class: bool = False,
    assume_normalized: bool = False,
) -> jax.Array:
  r"""KL(p ‖ q) of the target probabilities from softmax(``logits``).

  .. math:: \mathrm{KL}(p \,\|\, q) = \sum_c p_c \log \frac{p_c}{q_c}, \qquad q = \mathrm{softmax}(z)

  The usual distillation/"forward" KL: the target ``p`` comes first inside
  the divergence but second in the argument list, as in ``optax.kl_divergence``
  and ``torch.nn.functional.kl_div``.

  Args:
    logits: model logits ``z``, ``[..., num_classes]``.
    target_probs: target probabilities ``p`` (normalised), same shape.
    axis: the class axis.
    where: optional boolean mask broadcastable to ``logits.shape``; masked
      classes are left out of both distributions.
    reduction: ``"none"`` (default), ``"sum"``, ``"mean"`` (over unmasked
      rows) or ``"batchmean"`` (sum / leading-axis size, torch's ``kl_div``).
    normalizer: optional scalar the means divide by instead (micro-batching).
    {options}

  Returns:
    ``[...]`` per-example divergences (``logits.shape`` with ``per_class``; a
    scalar if reduced), float32 (float64 for float64 input).
  {numerics}
    ``∂/∂p_c`` at ``p_c = 0`` (one-sided ``-inf``) is taken as 0.

  Examples:
    The NumPy example of the note jaxdiv started from, KL([0.1, 0.9] ‖ [0.2, 0.8]):

    >>> import jax.numpy as jnp, jaxdiv
    >>> kl = jaxdiv.kl_divergence(jnp.log(jnp.array([0.2, 0.8])), jnp.array([0.1, 0.9]))
    >>> print(f"{kl:.4f}")
    0.0367
  """
  spec = _core.DivSpec("forward_kl", teacher_is_log=False)
  return _divergence(spec, logits, target_probs, "target_probs", axis, where, reduction, normalizer,
                     per_class, assume_normalized)


def kl_divergence_with_log_targets(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
    normalizer: ArrayLike | None = None,
    per_class: bool = False,
    assume_normalized: bool = False,
) -> jax.Array:
  r"""KL(p ‖ q) with the target given in log space.

  .. math:: \mathrm{KL}(p \,\|\, q) = \sum_c p_c (\log p_c - \log q_c),
     \quad p = \mathrm{softmax}(t),\ q = \mathrm{softmax}(z)

  Args:
    logits: model (student) logits ``z``, ``[..., num_classes]``.
    target_logits: target (teacher) logits or log-probabilities ``t``,
      normalised here; same shape. ``-inf`` marks a class of probability 0.
    axis: the class axis.
    where: optional boolean mask broadcastable to ``logits.shape``.
    reduction: ``"none"`` (default), ``"sum"``, ``"mean"`` (over unmasked
      rows) or ``"batchmean"`` (sum / leading-axis size, torch's ``kl_div``).
    normalizer: optional scalar the means divide by instead (micro-batching).
    {options}

  Returns:
    ``[...]`` per-example divergences (``logits.shape`` with ``per_class``; a
    scalar if reduced), float32 (float64 for float64 input).
  {numerics}
  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> teacher = jnp.array([2.0, 0.0, -jnp.inf])   # one-hot-ish, one class impossible
    >>> student = jnp.array([1.0, 1.0, 0.0])
    >>> print(f"{jaxdiv.kl_divergence_with_log_targets(student, teacher):.6f}")
    0.496661
  """
  spec = _core.DivSpec("forward_kl")
  return _divergence(spec, logits, target_logits, "target_logits", axis, where, reduction, normalizer,
                     per_class, assume_normalized)


def reverse_kl_divergence(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
    normalizer: ArrayLike | None = None,
    per_class: bool = False,
    assume_normalized: bool = False,
) -> jax.Array:
  r"""Reverse KL(q ‖ p) of softmax(``logits``) from the target.

  .. math:: \mathrm{KL}(q \,\|\, p) = \sum_c q_c (\log q_c - \log p_c),
     \quad q = \mathrm{softmax}(z),\ p = \mathrm{softmax}(t)

  The mode-seeking KL used in on-policy distillation and RL fine-tuning.

  Args:
    logits: model logits ``z``, ``[..., num_classes]``.
    target_logits: target logits or log-probabilities ``t``, same shape.
    axis: the class axis.
    where: optional boolean mask broadcastable to ``logits.shape``.
    reduction: ``"none"`` (default), ``"sum"``, ``"mean"`` (over unmasked
      rows) or ``"batchmean"`` (sum / leading-axis size, torch's ``kl_div``).
    normalizer: optional scalar the means divide by instead (micro-batching).
    {options}

  Returns:
    ``[...]`` per-example divergences (``logits.shape`` with ``per_class``; a
    scalar if reduced), float32 (float64 for float64 input).
  {numerics}
  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> print(f"{jaxdiv.reverse_kl_divergence(jnp.array([1.0, 1.0, 0.0]), jnp.array([2.0, 0.0, 0.0])):.6f}")
    0.377550
  """
  spec = _core.DivSpec("reverse_kl")
  return _divergence(spec, logits, target_logits, "target_logits", axis, where, reduction, normalizer,
                     per_class, assume_normalized)


def jensen_shannon_divergence(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    beta: float = 0.5,
    axis: int = -1,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
    normalizer: ArrayLike | None = None,
    per_class: bool = False,
    assume_normalized: bool = False,
) -> jax.Array:
  r"""Generalised Jensen–Shannon divergence JSD_β in the GKD convention.

  With ``P`` the target (teacher), ``Q`` the model (student) and
  ``M = β P + (1 - β) Q``:

  .. math:: \mathrm{JSD}_\beta = \beta\,\mathrm{KL}(P \,\|\, M) + (1 - \beta)\,\mathrm{KL}(Q \,\|\, M)

  At ``β = 1/2`` this is the symmetric JSD, bounded by ``log 2``.

  End points: JSD_β → 0 as β → 0 or 1, while ``JSD_β / β → KL(P‖Q)`` and
  ``JSD_β / (1 - β) → KL(Q‖P)``. As in TRL's ``generalized_jsd_loss`` and
  Liger-Kernel's JSD, ``beta=0`` returns the forward ``KL(P‖Q)`` and ``beta=1``
  the reverse ``KL(Q‖P)`` (those limits), so the function is continuous on the
  open interval (0, 1) and jumps to the normalised limits at its ends.

  Args:
    logits: model (student) logits, ``[..., num_classes]``.
    target_logits: target (teacher) logits or log-probabilities, same shape.
    beta: the teacher's weight in the mixture, a Python float in ``[0, 1]``.
    axis: the class axis.
    where: optional boolean mask broadcastable to ``logits.shape``.
    reduction: ``"none"`` (default), ``"sum"``, ``"mean"`` (over unmasked
      rows) or ``"batchmean"`` (sum / leading-axis size, torch's ``kl_div``).
    normalizer: optional scalar the means divide by instead (micro-batching).
    {options}

  Returns:
    ``[...]`` per-example divergences (``logits.shape`` with ``per_class``; a
    scalar if reduced), float32 (float64 for float64 input).

  Numerics:
    Both KL terms use the non-negative accurate form of
    :func:`kl_divergence_with_log_targets`; the mixture ``log M`` is formed in
    log space, finite with zero derivative where ``P = Q = 0``.

  Raises:
    TypeError: if ``beta`` is not a concrete number (it selects the formula).
    ValueError: if ``beta`` is outside ``[0, 1]``.

  References:
    Agarwal et al., "On-Policy Distillation of Language Models: Learning from
    Self-Generated Mistakes" (GKD), arXiv:2306.13649.

  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> jaxdiv.jensen_shannon_divergence(jnp.array([0.0, -jnp.inf]), jnp.array([-jnp.inf, 0.0]))
    Array(0.6931472, dtype=float32)
  """
  kind, beta = _options.divergence("jsd", beta)
  spec = _core.DivSpec(kind, beta)
  return _divergence(spec, logits, target_logits, "target_logits", axis, where, reduction, normalizer,
                     per_class, assume_normalized)


_FORWARD = ("``p_c (log p_c - log q_c)``", "``∂/∂logits_c = -p_c``", "``q_c - p_c``")
_FORMS = {
    kl_divergence: _FORWARD,
    kl_divergence_with_log_targets: _FORWARD,
    reverse_kl_divergence: (
        "``q_c (log q_c - log p_c)``", "``∂/∂logits_c = q_c (log q_c - log p_c + 1)``",
        "``q_c (log q_c - log p_c - KL)``"),
    jensen_shannon_divergence: (
        "``β p_c log(p_c / m_c) + (1 - β) q_c log(q_c / m_c)``, ``m = β p + (1 - β) q``",
        "``∂/∂logits_c = (1 - β) q_c log(q_c / m_c)``", "that term less ``q_c`` times its row sum"),
}
for _f, (_terms, _free, _renormalised) in _FORMS.items():
  _doc = (_f.__doc__ or "").replace("{numerics}", _KL_NUMERICS.strip())
  _options_doc = _OPTIONS.format(terms=_terms, free=_free, renormalised=_renormalised)
  _f.__doc__ = _doc.replace("{options}", _options_doc)
del _f, _doc, _options_doc, _terms, _free, _renormalised
