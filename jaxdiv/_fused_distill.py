"""Fused linear distillation: KL or JSD of a student's ``hidden @ weight`` from a teacher, without the logits.

The student's logits come block by block from ``hidden [N, D] @ weight [D, V]``
as in :func:`jaxdiv.fused_linear_cross_entropy` (the same two schedules, the
same sharding rules); the teacher is given as logits ``[N, V]`` or as its own
``(hidden, weight)`` pair. The divergence is the one definition of
:mod:`jaxdiv._core` (``DivSpec``), as in :func:`jaxdiv.distillation_loss`.
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import _options, _reduction, _rows
from jaxdiv import _validation as v
from jaxdiv._blocks import Spec
from jaxdiv._core import DivSpec
from jaxdiv._fused import fused_linear_cross_entropy
from jaxdiv._fused_inputs import (
  Mode,
  Reduction,
  check_linear,
  class_keep,
  class_mask,
  layout,
  linear_dtypes,
  plan,
  prepare_labels,
  run,
  token_weights,
)
from jaxdiv._kernels import mul_safe

Divergence = _options.Divergence


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
    token_axis: Any = None,
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
    mode, token_block, vocab_block, token_axis: as :func:`fused_linear_cross_entropy`
      (and so is the sharding: the tokens stay where they are).

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
  if labels is not None:  # checked, and ignored tokens found, as by fused_linear_cross_entropy
    y, active, _ = prepare_labels(labels, token_shape, ignore_index, False, None, vocab, dt)
    mask = mask & active
  user_weights = jnp.where(mask, user_weights, 0)
  h32 = h32.reshape(-1, d)
  if token_mask is not None:  # a masked token's hidden state (NaN included) reaches no value or gradient
    h32 = jnp.where(mask[:, None], h32, 0)
  n = h32.shape[0]
  where_ = layout(hidden, weight, n, vocab, token_axis)
  mode, block = plan(mode, reduction, n, d, vocab, token_block, vocab_block, where_)
  if mode == "fast" and teacher_kind == "hidden":
    th_, tw_, tb_ = cast(tuple[jax.Array, jax.Array, jax.Array], aux)
    aux = (th_, tw_.astype(dt), tb_)
  spec = Spec(DivSpec(kind, beta), teacher_kind, block, vocab, temperature=temp)
  if labels is None:
    out = run(spec, mode, reduction, normalizer, token_shape, h32, w, b32, aux, user_weights, mask,
              where_[0])[0]
    return temp * temp * out if scale_by_temperature_squared else out
  # Hard labels: both terms reduced over the same tokens with the same denominator, so that
  # α·CE + (1 - α)·D is exactly distillation_loss's per-token mixture, reduced once.
  alpha = _options.scalar("alpha", alpha, 0.0, 1.0)
  scale = temp * temp if scale_by_temperature_squared else 1.0
  if reduction in ("mean", "batchmean") and normalizer is None:
    weight = user_weights.reshape(token_shape)
    normalizer = jnp.sum(weight) if reduction == "mean" else (weight.shape[0] if weight.ndim else 1)
    reduction = "sum" if reduction == "batchmean" else reduction
  soft = run(spec, mode, reduction, normalizer, token_shape, h32, w, b32, aux, user_weights, mask,
             where_[0])[0]
  hard = fused_linear_cross_entropy(
      h32.reshape(*token_shape, d), w, jnp.where(mask, y, 0).reshape(token_shape), bias=b32,
      weights=user_weights.reshape(token_shape), token_mask=mask.reshape(token_shape), reduction=reduction,
      normalizer=normalizer, mode=mode, token_block=token_block, vocab_block=vocab_block,
      token_axis=token_axis)
  mix = lambda c, x: mul_safe(jnp.asarray(c, x.dtype), x)  # a zero weight on an infinite term is 0
  return mix(alpha, hard) + mix((1 - alpha) * scale, soft)
