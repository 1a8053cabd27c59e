"""Per-token KL estimators for RL fine-tuning (PPO/GRPO-style KL penalties)."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import _kernels, _reduction
from jaxdiv import _validation as v
from jaxdiv._reduction import Reduction


def kl_estimator(
    log_probs: ArrayLike,
    ref_log_probs: ArrayLike,
    *,
    kind: Literal["k1", "k2", "k3"] = "k3",
    axis: int | tuple[int, ...] | None = None,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
    normalizer: ArrayLike | None = None,
) -> jax.Array:
  r"""Schulman's sample estimators of KL(policy ‖ reference) from sampled tokens' log-probabilities.

  For a token ``x`` sampled from the policy ``π`` with
  ``log r = log π_ref(x) - log π(x)``:

  * ``"k1"``: :math:`-\log r` — unbiased, high variance, can be negative;
  * ``"k2"``: :math:`\tfrac12 (\log r)^2` — biased, low variance, ``≥ 0``;
  * ``"k3"``: :math:`(r - 1) - \log r` — unbiased, low variance, ``≥ 0``
    (the estimator GRPO uses).

  Each averages (over ``x ~ π``) to ``KL(π ‖ π_ref)`` (``k2`` only to second
  order). When the full logits of both models are at hand, the exact
  per-token KL needs no estimator: it is
  ``jaxdiv.reverse_kl_divergence(policy_logits, ref_logits)`` (KL of the
  model from the target, i.e. ``KL(π ‖ π_ref)``) or, for the other direction,
  :func:`jaxdiv.kl_divergence_with_log_targets`.

  Args:
    log_probs: ``log π(x)`` of the sampled tokens under the policy, any shape
      (e.g. ``[batch, seq]``).
    ref_log_probs: ``log π_ref(x)`` under the reference model, same shape.
    kind: ``"k1"``, ``"k2"`` or ``"k3"``.
    axis: None (per token), or axes to sum over (e.g. ``-1`` for a per-sequence
      KL).
    where: optional boolean mask broadcastable to ``log_probs.shape`` (padding,
      prompt tokens); masked tokens give 0 with zero gradient, whatever they hold.
    reduction: ``"none"`` (default), ``"sum"``, ``"mean"`` (over unmasked
      tokens, or sequences with ``axis``) or ``"batchmean"`` (sum / size of
      the leading axis); see :mod:`jaxdiv._reduction`.
    normalizer: optional scalar the means divide by instead (micro-batching).

  Returns:
    ``log_probs.shape`` without ``axis`` (a scalar if reduced), float32
    (float64 for float64 input).

  Numerics:
    ``k3`` is evaluated as ``expm1(log r) - log r`` through jaxdiv's KL kernel,
    with a series for ``|log r| < 1/4``: full relative precision for nearly
    equal models (``log r = 1e-4`` gives ``5e-9``, where ``(r - 1) - log r``
    in float32 cancels to 0 or to pure rounding), and no overflow for
    ``log r → -∞`` (``k3 ≈ -1 - log r``). For large positive ``log r`` the value
    is ``≈ e^{log r}``, which is genuinely larger than the float range once
    ``log r > 88.7`` in float32 (709.8 in float64): the result is then
    ``+inf`` and its gradient ``r - 1`` too. That means the sampled token is
    ``e^88`` times likelier under the reference than under the policy that
    sampled it (stale or off-policy samples); mask such tokens or clip
    ``log r`` before calling if they occur. ``log π = -inf`` (an impossible
    sample) gives ``k3 = +inf`` and ``k1 = -inf`` with finite gradients.

  References:
    J. Schulman, "Approximating KL Divergence" (2020),
    http://joschu.net/blog/kl-approx.html; Shao et al., "DeepSeekMath" (GRPO),
    arXiv:2402.03300.

  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> log_probs = jnp.log(jnp.array([[0.5, 0.2, 0.9]]))
    >>> ref_log_probs = jnp.log(jnp.array([[0.4, 0.3, 0.9]]))
    >>> print(jaxdiv.kl_estimator(log_probs, ref_log_probs).round(6))
    [[0.023144 0.094535 0.      ]]
    >>> print(f"{jaxdiv.kl_estimator(log_probs, ref_log_probs, reduction='mean'):.5f}")
    0.03923
  """
  if kind not in ("k1", "k2", "k3"):
    raise ValueError(f"kind must be 'k1', 'k2' or 'k3'; got {kind!r}.")
  _reduction.check(reduction, normalizer)
  lp = v.as_floating("log_probs", log_probs)
  ref = v.as_floating("ref_log_probs", ref_log_probs)
  v.same_shape("ref_log_probs", ref, "log_probs", lp)
  axes = v.reduce_axes(axis, lp.ndim, "log_probs")
  mask = v.mask(where, lp.shape)
  lp, ref = v.to_compute(lp, ref)
  if mask is not None:  # zero masked entries before any arithmetic: no NaN into gradients
    lp, ref = jnp.where(mask, lp, 0), jnp.where(mask, ref, 0)
  log_r = ref - lp
  if kind == "k1":
    terms = -log_r
  elif kind == "k2":
    terms = 0.5 * jnp.square(log_r)
  else:
    # expm1(log r) - log r is the KL kernel's term with p = 1 (target log p = 0)
    # and log q = log r; its derivative r - 1 comes from the kernel's JVP.
    pos_inf = log_r == jnp.inf
    safe = jnp.where(pos_inf, jnp.zeros_like(log_r), log_r)
    terms = jnp.where(pos_inf, jnp.inf, _kernels.kl_terms(jnp.zeros_like(safe), safe, True))
  return _reduction.reduce_elements(terms, mask, axes, reduction, normalizer)
