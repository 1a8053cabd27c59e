"""Cross-entropies (integer labels, soft targets) and the entropy of categorical distributions.

The divergences (KL, reverse KL, JSD) are in :mod:`jaxdiv._divergences`.

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
* ``reduction`` (``"none"``, ``"sum"``, ``"mean"``, ``"batchmean"``) and
  ``normalizer`` go through the one helper in :mod:`jaxdiv._reduction`: a row
  counts towards ``"mean"`` if any of its classes is unmasked (and its label is
  not ``ignore_index``); an all-masked batch gives 0 with zero gradient.
"""

from __future__ import annotations

from typing import Literal, overload

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import _core, _kernels, _options, _reduction, _row_losses, _rows
from jaxdiv import _validation as v
from jaxdiv._categorical_inputs import INT_HINT, PROB_HINT, log_probs, masked, model, pair, reduce_rows
from jaxdiv._reduction import Reduction


def _log_softmax_lse(z: jax.Array, ax: int) -> tuple[jax.Array, jax.Array]:
  """Log-probabilities and the per-row logsumexp (``-inf`` for an empty row)."""
  log_q, shift, log_sum = _kernels.log_softmax(z, ax)
  return log_q, jnp.squeeze(shift + log_sum, ax)


@overload
def cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
    ignore_index: int | None = None,
    class_weights: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    smoothing: Literal["uniform", "t5x"] = "uniform",
    t5x_normalize: bool = False,
    z_loss: float = 0.0,
    soft_cap: float | None = None,
    weighting: Literal["example", "torch"] = "example",
    reduction: Reduction = "none",
    normalizer: ArrayLike | None = None,
    return_aux: Literal[False] = False,
) -> jax.Array: ...


@overload
def cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
    ignore_index: int | None = None,
    class_weights: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    smoothing: Literal["uniform", "t5x"] = "uniform",
    t5x_normalize: bool = False,
    z_loss: float = 0.0,
    soft_cap: float | None = None,
    weighting: Literal["example", "torch"] = "example",
    reduction: Reduction = "none",
    normalizer: ArrayLike | None = None,
    return_aux: Literal[True],
) -> tuple[jax.Array, dict[str, jax.Array]]: ...


def cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
    ignore_index: int | None = None,
    class_weights: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    smoothing: Literal["uniform", "t5x"] = "uniform",
    t5x_normalize: bool = False,
    z_loss: float = 0.0,
    soft_cap: float | None = None,
    weighting: Literal["example", "torch"] = "example",
    reduction: Reduction = "none",
    normalizer: ArrayLike | None = None,
    return_aux: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
  r"""Cross-entropy of softmax(``logits``) against integer class ``labels``.

  .. math:: \ell = -\log \mathrm{softmax}(z)_y = \mathrm{logsumexp}(z) - z_y

  With the training options, per example (``q = softmax(z')``, ``z'`` the
  soft-capped logits, ``K`` the number of classes on the support of ``q``,
  i.e. unmasked with a logit above ``-inf``):

  .. math:: \ell = w_y \Big[(1 - \epsilon)(-\log q_y) + \frac{\epsilon}{K}
     \sum_{c \in \mathrm{supp}\,q} (-\log q_c) + \lambda\,\mathrm{logsumexp}(z')^2\Big]

  Args:
    logits: model logits, ``[..., num_classes]`` (the class axis is ``axis``).
    labels: integer class indices, ``logits.shape`` without ``axis``.
    axis: the class axis of ``logits``.
    where: optional boolean mask broadcastable to ``logits.shape``; masked
      classes are excluded from the softmax; ``where[..., None]`` masks rows.
    ignore_index: a label value (torch uses ``-100``) whose examples give 0
      with zero gradient and are not counted by ``"mean"``.
    class_weights: optional ``[num_classes]`` floating weights; example ``n``
      is weighted by ``w[y_n]`` and ``"mean"`` is torch's weighted mean
      ``Σ w[y_n] ℓ_n / Σ w[y_n]``. With label smoothing, see ``weighting``.
    label_smoothing: ``ε`` in ``[0, 1]``, a Python float.
    smoothing: ``"uniform"``: target ``(1 - ε)·onehot(y) + ε/K`` over the
      support (torch, optax, Liger, but those count masked classes too);
      ``"t5x"``: ``1 - ε`` on the label and ``ε/(K - 1)`` on every other
      supported class (a one-hot if the label is the only one).
    t5x_normalize: with ``smoothing="t5x"``, subtract the entropy of the
      smoothed target, so the loss is ``KL(target ‖ q) ≥ 0`` with minimum 0.
    z_loss: ``λ ≥ 0``; adds ``λ·logsumexp(z')²`` (PaLM's z-loss).
    weighting: how ``class_weights`` meet label smoothing. ``"example"`` (the
      default): the whole smoothed example is weighted by ``w[y]``.
      ``"torch"``: ``torch.nn.functional.cross_entropy``'s formula, the label
      term weighted by ``w[y]`` and each class of the smoothing sum by its own
      ``w_c``: ``(1 - ε) w_y (-log q_y) + (ε/K) Σ_c w_c (-log q_c)``, with
      ``"mean"`` dividing by ``Σ w[y_n]`` as torch does (uniform smoothing; the
      z-loss part is weighted by ``w[y]``). Identical without class weights or
      smoothing.
    soft_cap: optional ``c > 0``: logits become ``c·tanh(z/c)`` (Gemma 2)
      inside the loss; ``-inf`` (masked) logits stay ``-inf``.
    reduction: ``"none"`` (per-example, the default), ``"sum"``, ``"mean"``
      (over unmasked, non-ignored examples, class-weighted) or
      ``"batchmean"`` (sum / size of the leading axis).
    normalizer: optional scalar that ``"mean"``/``"batchmean"`` divide by
      instead (the count or weight sum of the full batch, for micro-batching).
    return_aux: also return a dict of side outputs computed in the same pass.

  Returns:
    ``[...]`` per-example losses (a scalar if reduced), float32 (float64 for
    float64 logits). With ``return_aux``, ``(loss, aux)`` where ``aux`` has
    ``"logsumexp"`` (of ``z'``), ``"entropy"`` (of ``q``), ``"accuracy"``
    (``argmax z' == y`` as 0/1) and ``"z_loss"``, each per example under
    ``"none"`` (0 for masked/ignored rows) and otherwise reduced like the loss
    (class-weighted); ``aux["z_loss"]`` is exactly the z-loss part of ``loss``.

  Numerics:
    Computed as ``log Σ exp(z - max) - (z_y - max)``, so ties at ``|z| = 1e30``
    give ``log 2``, not 0. A label on a ``-inf`` (or masked) logit gives
    ``+inf``; a row with every class masked gives 0 with zero gradient.
    A label outside ``[0, num_classes)`` (and not ``ignore_index``) never
    selects another class: its loss is NaN, so any mean that includes it is
    NaN, and its gradient is zero, so it does not corrupt parameters.
    :func:`jaxdiv.check_labels` is the opt-in check that raises instead.
    Label smoothing never builds a one-hot array and gives masked classes no
    mass, so it stays finite with a masked vocabulary. The z-loss overflows to
    ``+inf`` in float32 only when ``|logsumexp| > 1.8e19``. All-ignored or
    all-masked batches reduce to 0 with zero gradient.

  References:
    Szegedy et al., "Rethinking the Inception Architecture" (label smoothing),
    arXiv:1512.00567; Chowdhery et al., "PaLM" (z-loss), arXiv:2204.02311;
    Gemma Team, "Gemma 2" (logit soft-capping), arXiv:2408.00118.

  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> logits = jnp.array([[2.0, 1.0, 0.1], [0.5, 2.5, -1.0]])
    >>> jaxdiv.cross_entropy(logits, jnp.array([0, 1]))
    Array([0.41702995, 0.15317823], dtype=float32)
    >>> loss, aux = jaxdiv.cross_entropy(logits, jnp.array([0, -100]), ignore_index=-100,
    ...                                  label_smoothing=0.1, z_loss=1e-4, reduction="mean", return_aux=True)
    >>> print(f"{loss:.4f} {aux['accuracy']:.1f}")
    0.5143 1.0
  """
  _reduction.check(reduction, normalizer)
  cfg = _options.ce_config(label_smoothing, smoothing, t5x_normalize, z_loss, soft_cap)
  ignore_index = _options.ignore_index(ignore_index)
  _options.choice("weighting", weighting, ("example", "torch"))
  if weighting == "torch" and cfg.smoothing != "uniform":
    raise ValueError("weighting='torch' is torch's uniform label smoothing; got smoothing='t5x'.")
  x, ax, mask = model(logits, axis, where)
  y = v.as_integer("labels", labels, PROB_HINT)
  v.label_shape(y, x, ax)
  num_classes = x.shape[ax]
  wide = v.wide_labels(y)
  in_range = (wide >= 0) & (wide < num_classes)
  safe_y = jnp.where(in_range, wide, 0).astype(jnp.int32)
  z = masked(x, mask, -jnp.inf)
  if cfg.soft_cap is not None:
    z = _core.capped(z, cfg.soft_cap, _rows.compute_dtype(z.dtype))
  # The one definition of the loss (jaxdiv._core) over whole rows; bf16 is read as it is.
  loss = _row_losses.ce_rows(z, safe_y, ax, cfg)
  valid = jnp.ones(y.shape, bool) if mask is None else jnp.any(mask, axis=ax)
  if ignore_index is not None:
    valid = valid & (wide != ignore_index)
  if class_weights is None:
    weight = valid.astype(loss.dtype)
  else:
    w = v.as_floating("class_weights", class_weights)
    if w.shape != (num_classes,):
      raise ValueError(f"class_weights must have shape [num_classes] = [{num_classes}]; got {list(w.shape)}.")
    (w,) = v.to_compute(w)
    weight = jnp.where(valid, w.astype(loss.dtype)[safe_y], 0)
    if weighting == "torch" and cfg.label_smoothing:
      # The label term and z-loss by w[y], the smoothing sum class by class (torch's formula).
      eps = cfg.label_smoothing
      nll = _row_losses.ce_rows(z, safe_y, ax, _options.CEConfig())
      label_term = _kernels.mul_safe(jnp.asarray(1 - eps, nll.dtype), nll)
      if cfg.z_loss:
        label_term = label_term + _core.z_loss_part(cfg, _row_losses.lse_rows(z, ax))
      smooth = _row_losses.support_mean_rows(z, ax, w)
      loss = _kernels.mul_safe(weight, label_term) + jnp.where(valid, eps * smooth, 0)
    else:
      loss = _kernels.mul_safe(weight, loss)
  loss = jnp.where(in_range, loss, jnp.nan)
  loss = jnp.where(valid, loss, 0)
  out = _reduction.reduce(loss, reduction, weight=weight, normalizer=normalizer)
  if not return_aux:
    return out
  (zc,) = v.to_compute(z)
  log_q, lse = _log_softmax_lse(zc, ax)
  aux = {"z_loss": _core.z_loss_part(cfg, lse)}
  entropy_ = jnp.sum(_kernels.mul_safe(jnp.exp(log_q), -log_q), axis=ax)
  accuracy = (jnp.argmax(zc, axis=ax) == wide).astype(loss.dtype)
  scale = weight if reduction != "none" else valid.astype(loss.dtype)
  if class_weights is not None:
    aux["z_loss"] = _kernels.mul_safe(weight, aux["z_loss"])
  aux["z_loss"] = jnp.where(valid, aux["z_loss"], 0)
  aux |= {"logsumexp": jnp.where(valid, lse, 0) * scale, "entropy": entropy_ * scale,
          "accuracy": accuracy * scale}
  aux = {k: _reduction.reduce(a, reduction, weight=weight, normalizer=normalizer)
         for k, a in sorted(aux.items())}
  return out, aux


def soft_cross_entropy(
    logits: ArrayLike,
    target_probs: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    soft_cap: float | None = None,
    reduction: Reduction = "none",
    normalizer: ArrayLike | None = None,
) -> jax.Array:
  r"""Cross-entropy H(p, q) of softmax(``logits``) against target probabilities.

  .. math:: H(p, q) = -\sum_c p_c \log q_c, \qquad q = \mathrm{softmax}(z)

  Args:
    logits: model logits, ``[..., num_classes]``.
    target_probs: target probabilities ``p``, same shape as ``logits`` (rows
      need not sum to one; label-smoothed or partial targets are fine).
    axis: the class axis.
    where: optional boolean mask broadcastable to ``logits.shape``.
    label_smoothing: ``ε`` in ``[0, 1]``: the target becomes
      ``(1 - ε)·p + ε/K`` over the K classes on the model's support (unmasked,
      logit above ``-inf``); see :func:`cross_entropy`.
    z_loss: ``λ ≥ 0``; adds ``λ·logsumexp(z)²`` (PaLM).
    soft_cap: optional ``c > 0``: logits become ``c·tanh(z/c)`` (Gemma 2).
    reduction: ``"none"`` (default), ``"sum"``, ``"mean"`` (over unmasked
      rows) or ``"batchmean"``; see :mod:`jaxdiv._reduction`.
    normalizer: optional scalar the means divide by instead.

  Returns:
    ``[...]`` per-example cross-entropies (a scalar if reduced), float32
    (float64 for float64 input).

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
  x, p, ax, mask = pair(logits, target_probs, "target_probs", axis, where, INT_HINT, cast=False)
  target = lambda: masked(p, mask, 0)
  return _soft_ce(x, target, ax, mask, label_smoothing, z_loss, soft_cap, reduction, normalizer)


def _soft_ce(x, target_probs, ax, mask, label_smoothing, z_loss, soft_cap, reduction, normalizer):
  """H(p, q) with the training options; ``target_probs()`` gives the masked p."""
  _reduction.check(reduction, normalizer)
  cfg = _options.ce_config(label_smoothing, "uniform", False, z_loss, soft_cap)
  z = masked(x, mask, -jnp.inf)
  if cfg.soft_cap is not None:
    z = _core.capped(z, cfg.soft_cap, _rows.compute_dtype(z.dtype))
  # The fused kernel: gradient (Σp)·softmax - p in one pass, bf16 read as is.
  loss = _kernels.soft_cross_entropy_rows(z, target_probs(), ax)
  eps = cfg.label_smoothing
  if eps > 0.0:  # the uniform part over the support, as jaxdiv.cross_entropy's smoothing
    smooth = _row_losses.support_mean_rows(z, ax)
    loss = _kernels.mul_safe(jnp.asarray(1 - eps, loss.dtype), loss) + eps * smooth
  if cfg.z_loss:
    z_term = _core.z_loss_part(cfg, _row_losses.lse_rows(z, ax))
    loss = loss + (z_term if mask is None else jnp.where(jnp.any(mask, axis=ax), z_term, 0))
  return reduce_rows(loss, mask, ax, reduction, normalizer)


def soft_cross_entropy_with_log_targets(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    soft_cap: float | None = None,
    reduction: Reduction = "none",
    normalizer: ArrayLike | None = None,
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
    label_smoothing, z_loss, soft_cap: as in :func:`soft_cross_entropy`
      (``soft_cap`` applies to the model logits only).
    reduction, normalizer: as in :func:`soft_cross_entropy`.

  Returns:
    ``[...]`` per-example cross-entropies (a scalar if reduced), float32
    (float64 for float64 input).

  Numerics:
    As :func:`soft_cross_entropy`; derivatives w.r.t. ``target_logits`` are
    finite everywhere the value is.

  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> jaxdiv.soft_cross_entropy_with_log_targets(jnp.zeros(4), jnp.array([0.0, 0.0, -jnp.inf, -jnp.inf]))
    Array(1.3862944, dtype=float32)
  """
  x, t, ax, mask = pair(logits, target_logits, "target_logits", axis, where, INT_HINT)
  target_probs = lambda: jnp.exp(log_probs(t, ax, mask))
  return _soft_ce(x, target_probs, ax, mask, label_smoothing, z_loss, soft_cap, reduction, normalizer)


def entropy(
    logits: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
    normalizer: ArrayLike | None = None,
) -> jax.Array:
  r"""Shannon entropy of softmax(``logits``), in nats.

  .. math:: H(q) = -\sum_c q_c \log q_c, \qquad q = \mathrm{softmax}(z)

  Args:
    logits: logits or log-probabilities, ``[..., num_classes]``.
    axis: the class axis.
    where: optional boolean mask broadcastable to ``logits.shape``.
    reduction: ``"none"`` (default), ``"sum"``, ``"mean"`` (over unmasked
      rows) or ``"batchmean"`` (sum / leading-axis size, torch's ``kl_div``).
    normalizer: optional scalar the means divide by instead (micro-batching).

  Returns:
    ``[...]`` per-example entropies (a scalar if reduced), float32 (float64
    for float64 input).

  Numerics:
    ``-inf`` logits contribute 0 with zero derivative; a fully masked row gives 0.

  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> jaxdiv.entropy(jnp.array([0.0, 0.0, -jnp.inf, 0.0]))
    Array(1.0986123, dtype=float32)
  """
  _reduction.check(reduction, normalizer)
  x, ax, mask = model(logits, axis, where)
  (x,) = v.to_compute(x)
  log_q = log_probs(x, ax, mask)
  loss = jnp.sum(_kernels.mul_safe(jnp.exp(log_q), -log_q), axis=ax)
  return reduce_rows(loss, mask, ax, reduction, normalizer)
