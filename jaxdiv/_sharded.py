"""Vocab-parallel losses: logits sharded along the vocabulary across devices.

The fused variant (the unembedding sharded instead) is :mod:`jaxdiv._sharded_fused`.

Megatron-style: each device holds ``V / P`` classes of every token and forms
its local maximum, sum of exponentials and target logit; ``jax.lax.pmax`` and
``jax.lax.psum`` over the vocabulary mesh axis combine them into the global
logsumexp. Only ``[N]``-sized statistics travel between devices, never a
``[*, V]`` array. Each function takes *global* arrays and a
:class:`jax.sharding.Mesh` and runs its body under :func:`jax.shard_map`, so it
works both eagerly and inside ``jax.jit`` with ``NamedSharding`` inputs (the
inputs are resharded to the layout it needs if they arrive otherwise).

Layout: ``logits [N, V]`` / ``weight [D, V]`` are split along V over
``vocab_axis``; tokens (``N``) are split over ``token_axis`` if given
(data parallelism), else replicated. ``V`` (and ``N``) must be divisible by the
size of the corresponding mesh axis.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from jaxdiv import _core, _kernels, _options, _reduction, _row_losses
from jaxdiv import _fused_inputs as _inputs
from jaxdiv import _validation as v

_INT_HINT = "For integer class labels use jaxdiv.vocab_parallel_cross_entropy."


# One shard_map driver for every sharded loss (cached programs; inputs moved to the layout they need).
_program = _inputs.program
_shard_map = _inputs.on_mesh


def _two_sided(name, logits, target, target_name, mesh, vocab_axis, token_axis, where=None):
  """Validated global ``(logits, target, row mask)`` of the same ``[N, V]`` shape, in the compute dtype.

  ``where`` masks classes of both (``-inf``); the row mask says which rows keep a class (None: all).
  """
  z = v.as_floating("logits", logits)
  t = v.as_floating(target_name, target, _INT_HINT)
  if z.ndim != 2:
    raise ValueError(
        f"{name} takes logits of shape [N, V]; got {list(z.shape)}. Reshape leading axes into N.")
  v.same_shape(target_name, t, "logits", z)
  z, t = v.to_compute(z, t)
  _inputs.check_layout(mesh, vocab_axis, token_axis, z.shape[0], z.shape[1])
  mask = v.mask(where, z.shape)
  if mask is None:
    return z, t, None
  neg_inf = jnp.asarray(-jnp.inf, z.dtype)
  return jnp.where(mask, z, neg_inf), jnp.where(mask, t, neg_inf), jnp.any(mask, axis=1)


def _reduce_rows(loss, rows, reduction, normalizer):
  """The one reduction, a row counting towards the mean if any of its classes is unmasked."""
  if rows is not None:
    loss = jnp.where(rows, loss, 0)
  weight = None if rows is None else rows.astype(loss.dtype)
  return _reduction.reduce(loss, reduction, weight=weight, normalizer=normalizer)


def _ce_local(cfg: _options.CEConfig, vocab_axis: Any, z: jax.Array, y: jax.Array) -> jax.Array:
  """Per-token cross-entropy of a device's ``[n, V/P]`` block: the whole-row driver over ``vocab_axis``."""
  zc = _core.capped(z, cfg.soft_cap, z.dtype)
  return _row_losses.ce_rows(zc, jnp.maximum(y, 0), 1, cfg, vocab_axis)


def vocab_parallel_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: Any,
    token_axis: Any = None,
    where: ArrayLike | None = None,
    ignore_index: int | None = None,
    class_weights: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    soft_cap: float | None = None,
    reduction: _reduction.Reduction = "none",
    normalizer: ArrayLike | None = None,
) -> jax.Array:
  r"""Cross-entropy of vocabulary-sharded logits against integer labels, as :func:`jaxdiv.cross_entropy`.

  .. math:: \ell = w_y \Big[(1 - \epsilon)(-\log q_y) + \frac{\epsilon}{K}
     \sum_{c \in \mathrm{supp}\,q} (-\log q_c) + \lambda\,\mathrm{logsumexp}(z')^2\Big]

  The loss is the one definition of :func:`jaxdiv.cross_entropy`
  (:mod:`jaxdiv._core`): each device forms the row statistics of its classes
  (max, sum of exponentials, target logit, smoothing sums) and ``pmax``/``psum``
  over ``vocab_axis`` combine them, so only ``[N]``-sized statistics travel.

  Args:
    logits: ``[N, V]``, split along V over ``vocab_axis``; ``-inf`` masks a class.
    labels: ``[N]`` integer classes in ``[0, V)`` (global indices).
    mesh: the device mesh.
    vocab_axis: mesh axis name that splits the vocabulary.
    token_axis: optional mesh axis name that splits the tokens.
    where, ignore_index, class_weights, label_smoothing, z_loss, soft_cap, reduction, normalizer: as
      :func:`jaxdiv.cross_entropy` (``where`` a class mask broadcastable to ``[N, V]``).

  Returns:
    ``[N]`` per-token losses (``reduction="none"``, the default; sharded like
    the tokens) or the reduced scalar, float32 (float64 for float64 logits).

  Numerics:
    As :func:`jaxdiv.cross_entropy`: ties at ``|z| = 1e30`` give ``log 2``,
    label smoothing gives masked classes no mass (finite with a padded
    vocabulary), a NaN logit gives NaN, an out-of-range label gives NaN with
    zero gradient. Differentiable in every mode (``grad``, ``jacfwd``,
    ``vmap`` outside).

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, jaxdiv
    >>> mesh = jax.sharding.Mesh(np.array(jax.devices()), ("vocab",))
    >>> logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 64)), jnp.float32)
    >>> labels = jnp.array([0, 5, 63, 17])
    >>> loss = jaxdiv.vocab_parallel_cross_entropy(logits, labels, mesh=mesh, vocab_axis="vocab")
    >>> bool(jnp.allclose(loss, jaxdiv.cross_entropy(logits, labels), rtol=1e-6))
    True
  """
  _reduction.check(reduction, normalizer)
  cfg = _options.ce_config(label_smoothing, "uniform", False, z_loss, soft_cap)
  z = v.as_floating("logits", logits)
  if z.ndim != 2:
    raise ValueError(f"vocab_parallel_cross_entropy takes logits of shape [N, V]; got {list(z.shape)}.")
  y = v.as_integer("labels", labels, "For target logits use jaxdiv.vocab_parallel_kl_divergence.")
  v.label_shape(y, z, 1)
  (z,) = v.to_compute(z)
  n, vocab = z.shape
  _inputs.check_layout(mesh, vocab_axis, token_axis, n, vocab)
  mask = v.mask(where, z.shape)
  y, active, weights = _inputs.prepare_labels(y, (n,), ignore_index, False, class_weights, vocab, z.dtype)
  if mask is not None:
    z = jnp.where(mask, z, jnp.asarray(-jnp.inf, z.dtype))
    rows = jnp.any(mask, axis=1)
    active, weights = active & rows, jnp.where(rows, weights, 0)
  in_specs = (P(token_axis, vocab_axis), P(token_axis))
  f = _shard_map(_ce_local, (cfg, vocab_axis), mesh, in_specs, P(token_axis))
  loss = jnp.where((y >= 0) & (y < vocab), f(z, y), jnp.nan)  # an out-of-range label: NaN, zero gradient
  if class_weights is not None:
    loss = _kernels.mul_safe(weights, loss)
  loss = jnp.where(active, loss, 0)
  return _reduction.reduce(loss, reduction, weight=weights, normalizer=normalizer)


def _divergence_local(spec: _core.DivSpec, vocab_axis: Any, z: jax.Array, t: jax.Array) -> jax.Array:
  """Per-token divergence of a device's blocks: the whole-row driver over ``vocab_axis``."""
  return _row_losses.divergence_rows(z, t, 1, spec, vocab_axis)


def _divergence(spec: _core.DivSpec, z, t, mesh, vocab_axis, token_axis):
  spec_in = P(token_axis, vocab_axis)
  return _shard_map(_divergence_local, (spec, vocab_axis), mesh, (spec_in, spec_in), P(token_axis))(z, t)


def vocab_parallel_kl_divergence(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: Any,
    token_axis: Any = None,
    where: ArrayLike | None = None,
    divergence: _options.Divergence = "forward_kl",
    beta: float = 0.5,
    reverse: bool | None = None,
    reduction: _reduction.Reduction = "none",
    normalizer: ArrayLike | None = None,
) -> jax.Array:
  r"""KL(p ‖ q) (or the reverse KL, or JSD_β) between vocabulary-sharded target and model logits.

  .. math:: \mathrm{KL}(p \,\|\, q) = \sum_c p_c (\log p_c - \log q_c),
     \quad p = \mathrm{softmax}(t),\ q = \mathrm{softmax}(z)

  The one definition of :func:`jaxdiv.kl_divergence_with_log_targets`
  (:mod:`jaxdiv._core`): both logsumexps are combined across ``vocab_axis``,
  each device sums the non-negative terms and the renormalisation sums over its
  classes, and ``psum`` of ``[N]`` vectors adds them.

  Args:
    logits: model (student) logits ``[N, V]``, split along V over ``vocab_axis``.
    target_logits: target (teacher) logits ``[N, V]``, split the same way.
    mesh: the device mesh.
    vocab_axis: mesh axis name that splits the vocabulary.
    token_axis: optional mesh axis name that splits the tokens.
    divergence: ``"forward_kl"`` (the default), ``"reverse_kl"`` (KL(q ‖ p), as
      :func:`jaxdiv.reverse_kl_divergence`) or ``"jsd"`` (as
      :func:`jaxdiv.jensen_shannon_divergence`, with ``beta``).
    beta: the target's weight in the JSD mixture, in ``[0, 1]``.
    reverse: deprecated; ``reverse=True`` is ``divergence="reverse_kl"``.
    where, reduction, normalizer: as :func:`jaxdiv.kl_divergence_with_log_targets`
      (``where`` a class mask broadcastable to ``[N, V]``, applied to both).

  Returns:
    ``[N]`` per-token divergences (``reduction="none"``, the default) or the
    reduced scalar, float32 (float64 for float64 inputs).

  Numerics:
    As :func:`jaxdiv.kl_divergence_with_log_targets`, on every device layout:
    non-negative, finite derivatives where ``p = 0``, a tiny KL (5e-9) to
    float32 relative accuracy, 0 for a fully masked row, NaN for a NaN input.
    Differentiable w.r.t. both arguments, forward and reverse mode.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, jaxdiv
    >>> mesh = jax.sharding.Mesh(np.array(jax.devices()), ("vocab",))
    >>> rng = np.random.default_rng(0)
    >>> z, t = (jnp.asarray(rng.normal(size=(4, 64)), jnp.float32) for _ in range(2))
    >>> kl = jaxdiv.vocab_parallel_kl_divergence(z, t, mesh=mesh, vocab_axis="vocab")
    >>> bool(jnp.allclose(kl, jaxdiv.kl_divergence_with_log_targets(z, t), rtol=1e-5))
    True
  """
  name = "vocab_parallel_kl_divergence"
  kind, beta = _options.divergence(_options.reverse_flag(reverse, divergence), beta)
  _reduction.check(reduction, normalizer)
  z, t, rows = _two_sided(name, logits, target_logits, "target_logits", mesh, vocab_axis, token_axis, where)
  loss = _divergence(_core.DivSpec(kind, beta), z, t, mesh, vocab_axis, token_axis)
  return _reduce_rows(loss, rows, reduction, normalizer)


def vocab_parallel_jensen_shannon_divergence(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: Any,
    token_axis: Any = None,
    where: ArrayLike | None = None,
    beta: float = 0.5,
    reduction: _reduction.Reduction = "none",
    normalizer: ArrayLike | None = None,
) -> jax.Array:
  r"""JSD_β between vocabulary-sharded model and target logits (GKD convention).

  .. math:: \mathrm{JSD}_\beta = \beta\,\mathrm{KL}(P \,\|\, M) + (1 - \beta)\,\mathrm{KL}(Q \,\|\, M),
     \quad M = \beta P + (1 - \beta) Q

  as :func:`jaxdiv.jensen_shannon_divergence` (``beta=0`` gives KL(P‖Q),
  ``beta=1`` gives KL(Q‖P)), with the logsumexps and the final sum combined
  across ``vocab_axis``.

  Args:
    logits: model (student) logits ``[N, V]``, split along V over ``vocab_axis``.
    target_logits: target (teacher) logits ``[N, V]``, split the same way.
    mesh: the device mesh.
    vocab_axis: mesh axis name that splits the vocabulary.
    token_axis: optional mesh axis name that splits the tokens.
    beta: the target's weight in the mixture, in ``[0, 1]``.
    where, reduction, normalizer: as :func:`jaxdiv.jensen_shannon_divergence`.

  Returns:
    ``[N]`` per-token divergences (``reduction="none"``, the default) or the
    reduced scalar, float32 (float64 for float64 inputs).

  Numerics:
    As :func:`jaxdiv.jensen_shannon_divergence` (the same definition): the
    mixture is finite with zero derivative where ``P = Q = 0``.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, jaxdiv
    >>> mesh = jax.sharding.Mesh(np.array(jax.devices()), ("vocab",))
    >>> rng = np.random.default_rng(0)
    >>> z, t = (jnp.asarray(rng.normal(size=(4, 64)), jnp.float32) for _ in range(2))
    >>> jsd = jaxdiv.vocab_parallel_jensen_shannon_divergence(z, t, mesh=mesh, vocab_axis="vocab")
    >>> bool(jnp.allclose(jsd, jaxdiv.jensen_shannon_divergence(z, t), rtol=1e-5))
    True
  """
  name = "vocab_parallel_jensen_shannon_divergence"
  kind, beta = _options.divergence("jsd", beta)
  _reduction.check(reduction, normalizer)
  z, t, rows = _two_sided(name, logits, target_logits, "target_logits", mesh, vocab_axis, token_axis, where)
  loss = _divergence(_core.DivSpec(kind, beta), z, t, mesh, vocab_axis, token_axis)
  return _reduce_rows(loss, rows, reduction, normalizer)
