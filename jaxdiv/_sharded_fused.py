"""The vocab-parallel fused cross-entropy: the unembedding split along the vocabulary, the logits never built.

Each device holds ``V / P`` columns of ``weight [D, V]`` and runs the
vocabulary-block schedule of :mod:`jaxdiv._blocks` over them; the row
statistics combine with ``pmax``/``psum`` over ``vocab_axis`` as in
:mod:`jaxdiv._sharded`, so only ``[N]``-sized statistics travel. Tokens may be
split over ``token_axis`` too (data parallelism).
"""

from __future__ import annotations

from typing import Any, Literal, overload

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from jaxdiv import _blocks, _options, _reduction
from jaxdiv import _fused_inputs as _inputs


def _fused_local(spec: _blocks.Spec, h, w, b, y):
  """A device's share of the vocabulary-block schedule (statistics combined over the spec's mesh axes)."""
  return _blocks.vocab_core(spec, h, w, b, (y,))


@overload
def vocab_parallel_fused_linear_cross_entropy(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: Any,
    token_axis: Any = None,
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
    reduction: _inputs.Reduction = "mean",
    normalizer: ArrayLike | None = None,
    return_lse: Literal[False] = False,
    return_aux: Literal[False] = False,
    vocab_block: int | None = None,
) -> jax.Array: ...


@overload
def vocab_parallel_fused_linear_cross_entropy(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: Any,
    token_axis: Any = None,
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
    reduction: _inputs.Reduction = "mean",
    normalizer: ArrayLike | None = None,
    return_lse: Literal[True],
    return_aux: Literal[False] = False,
    vocab_block: int | None = None,
) -> tuple[jax.Array, jax.Array]: ...


@overload
def vocab_parallel_fused_linear_cross_entropy(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: Any,
    token_axis: Any = None,
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
    reduction: _inputs.Reduction = "mean",
    normalizer: ArrayLike | None = None,
    return_lse: Literal[False] = False,
    return_aux: Literal[True],
    vocab_block: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]: ...


def vocab_parallel_fused_linear_cross_entropy(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: Any,
    token_axis: Any = None,
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
    reduction: _inputs.Reduction = "mean",
    normalizer: ArrayLike | None = None,
    return_lse: bool = False,
    return_aux: bool = False,
    vocab_block: int | None = None,
) -> Any:
  r""":func:`jaxdiv.fused_linear_cross_entropy` with the unembedding sharded along the vocabulary.

  Each device holds ``weight[:, V/P]`` (and the matching bias slice) and,
  with ``token_axis``, its share of the tokens. It runs the low-memory
  (vocabulary-block) schedule over its own classes; the per-token logsumexp,
  target logit and smoothing sum are combined with ``pmax``/``psum`` over
  ``vocab_axis``; in the backward pass the hidden-state gradient is summed
  over ``vocab_axis`` and the weight and bias gradients over ``token_axis``.
  Nothing ``[*, V]``-sized crosses devices and no device forms more than an
  ``[N/P_t, vocab_block]`` block of logits.

  Args:
    hidden: ``[N, D]`` hidden states (tokens split over ``token_axis`` if given)
      or ``[B, T, D]`` (flattened to ``N = B·T`` tokens).
    weight: ``[D, V]``, split along V over ``vocab_axis``.
    labels: integer classes, ``hidden.shape[:-1]`` (global indices).
    mesh: the device mesh.
    vocab_axis: mesh axis name that splits the vocabulary.
    token_axis: optional mesh axis name that splits the tokens.
    bias, ignore_index, class_weights, label_smoothing, z_loss, soft_cap, shift_labels: as
      :func:`jaxdiv.fused_linear_cross_entropy`.
    where, weights, token_mask, reduction, normalizer, return_lse, return_aux: as
      :func:`jaxdiv.fused_linear_cross_entropy`.
    vocab_block: classes per block within a device's shard.

  Returns:
    As :func:`jaxdiv.fused_linear_cross_entropy`.

  Numerics:
    As :func:`jaxdiv.fused_linear_cross_entropy`; equal to the one-device
    result to float32 rounding. A ``custom_vjp``: ``jit``, ``grad``; no
    forward mode.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, jaxdiv
    >>> mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, -1) if len(jax.devices()) % 2 == 0
    ...                          else np.array(jax.devices()).reshape(1, -1), ("data", "vocab"))
    >>> rng = np.random.default_rng(0)
    >>> h = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
    >>> w = jnp.asarray(rng.normal(size=(4, 64)), jnp.float32)
    >>> y = jnp.asarray(rng.integers(0, 64, size=8))
    >>> loss = jaxdiv.vocab_parallel_fused_linear_cross_entropy(
    ...     h, w, y, mesh=mesh, vocab_axis="vocab", token_axis="data")
    >>> bool(jnp.allclose(loss, jnp.mean(jaxdiv.cross_entropy(h @ w, y)), rtol=1e-6))
    True
  """
  h, w, b = _inputs.check_linear(hidden, weight, bias)
  _reduction.check(reduction, normalizer)
  if return_lse and return_aux:
    raise ValueError("return_lse and return_aux both ask for the logsumexp; pass one (aux['logsumexp']).")
  cfg = _options.ce_config(label_smoothing, "uniform", False, z_loss, soft_cap)
  token_shape = h.shape[:-1]
  d, vocab = w.shape
  dt, h32, b32 = _inputs.linear_dtypes(h, w, b)
  b32 = _inputs.class_mask(where, vocab, b32)
  y, active, per_token = _inputs.prepare_labels(
      labels, token_shape, ignore_index, shift_labels, class_weights, vocab, dt)
  user_weights, user_mask = _inputs.token_weights(token_shape, weights, token_mask, dt)
  per_token, active = per_token * user_weights, active & user_mask
  h32 = h32.reshape(-1, d)
  if token_mask is not None:  # a masked token's hidden state (NaN included) reaches no value or gradient
    h32 = jnp.where(user_mask[:, None], h32, 0)
  n = h32.shape[0]
  _inputs.check_layout(mesh, vocab_axis, token_axis, n, vocab)
  v_local = vocab // mesh.shape[vocab_axis]
  n_local = n // (1 if token_axis is None else mesh.shape[token_axis])
  block = _inputs.block_size("vocab_block", vocab_block, n_local, v_local)
  spec = _blocks.Spec(cfg, "labels", block, vocab, axis_name=vocab_axis, token_axis=token_axis)

  tokens = P(token_axis)
  in_specs = (P(token_axis, None), P(None, vocab_axis), P(vocab_axis), tokens)
  f = _inputs.on_mesh(_fused_local, (spec,), mesh, in_specs, (tokens, tokens))
  loss, lse = f(h32, w, b32, y)
  per_token_loss = jnp.where(active, per_token * jnp.where(active, loss, 0), 0).reshape(token_shape)
  out = _reduction.reduce(per_token_loss, reduction, weight=per_token.reshape(token_shape),
                          normalizer=normalizer)
  if return_aux:
    return out, _inputs.aux_outputs(cfg, lse, reduction, per_token, active, token_shape, normalizer)
  return (out, jax.lax.stop_gradient(lse).reshape(token_shape)) if return_lse else out
