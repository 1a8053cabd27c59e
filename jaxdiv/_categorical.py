"""Cross-entropy, KL divergence, entropy and JSD between categorical distributions.

Every function takes the model first (``logits``, unnormalised; log-probabilities
are valid logits) and the target second, reduces over the class ``axis`` and
returns one value per example: an array of ``logits.shape`` without ``axis``,
in float32 (float64 if an input is float64), whatever the input dtype.

Shared numerical contract (tested in ``tests/test_categorical.py``):

* ``0 · log 0 = 0``: a class of target probability 0 (or log-probability
  ``-inf``) contributes exactly 0, against any model logit including ``-inf``,
  with finite derivatives of every order w.r.t. both arguments.
* ``where`` masks classes: masked classes leave both normalisations and the sum,
  and NaN/inf in masked entries never reaches values or gradients. A row with
  every class masked gives 0 with zero gradient. Mask whole rows with
  ``where[..., None]``.
* Logits of magnitude up to ``1e30`` keep float32 relative accuracy; a truly
  infinite answer (target mass on a ``-inf`` logit) is ``+inf``, never NaN.
* bfloat16/float16 inputs are accumulated and returned in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import _kernels
from jaxdiv import _validation as v

_INT_HINT = "For integer class labels use jaxdiv.cross_entropy."
_PROB_HINT = "For probability targets use jaxdiv.soft_cross_entropy."


def _model(logits: ArrayLike, axis: int, where: ArrayLike | None):
  """Validated model logits in the compute dtype, masked with -inf."""
  x = v.as_floating("logits", logits)
  ax = v.class_axis(axis, x.ndim)
  mask = v.mask(where, x.shape)
  return x, ax, mask


def _masked(x: jax.Array, mask: jax.Array | None, fill: float) -> jax.Array:
  return x if mask is None else jnp.where(mask, x, jnp.asarray(fill, x.dtype))


def _log_probs(x: jax.Array, ax: int, mask: jax.Array | None) -> jax.Array:
  return _kernels.log_softmax(_masked(x, mask, -jnp.inf), ax)[0]


def _pair(logits, target, target_name, axis, where, hint):
  """Validated (model, target) pair of equal shape, both in the compute dtype."""
  x, ax, mask = _model(logits, axis, where)
  t = v.as_floating(target_name, target, hint)
  v.same_shape(target_name, t, "logits", x)
  x, t = v.to_compute(x, t)
  return x, t, ax, mask


def cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""Cross-entropy of softmax(``logits``) against integer class ``labels``.

  .. math:: \ell = -\log \mathrm{softmax}(z)_y = \mathrm{logsumexp}(z) - z_y

  Args:
    logits: model logits, ``[..., num_classes]`` (the class axis is ``axis``).
    labels: integer class indices, ``logits.shape`` without ``axis``.
    axis: the class axis of ``logits``.
    where: optional boolean mask broadcastable to ``logits.shape``; masked
      classes are excluded from the softmax.

  Returns:
    ``[...]`` per-example losses, float32 (float64 for float64 logits).

  Numerics:
    Computed as ``log Σ exp(z - max) - (z_y - max)``, so ties at ``|z| = 1e30``
    give ``log 2``, not 0. A label on a ``-inf`` (or masked) logit gives
    ``+inf``; a row with every class masked gives 0 with zero gradient.
    A label outside ``[0, num_classes)`` never selects another class: its loss
    is NaN, so any mean that includes it is NaN, and its gradient is zero, so
    it does not corrupt parameters. :func:`jaxdiv.check_labels` is the opt-in
    check that raises instead.

  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> logits = jnp.array([[2.0, 1.0, 0.1], [0.5, 2.5, -1.0]])
    >>> jaxdiv.cross_entropy(logits, jnp.array([0, 1]))
    Array([0.41702995, 0.14185414], dtype=float32)
  """
  x, ax, mask = _model(logits, axis, where)
  y = v.as_integer("labels", labels, _PROB_HINT)
  v.label_shape(y, x, ax)
  (x,) = v.to_compute(x)
  log_probs = _log_probs(x, ax, mask)
  num_classes = x.shape[ax]
  in_range = (y >= 0) & (y < num_classes)
  index = jnp.expand_dims(jnp.where(in_range, y, 0), ax)
  picked = jnp.squeeze(jnp.take_along_axis(log_probs, index, axis=ax), ax)
  loss = jnp.where(in_range, -picked, jnp.nan)
  if mask is not None:
    loss = jnp.where(jnp.any(mask, axis=ax), loss, 0)
  return loss


def soft_cross_entropy(
    logits: ArrayLike,
    target_probs: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""Cross-entropy H(p, q) of softmax(``logits``) against target probabilities.

  .. math:: H(p, q) = -\sum_c p_c \log q_c, \qquad q = \mathrm{softmax}(z)

  Args:
    logits: model logits, ``[..., num_classes]``.
    target_probs: target probabilities ``p``, same shape as ``logits`` (rows
      need not sum to one; label-smoothed or partial targets are fine).
    axis: the class axis.
    where: optional boolean mask broadcastable to ``logits.shape``.

  Returns:
    ``[...]`` per-example cross-entropies, float32 (float64 for float64 input).

  Numerics:
    ``p_c = 0`` contributes exactly 0 even where ``z_c = -inf``; derivatives
    w.r.t. both arguments stay finite there (``∂/∂p_c`` is taken as 0 at the
    points ``p_c = 0, q_c = 0``, where the product is 0 along ``p_c = 0``).
    Target mass on a ``-inf`` logit gives ``+inf``.

  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> logits = jnp.array([0.0, -jnp.inf, 1.0])
    >>> jaxdiv.soft_cross_entropy(logits, jnp.array([0.5, 0.0, 0.5]))
    Array(0.8132616, dtype=float32)
  """
  x, p, ax, mask = _pair(logits, target_probs, "target_probs", axis, where, _INT_HINT)
  log_q = _log_probs(x, ax, mask)
  return jnp.sum(_kernels.mul_safe(_masked(p, mask, 0), -log_q), axis=ax)


def soft_cross_entropy_with_log_targets(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""Cross-entropy H(p, q) with the target given in log space.

  .. math:: H(p, q) = -\sum_c p_c \log q_c, \quad p = \mathrm{softmax}(t),\ q = \mathrm{softmax}(z)

  Args:
    logits: model logits ``z``, ``[..., num_classes]``.
    target_logits: target logits or log-probabilities ``t`` (normalised here),
      same shape as ``logits``; ``-inf`` marks a class of probability 0.
    axis: the class axis.
    where: optional boolean mask broadcastable to ``logits.shape``, applied to
      both distributions.

  Returns:
    ``[...]`` per-example cross-entropies, float32 (float64 for float64 input).

  Numerics:
    As :func:`soft_cross_entropy`; derivatives w.r.t. ``target_logits`` are
    finite everywhere the value is.

  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> jaxdiv.soft_cross_entropy_with_log_targets(jnp.zeros(4), jnp.array([0.0, 0.0, -jnp.inf, -jnp.inf]))
    Array(1.3862944, dtype=float32)
  """
  x, t, ax, mask = _pair(logits, target_logits, "target_logits", axis, where, _INT_HINT)
  log_q = _log_probs(x, ax, mask)
  log_p = _log_probs(t, ax, mask)
  return jnp.sum(_kernels.mul_safe(jnp.exp(log_p), -log_q), axis=ax)


def _kl(x, target, ax, mask, target_is_log):
  model = _masked(x, mask, -jnp.inf)
  target = _masked(target, mask, -jnp.inf if target_is_log else 0)
  return _kernels.kl_rows(target, model, ax, target_is_log)


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

  Returns:
    ``[...]`` per-example divergences, float32 (float64 for float64 input).
  {numerics}
    ``∂/∂p_c`` at ``p_c = 0`` (one-sided ``-inf``) is taken as 0.

  Examples:
    The NumPy example of the note jaxdiv started from, KL([0.1, 0.9] ‖ [0.2, 0.8]):

    >>> import jax.numpy as jnp, jaxdiv
    >>> kl = jaxdiv.kl_divergence(jnp.log(jnp.array([0.2, 0.8])), jnp.array([0.1, 0.9]))
    >>> print(f"{kl:.4f}")
    0.0367
  """
  x, p, ax, mask = _pair(logits, target_probs, "target_probs", axis, where, _INT_HINT)
  return _kl(x, p, ax, mask, target_is_log=False)


def kl_divergence_with_log_targets(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
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

  Returns:
    ``[...]`` per-example divergences, float32 (float64 for float64 input).
  {numerics}
  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> teacher = jnp.array([2.0, 0.0, -jnp.inf])   # one-hot-ish, one class impossible
    >>> student = jnp.array([1.0, 1.0, 0.0])
    >>> jaxdiv.kl_divergence_with_log_targets(student, teacher)
    Array(0.6572843, dtype=float32)
  """
  x, t, ax, mask = _pair(logits, target_logits, "target_logits", axis, where, _INT_HINT)
  return _kl(x, t, ax, mask, target_is_log=True)


def reverse_kl_divergence(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
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

  Returns:
    ``[...]`` per-example divergences, float32 (float64 for float64 input).
  {numerics}
  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> jaxdiv.reverse_kl_divergence(jnp.array([1.0, 1.0, 0.0]), jnp.array([2.0, 0.0, 0.0]))
    Array(0.22001195, dtype=float32)
  """
  x, t, ax, mask = _pair(logits, target_logits, "target_logits", axis, where, _INT_HINT)
  return _kl(t, x, ax, mask, target_is_log=True)


def jensen_shannon_divergence(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    beta: float = 0.5,
    axis: int = -1,
    where: ArrayLike | None = None,
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

  Returns:
    ``[...]`` per-example divergences, float32 (float64 for float64 input).

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
  try:
    beta = float(beta)
  except (TypeError, jax.errors.ConcretizationTypeError) as e:
    raise TypeError(f"beta must be a concrete Python float in [0, 1]; got {beta!r}.") from e
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"beta must lie in [0, 1]; got {beta}.")
  x, t, ax, mask = _pair(logits, target_logits, "target_logits", axis, where, _INT_HINT)
  log_q = _log_probs(x, ax, mask)
  log_p = _log_probs(t, ax, mask)

  def kl(a, b):
    return jnp.sum(_kernels.kl_terms(a, b, True), axis=ax)

  if beta == 0.0:
    return kl(log_p, log_q)
  if beta == 1.0:
    return kl(log_q, log_p)
  log_m = _kernels.log_mix(log_p, log_q, beta)
  return beta * kl(log_p, log_m) + (1 - beta) * kl(log_q, log_m)


def entropy(
    logits: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""Shannon entropy of softmax(``logits``), in nats.

  .. math:: H(q) = -\sum_c q_c \log q_c, \qquad q = \mathrm{softmax}(z)

  Args:
    logits: logits or log-probabilities, ``[..., num_classes]``.
    axis: the class axis.
    where: optional boolean mask broadcastable to ``logits.shape``.

  Returns:
    ``[...]`` per-example entropies, float32 (float64 for float64 input).

  Numerics:
    ``-inf`` logits contribute 0 with zero derivative; a fully masked row gives 0.

  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> jaxdiv.entropy(jnp.array([0.0, 0.0, -jnp.inf, 0.0]))
    Array(1.0986123, dtype=float32)
  """
  x, ax, mask = _model(logits, axis, where)
  (x,) = v.to_compute(x)
  log_q = _log_probs(x, ax, mask)
  return jnp.sum(_kernels.mul_safe(jnp.exp(log_q), -log_q), axis=ax)


for _f in (kl_divergence, kl_divergence_with_log_targets, reverse_kl_divergence):
  _f.__doc__ = _f.__doc__.replace("{numerics}", _KL_NUMERICS.strip())
del _f
