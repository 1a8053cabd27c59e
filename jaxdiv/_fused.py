"""Fused linear losses: cross-entropy from hidden states, never building the logits.

The distillation loss on the same schedules is :mod:`jaxdiv._fused_distill`.

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

from typing import Any, Literal, overload

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import _options, _reduction
from jaxdiv._blocks import Spec
from jaxdiv._fused_inputs import (
    Mode,
    Reduction,
    aux_outputs,
    check_linear,
    class_mask,
    layout,
    linear_dtypes,
    plan,
    prepare_labels,
    run,
    token_weights,
)
from jaxdiv._fused_inputs import choose_mode as choose_mode  # the auto rule, tested through this module


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
