"""Knowledge distillation: temperature, Hinton's T² factor, forward/reverse KL, JSD_β, top-k teachers.

Built from the categorical losses (:func:`jaxdiv.kl_divergence_with_log_targets`,
:func:`jaxdiv.reverse_kl_divergence`, :func:`jaxdiv.jensen_shannon_divergence`,
:func:`jaxdiv.cross_entropy`), so every numerical promise of those holds here;
this module only adds the distillation conventions.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import _categorical, _divergences, _kernels, _options, _reduction
from jaxdiv import _validation as v
from jaxdiv._categorical_inputs import INT_HINT, masked
from jaxdiv._reduction import Reduction

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]


def distillation_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    divergence: Divergence = "forward_kl",
    beta: float = 0.5,
    labels: ArrayLike | None = None,
    alpha: float = 0.5,
    ignore_index: int | None = None,
    scale_by_temperature_squared: bool = True,
    teacher_gradient: bool = False,
    axis: int = -1,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
    normalizer: ArrayLike | None = None,
) -> jax.Array:
  r"""Distillation loss between student and teacher logits, optionally mixed with hard-label CE.

  With ``T`` the temperature, ``q_T = softmax(z/T)`` the student and
  ``p_T = softmax(t/T)`` the teacher, per example:

  .. math:: \ell = \alpha\,\mathrm{CE}(z, y) + (1 - \alpha)\,s\,D(p_T, q_T),
     \qquad s = T^2 \text{ if } \texttt{scale\_by\_temperature\_squared} \text{ else } 1

  where ``D`` is ``KL(p_T ‖ q_T)`` (``"forward_kl"``, Hinton's choice),
  ``KL(q_T ‖ p_T)`` (``"reverse_kl"``, mode-seeking) or ``JSD_β(p_T, q_T)``
  (``"jsd"``, GKD's generalised JSD with teacher weight ``β`` in the mixture;
  ``β = 0`` gives the forward and ``β = 1`` the reverse KL, as
  :func:`jaxdiv.jensen_shannon_divergence`). Without ``labels`` the loss is
  ``s·D`` and ``alpha`` is not used. The hard-label CE uses the student logits
  at temperature 1.

  **The T² convention** (Hinton et al. 2015, §2): the gradient of
  ``KL(p_T ‖ q_T)`` w.r.t. the student logits is ``(q_T - p_T)/T``, whose size
  falls like ``1/T²`` for large ``T``; multiplying by ``T²`` keeps the soft
  term's gradient on the scale of the hard-label term when ``T`` is changed.
  ``scale_by_temperature_squared=True`` (the default) applies it; optax,
  torch and Liger-Kernel do not, so pass ``False`` to compare with them.

  Args:
    student_logits: ``[..., num_classes]`` student (model) logits ``z``.
    teacher_logits: teacher logits or log-probabilities ``t``, same shape.
    temperature: ``T > 0``, a Python float; both sides are divided by it.
    divergence: ``"forward_kl"``, ``"reverse_kl"`` or ``"jsd"``.
    beta: the teacher's weight in the JSD mixture, in ``[0, 1]`` (``"jsd"`` only).
    labels: optional integer labels, ``student_logits.shape`` without ``axis``.
    alpha: the weight of the hard-label CE in ``[0, 1]`` (with ``labels``).
    ignore_index: with ``labels``, a label value whose examples give 0 (both
      terms) with zero gradient and are not counted by ``"mean"``.
    scale_by_temperature_squared: multiply the divergence by ``T²`` (above).
    teacher_gradient: if False (default) the teacher is a constant
      (``stop_gradient``); if True gradients also flow into ``teacher_logits``
      (learned teachers, mutual learning).
    axis: the class axis.
    where: optional boolean mask broadcastable to the logits shape; masked
      classes leave both distributions, ``where[..., None]`` masks examples.
    reduction: ``"none"`` (default), ``"sum"``, ``"mean"`` (over unmasked,
      non-ignored examples) or ``"batchmean"``; see :mod:`jaxdiv._reduction`.
    normalizer: optional scalar the means divide by instead (micro-batching).

  Returns:
    ``[...]`` per-example losses (a scalar if reduced), float32 (float64 for
    float64 input).

  Numerics:
    As the underlying divergences: non-negative, accurate for nearly equal
    distributions, 0·log 0 = 0 against ``-inf`` logits, finite derivatives
    w.r.t. both sides wherever the value is finite (``-inf/T`` stays ``-inf``).

  Raises:
    ValueError: for an unknown ``divergence``, ``temperature <= 0``, or
      ``alpha``/``beta`` outside ``[0, 1]``.

  References:
    Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network",
    arXiv:1503.02531. Agarwal et al., "On-Policy Distillation of Language
    Models" (GKD), arXiv:2306.13649.

  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> student = jnp.array([[1.0, 0.5, -1.0]])
    >>> teacher = jnp.array([[2.0, 0.0, -2.0]])
    >>> loss = jaxdiv.distillation_loss(student, teacher, temperature=2.0, labels=jnp.array([0]), alpha=0.1)
    >>> print(f"{loss[0]:.6f}")
    0.353359
  """
  kind, beta = _options.divergence(divergence, beta)
  t_value = _options.temperature(temperature)
  alpha = _options.scalar("alpha", alpha, 0.0, 1.0)
  ignore_index = _options.ignore_index(ignore_index)
  _reduction.check(reduction, normalizer)
  z = v.as_floating("student_logits", student_logits)
  t = v.as_floating("teacher_logits", teacher_logits, INT_HINT)
  v.same_shape("teacher_logits", t, "student_logits", z)
  ax = v.class_axis(axis, z.ndim, "student_logits")
  mask = v.mask(where, z.shape)
  z, t = v.to_compute(z, t)
  if not teacher_gradient:
    t = jax.lax.stop_gradient(t)
  kw = {"axis": ax, "where": mask}
  zs, ts = z / t_value, t / t_value
  if kind == "forward_kl":
    loss = _divergences.kl_divergence_with_log_targets(zs, ts, **kw)
  elif kind == "reverse_kl":
    loss = _divergences.reverse_kl_divergence(zs, ts, **kw)
  else:
    loss = _divergences.jensen_shannon_divergence(zs, ts, beta=beta, **kw)
  if scale_by_temperature_squared:
    loss = (t_value * t_value) * loss
  valid = jnp.ones(loss.shape, bool) if mask is None else jnp.any(mask, axis=ax)
  if labels is not None:
    y = v.as_integer("labels", labels)
    hard = _categorical.cross_entropy(z, y, ignore_index=ignore_index, **kw)
    # A zero weight on an infinite term (a label on a masked class, alpha = 0) is 0, not NaN.
    loss = _kernels.mul_safe(jnp.asarray(alpha, loss.dtype), hard) + _kernels.mul_safe(
        jnp.asarray(1 - alpha, loss.dtype), loss)
    if ignore_index is not None:
      valid = valid & (v.wide_labels(y) != ignore_index)
  loss = jnp.where(valid, loss, 0)
  return _reduction.reduce(loss, reduction, weight=valid.astype(loss.dtype), normalizer=normalizer)


def _log1mexp(a: jax.Array) -> jax.Array:
  """``log(1 - e^a)`` for ``a <= 0`` accurately (Mächler 2012); ``-inf`` for ``a >= 0``."""
  a = jnp.minimum(a, 0)
  near = a > -jnp.log(2.0).astype(a.dtype)
  safe_near = jnp.where(near, a, -1)
  safe_far = jnp.where(near, -1, a)
  return jnp.where(near, jnp.log(-jnp.expm1(safe_near)), jnp.log1p(-jnp.exp(safe_far)))


def top_k_kl_divergence(
    logits: ArrayLike,
    teacher_top_k_ids: ArrayLike,
    teacher_top_k_log_probs: ArrayLike,
    *,
    tail: Literal["renormalize", "rest_bucket"] = "renormalize",
    axis: int = -1,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
    normalizer: ArrayLike | None = None,
) -> jax.Array:
  r"""Forward KL(teacher ‖ student) from a sparse teacher: its top-k ids and log-probabilities.

  Served or cached teachers often keep only the ``k`` most likely tokens. With
  ``S`` the set of those ids, ``p`` the teacher and ``q = softmax(logits)``:

  * ``tail="renormalize"``: KL between both distributions conditioned on
    ``S``: :math:`\sum_{i \in S} \bar p_i \log(\bar p_i / \bar q_i)` with
    :math:`\bar p_i = p_i / \sum_S p` and :math:`\bar q_i = q_i / \sum_S q`.
  * ``tail="rest_bucket"``: KL over ``k + 1`` outcomes, the ``k`` ids and one
    "rest" bucket holding ``1 - Σ_S p`` for the teacher and ``1 - Σ_S q`` (the
    student's mass on every other class) for the student.

  With ``k = num_classes`` (``S`` every class) both equal
  :func:`jaxdiv.kl_divergence_with_log_targets` of the full distributions.

  Args:
    logits: student logits, ``[..., num_classes]`` (class axis ``axis``).
    teacher_top_k_ids: integer ids ``[..., k]`` (the class axis replaced by
      ``k``), distinct within an example (not checked).
    teacher_top_k_log_probs: the teacher's log-probabilities of those ids
      under its full distribution, same shape as the ids (``Σ exp <= 1``).
    tail: ``"renormalize"`` or ``"rest_bucket"``, as above.
    axis: the class axis of ``logits`` (and the ``k`` axis of the teacher).
    where: optional boolean mask broadcastable to ``logits.shape``: masked
      classes leave the student distribution (and the rest bucket);
      ``where[..., None]`` masks examples.
    reduction: ``"none"`` (default), ``"sum"``, ``"mean"`` (over unmasked
      examples) or ``"batchmean"``; see :mod:`jaxdiv._reduction`.
    normalizer: optional scalar the means divide by instead.

  Returns:
    ``[...]`` per-example divergences (a scalar if reduced), float32 (float64
    for float64 input).

  Numerics:
    The student's rest mass is a logsumexp over the classes outside ``S``
    (never ``1 - Σ q``, which cancels when the top-k hold nearly all mass);
    the teacher's is ``log(1 - Σ_S p)`` by ``log1mexp``, and 0 when the ids
    cover every unmasked class (so rounding in the teacher's probabilities
    cannot make ``k = V`` infinite). Derivatives are w.r.t. ``logits``; the
    teacher inputs are constants. Teacher mass on a masked class gives
    ``+inf``.

  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> logits = jnp.array([2.0, 1.0, 0.0, -1.0])
    >>> ids, log_probs = jnp.array([0, 1]), jnp.log(jnp.array([0.6, 0.3]))
    >>> print(f"{jaxdiv.top_k_kl_divergence(logits, ids, log_probs, tail='rest_bucket'):.6f}")
    0.010918
  """
  _options.choice("tail", tail, ("renormalize", "rest_bucket"))
  _reduction.check(reduction, normalizer)
  x = v.as_floating("logits", logits)
  ax = v.class_axis(axis, x.ndim)
  ids = v.as_integer("teacher_top_k_ids", teacher_top_k_ids)
  lp = v.as_floating("teacher_top_k_log_probs", teacher_top_k_log_probs)
  batch = x.shape[:ax] + x.shape[ax + 1 :]
  if ids.ndim != x.ndim or ids.shape[:ax] + ids.shape[ax + 1 :] != batch:
    raise ValueError(
        f"teacher_top_k_ids must have the shape of logits with axis {ax} replaced by k, "
        f"{list(x.shape[:ax])} + [k] + {list(x.shape[ax + 1:])}; got {list(ids.shape)}."
    )
  if ids.shape[ax] > x.shape[ax]:
    raise ValueError(f"k = {ids.shape[ax]} top-k ids exceed num_classes = {x.shape[ax]}.")
  v.same_shape("teacher_top_k_log_probs", lp, "teacher_top_k_ids", ids)
  mask = v.mask(where, x.shape)
  x, lp = v.to_compute(x, lp)
  lp = jax.lax.stop_gradient(lp)
  x = jnp.moveaxis(masked(x, mask, -jnp.inf), ax, -1)
  ids, lp = jnp.moveaxis(ids, ax, -1), jnp.moveaxis(lp, ax, -1)
  num_classes = x.shape[-1]
  # Ids follow the label contract: compared in a wide type (no int8 wrap); an
  # out-of-range id makes its example NaN with zero gradient, never another class.
  wide = v.wide_labels(ids)
  bad_id = jnp.any((wide < 0) | (wide >= num_classes), axis=-1)
  ids = jnp.clip(wide, 0, num_classes - 1).astype(jnp.int32)
  student = jnp.take_along_axis(x, ids, axis=-1)
  teacher = lp
  if tail == "rest_bucket":
    flat_ids = ids.reshape(-1, ids.shape[-1])
    rows = jnp.arange(flat_ids.shape[0])[:, None]
    in_top = jnp.zeros((flat_ids.shape[0], num_classes), bool).at[rows, flat_ids].set(True).reshape(x.shape)
    _, shift, log_sum = _kernels.log_softmax(jnp.where(in_top, -jnp.inf, x), x.ndim - 1)
    student_rest = shift + log_sum
    _, t_shift, t_log_sum = _kernels.log_softmax(lp, lp.ndim - 1)
    teacher_rest = jnp.where(student_rest == -jnp.inf, -jnp.inf, _log1mexp(t_shift + t_log_sum))
    student = jnp.concatenate([student, student_rest], axis=-1)
    teacher = jnp.concatenate([teacher, teacher_rest], axis=-1)
  loss = _divergences.kl_divergence_with_log_targets(student, teacher)
  loss = jnp.where(bad_id, jnp.nan, loss)
  valid = jnp.ones(loss.shape, bool) if mask is None else jnp.any(jnp.moveaxis(mask, ax, -1), axis=-1)
  loss = jnp.where(valid, loss, 0)
  return _reduction.reduce(loss, reduction, weight=valid.astype(loss.dtype), normalizer=normalizer)
