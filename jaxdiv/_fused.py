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
(``N >= 2 D``, ``N`` a device's tokens), else ``"low_memory"``.

Sharded inputs: where the token split is visible (an Explicit mesh, placed
arrays, ``token_axis``) both schedules run per device under ``shard_map``
(:func:`jaxdiv._fused_inputs.layout`); under ``jit`` on an Auto mesh ``"auto"``
picks the vocabulary schedule, which the partitioner splits along the tokens.

The same vocabulary-block core, with collectives, is the vocab-parallel fused
loss of :mod:`jaxdiv._sharded`.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, cast, overload

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import _options, _reduction, _rows
from jaxdiv import _validation as v
from jaxdiv._blocks import Spec
from jaxdiv._core import DivSpec
from jaxdiv._fused_inputs import (
    Mode,
    Reduction,
    aux_outputs,
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
from jaxdiv._fused_inputs import choose_mode as choose_mode  # the auto rule, tested through this module
from jaxdiv._kernels import mul_safe

Divergence = _options.Divergence



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
    token_axis: Any = None,
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
    token_axis: Any = None,
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
    token_axis: Any = None,
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
    token_axis: Any = None,
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
    token_axis: optional mesh axis name (or tuple of names) that splits the
      tokens, for ``jit`` on an Auto mesh, where the split is not visible at
      trace time (see Sharding). Not needed on an Explicit mesh or for placed
      arrays called eagerly.

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

  Sharding:
    Data parallelism keeps the tokens where they are. When the split of
    ``hidden``'s tokens is visible (an Explicit mesh, where it is part of the
    traced type; placed arrays called eagerly; or ``token_axis``), the
    schedule runs under ``shard_map``: each device its own tokens, the
    ``[D, V]`` weight gradient summed over the token axis once, after the
    loop; a weight split along V on another axis has its row statistics
    combined over that axis. Nothing is all-gathered, and ``"auto"``
    applies its rule to a device's tokens. Under ``jit`` on an Auto mesh the
    mesh is visible but not the split: ``"auto"`` then picks
    ``"low_memory"``, whose vocabulary loop the partitioner splits along the
    tokens as it finds them; ``"fast"`` there needs ``token_axis`` (else the
    partitioner gathers the tokens onto every device).

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
  where_ = layout(hidden, weight, n, vocab, token_axis)
  mode, block = plan(mode, reduction, n, d, vocab, token_block, vocab_block, where_)
  spec = Spec(cfg, "labels", block, vocab)
  out, _, lse = run(spec, mode, reduction, normalizer, token_shape, h32, w, b32, (y,), per_token, active,
                    where_[0])
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
      h32.reshape(*token_shape, d), w, jnp.where(mask.reshape(token_shape), y, 0), bias=b32,
      weights=user_weights.reshape(token_shape), token_mask=mask.reshape(token_shape), reduction=reduction,
      normalizer=normalizer, mode=mode, token_block=token_block, vocab_block=vocab_block,
      token_axis=token_axis)
  mix = lambda c, x: mul_safe(jnp.asarray(c, x.dtype), x)  # a zero weight on an infinite term is 0
  return mix(alpha, hard) + mix((1 - alpha) * scale, soft)
