"""The fused losses' inputs and their reduction: checks, labels, token weights, masks, mode, blocks.

Shared by :mod:`jaxdiv._fused` and :mod:`jaxdiv._sharded`, so the fused and
vocab-parallel fused losses read their arguments the same way; the options
themselves are checked by :mod:`jaxdiv._options`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal, NamedTuple, cast

import jax
import jax.numpy as jnp
from jax.core import Tracer
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from jaxdiv import _core, _options, _reduction, _rows
from jaxdiv import _validation as v
from jaxdiv._blocks import Spec, _token_core, vocab_core
from jaxdiv._core import CEConfig

Mode = Literal["auto", "fast", "low_memory"]
Reduction = _reduction.Reduction

# Default blocks of logits: 44 MiB of float32 for the fast mode (fewer read-modify-writes of the [D, V]
# accumulator; measured by `python -m jaxdiv bench-fused`), 32 MiB for the low-memory mode.
_FAST_BLOCK_ELEMENTS = 11 << 20
_LOW_MEMORY_BLOCK_ELEMENTS = 1 << 23


# --------------------------------------------------------------------------- #


def check_linear(hidden: ArrayLike, weight: ArrayLike, bias: ArrayLike | None, prefix: str = ""):
  """Validated ``(hidden, weight, bias)``: hidden ``[..., D]``, weight ``[D, V]``, bias ``[V]`` or None."""
  h = v.as_floating(f"{prefix}hidden", hidden)
  w = v.as_floating(f"{prefix}weight", weight)
  if h.ndim < 1:
    raise ValueError(f"{prefix}hidden must have shape [..., D]; got a scalar.")
  if w.ndim != 2 or w.shape[0] != h.shape[-1]:
    raise ValueError(
        f"{prefix}weight must have shape [D, V] with D = {prefix}hidden.shape[-1] = {h.shape[-1]}; "
        f"got {list(w.shape)}. (Pass the unembedding as [D, V]; transpose an embedding table [V, D].)"
    )
  b = None
  if bias is not None:
    b = v.as_floating(f"{prefix}bias", bias)
    if b.shape != (w.shape[1],):
      raise ValueError(f"{prefix}bias must have shape [V] = [{w.shape[1]}]; got {list(b.shape)}.")
  return h, w, b


def linear_dtypes(h, w, b):
  """Compute dtype (f32, or f64 if any input is f64), hidden and bias cast to it, bias zeros if None."""
  dt = _rows.compute_dtype(h.dtype, w.dtype, *(() if b is None else (b.dtype,)))
  b = jnp.zeros((w.shape[1],), dt) if b is None else b.astype(dt)
  return dt, h.astype(dt), b


def block_size(name: str, requested: int | None, other: int, total: int) -> int:
  """A block along an axis of length ``total``: ``requested``, or a default block of logits ``[*, other]``."""
  if requested is None:
    elements = _FAST_BLOCK_ELEMENTS if name == "token_block" else _LOW_MEMORY_BLOCK_ELEMENTS
    elements = min(elements, other * total // 16)  # and at most 1/16 of the logits
    return max(1, min(total, max(8, elements // max(other, 1))))
  checked = _options.block(name, requested)
  assert checked is not None
  return min(checked, max(total, 1))


def choose_mode(mode: str, reduction: str, n: int, d: int, partitioned: bool = False) -> Mode:
  """The schedule: ``mode``, or for ``"auto"`` the fast one if the loss is a scalar and ``n >= 2d``.

  ``n`` is a device's tokens. ``partitioned``: the tokens may be split by the partitioner in a way
  that is not visible here (see :func:`layout`); only the vocabulary schedule keeps such a split.
  """
  _options.choice("mode", mode, ("auto", "fast", "low_memory"))
  if mode == "fast" and reduction == "none":
    raise ValueError(
        "mode='fast' forms the gradients in the forward pass and needs a scalar loss: use reduction='sum' or "
        "'mean', or mode='low_memory' (or 'auto') for per-token losses."
    )
  if mode == "auto":
    return "fast" if reduction != "none" and n >= 2 * d and not partitioned else "low_memory"
  return cast(Mode, mode)


# --------------------------------------------------------------------------- #
# Device layouts: which mesh axes split the tokens and the vocabulary
# --------------------------------------------------------------------------- #


class Layout(NamedTuple):
  """How a fused loss's inputs lie on a mesh: the axes splitting the tokens and the weight's vocabulary.

  ``tokens`` is a tuple of mesh axis names (empty: tokens replicated); ``vocab`` one axis name or None.
  """

  mesh: Any  # jax.sharding.Mesh or AbstractMesh
  tokens: tuple
  vocab: Any

  def size(self, axes: tuple) -> int:
    return math.prod(self.mesh.shape[a] for a in axes)


def _named_sharding(x) -> NamedSharding | None:
  """The sharding of ``x`` as far as it is known here: a traced value's type, or a placed array's."""
  s = jax.typeof(x).sharding if isinstance(x, Tracer) else getattr(x, "sharding", None)
  return s if isinstance(s, NamedSharding) else None


def _spec_axes(entry) -> tuple:
  return () if entry is None else (entry if isinstance(entry, tuple) else (entry,))


def axis_size(mesh: Mesh | AbstractMesh, name: Any, what: str) -> int:
  """The size of the mesh axis ``name``, passed as the argument ``what``; one wording for every loss."""
  if name not in mesh.shape:
    raise ValueError(f"{what}={name!r} is not an axis of the mesh; its axes are {list(mesh.axis_names)}.")
  return mesh.shape[name]


def check_layout(mesh: Any, vocab_axis: Any, token_axis: Any, n: int, vocab: int) -> None:
  """The vocab-parallel layout: a concrete mesh, V split over ``vocab_axis``, N over ``token_axis``."""
  if not isinstance(mesh, Mesh):
    raise TypeError(f"mesh must be a jax.sharding.Mesh; got {type(mesh).__name__}.")
  pv = axis_size(mesh, vocab_axis, "vocab_axis")
  if vocab % pv:
    raise ValueError(
        f"V = {vocab} classes must be divisible by the {pv} devices of vocab_axis={vocab_axis!r}.")
  if token_axis is not None:
    if token_axis == vocab_axis:
      raise ValueError(f"token_axis and vocab_axis must be different mesh axes; both are {vocab_axis!r}.")
    pt = axis_size(mesh, token_axis, "token_axis")
    if n % pt:
      raise ValueError(f"N = {n} tokens must be divisible by the {pt} devices of token_axis={token_axis!r}.")


def layout(
    hidden: ArrayLike, weight: ArrayLike, n: int, vocab: int, token_axis: Any = None
) -> tuple[Layout | None, bool]:
  """The visible layout of ``hidden [..., D]`` and ``weight [D, V]``; whether a partitioner may split them.

  Visible: an explicit-sharding mesh (the sharding is part of the traced type), a placed
  (committed, not traced) array's ``NamedSharding``, or ``token_axis`` passed by the caller. Then the
  fused loss runs under ``shard_map`` over that layout. Under ``jit`` on an Auto mesh the mesh is
  visible but not the split; the second value is then True (the partitioner decides).
  """
  sh, sw = _named_sharding(hidden), _named_sharding(weight)
  mesh = sh.mesh if sh is not None else (sw.mesh if sw is not None else None)
  if token_axis is None and (mesh is None or mesh.empty or mesh.size == 1):
    return None, False
  if mesh is None or mesh.empty:
    mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    raise ValueError(f"token_axis={token_axis!r} needs a mesh: place hidden on one (a NamedSharding) or call "
                     "inside `with jax.set_mesh(mesh)`.")
  types = dict(zip(mesh.axis_names, mesh.axis_types, strict=True))
  if any(t == AxisType.Manual for t in types.values()):  # inside shard_map: a device's own arrays
    return None, False
  traced = isinstance(hidden, Tracer)
  known = lambda a: not traced or types[a] == AxisType.Explicit  # an Auto axis's split is not in the type

  def axes_of(s: NamedSharding | None, dim: int, ndim: int) -> tuple:
    if s is None or s.mesh != mesh:
      return ()
    spec = tuple(s.spec) + (None,) * (ndim - len(s.spec))
    return tuple(a for a in _spec_axes(spec[dim]) if known(a))

  h_ndim = jnp.ndim(hidden)
  if token_axis is not None:
    tokens = _spec_axes(token_axis)
    devices = math.prod(axis_size(mesh, a, "token_axis") for a in tokens)
    if n % devices:
      raise ValueError(
          f"N = {n} tokens must be divisible by the {devices} devices of token_axis={token_axis!r}.")
  else:
    # The tokens of [..., D] flatten in order: a split of the leading axis alone is a split of N.
    tokens = axes_of(sh, 0, h_ndim) if h_ndim >= 2 else ()
    if any(axes_of(sh, i, h_ndim) for i in range(1, h_ndim - 1)) or n % math.prod(
        mesh.shape[a] for a in tokens):
      tokens = ()
  vocab_axes = axes_of(sw, 1, 2)
  vocab_axis = vocab_axes[0] if len(vocab_axes) == 1 and vocab_axes[0] not in tokens else None
  if vocab_axis is not None and vocab % mesh.shape[vocab_axis]:
    vocab_axis = None
  explicit = any(t == AxisType.Explicit for t in types.values())
  if token_axis is None and not explicit and traced:  # an Auto mesh under jit: the partitioner decides
    return None, True
  if token_axis is None and not explicit and not tokens and vocab_axis is None:
    return None, False
  return Layout(mesh, tokens, vocab_axis), False


def plan(mode: str, reduction: str, n: int, d: int, vocab: int, token_block: int | None,
         vocab_block: int | None, where: tuple[Layout | None, bool]) -> tuple[Mode, int]:
  """The schedule and its block size for ``n`` tokens and ``vocab`` classes, per device under a layout."""
  lay, partitioned = where
  if lay is not None:
    n, vocab = n // lay.size(lay.tokens), vocab // lay.size(_spec_axes(lay.vocab))
  mode = choose_mode(mode, reduction, n, d, partitioned)
  if mode == "fast":
    return mode, block_size("token_block", token_block, vocab, n)
  return mode, block_size("vocab_block", vocab_block, n, vocab)


@functools.lru_cache(maxsize=128)
def program(fn, static: tuple, mesh: Mesh | AbstractMesh, in_specs: tuple, out_specs: Any):
  """``fn(*static, *args)`` under ``shard_map``, and its ``jit``: built once per configuration and mesh.

  Keyed on the module-level ``fn`` and its hashable static configuration (not
  on a fresh closure), so a repeated eager call reuses the compiled program.
  """
  mapped = jax.shard_map(functools.partial(fn, *static), mesh=mesh, in_specs=in_specs, out_specs=out_specs)
  return mapped, jax.jit(mapped)


def on_mesh(fn, static: tuple, mesh, in_specs, out_specs):
  """``shard_map`` of ``fn(*static, ...)`` that first moves its inputs to the layout ``in_specs`` asks for.

  Inside a trace (``jit``, ``grad``) an Auto mesh lets the partitioner reshard;
  concrete inputs are placed with ``device_put``, and an Explicit mesh, where
  sharding is part of the type, uses ``jax.reshard``.
  """
  _, compiled = program(fn, static, mesh, tuple(in_specs), out_specs)
  explicit = any(t == AxisType.Explicit for t in mesh.axis_types)

  def place(a, spec):
    s = NamedSharding(mesh, spec)
    if explicit:
      return jax.reshard(a, s)
    return a if isinstance(a, Tracer) else jax.device_put(a, s)

  def run(*args):
    args = [jax.tree.map(place, a, s) for a, s in zip(args, in_specs, strict=True)]
    # Always the jitted program, cached across calls (see program): eagerly it is compiled once
    # instead of dispatched op by op on every device (also under an eager grad or vmap); inside an
    # outer jit it is inlined.
    return compiled(*args)

  return run


def _core_call(spec: Spec, lay: Layout | None, h, w, b, aux, coef=None):
  """The token schedule (with ``coef``) or the vocabulary schedule, on one device or under ``lay``'s mesh."""
  fast = coef is not None
  if lay is None:
    return _token_core(spec, h, w, b, aux, coef) if fast else vocab_core(spec, h, w, b, aux)
  tok, voc = lay.tokens or None, lay.vocab
  aux_specs = {"labels": (P(tok),), "logits": (P(tok, voc),),
               "hidden": (P(tok, None), P(None, voc), P(voc))}[spec.teacher]
  spec = spec._replace(token_axis=tok, axis_name=voc)
  in_specs = (P(tok, None), P(None, voc), P(voc), aux_specs)
  if fast:
    return on_mesh(_token_core, (spec,), lay.mesh, (*in_specs, P(tok)), (P(), P(tok), P(tok)))(
        h, w, b, aux, coef)
  return on_mesh(vocab_core, (spec,), lay.mesh, in_specs, (P(tok), P(tok)))(h, w, b, aux)


def run(
    spec: Spec, mode: str, reduction: Reduction, normalizer, token_shape, h, w, b, aux, weights, token_mask,
    lay: Layout | None = None,
):
  """The reduced loss, the per-token losses (masked, weighted; ``token_shape``) and the per-token logsumexp.

  The fast mode needs the coefficient of every token's loss in the reduced
  output before the backward pass; :func:`jaxdiv._reduction.reduce` is linear
  in the losses, so that coefficient is its gradient, taken once here. Under a
  layout ``lay`` the schedule runs under ``shard_map``, a device's own tokens
  (and classes), with ``spec.block`` a block of them.
  """

  def reduce(per_token):
    return _reduction.reduce(per_token.reshape(token_shape), reduction, weight=weights.reshape(token_shape),
                             normalizer=normalizer)

  if mode == "fast":
    coef = weights * jax.grad(reduce)(jnp.zeros_like(weights))
    total, loss, lse = cast(tuple[jax.Array, jax.Array, jax.Array],
                            _core_call(spec, lay, h, w.astype(h.dtype), b, aux, jax.lax.stop_gradient(coef)))
    return total, jnp.where(token_mask, weights * loss, 0).reshape(token_shape), jax.lax.stop_gradient(lse)
  loss, lse = cast(tuple[jax.Array, jax.Array], _core_call(spec, lay, h, w, b, aux))
  per_token = jnp.where(token_mask, weights * jnp.where(token_mask, loss, 0), 0)
  return reduce(per_token), per_token.reshape(token_shape), jax.lax.stop_gradient(lse)


# --------------------------------------------------------------------------- #
# Labels, class masks, token weights and side outputs
# --------------------------------------------------------------------------- #


def prepare_labels(labels, token_shape, ignore_index, shift_labels, class_weights, vocab_size, dt):
  """Flat labels, mask of counted tokens, per-token weights (the label's class weight; 0 if not counted)."""
  y = v.as_integer("labels", labels)
  if y.shape != token_shape:
    raise ValueError(
        f"labels must have the shape of hidden without its last axis, {list(token_shape)}; "
        f"got {list(y.shape)}."
    )
  ignore_index = _options.ignore_index(ignore_index)
  y = v.wide_labels(y)  # no silent narrowing: range checks in a wide type, then int32 indices
  active = jnp.ones(y.shape, bool) if ignore_index is None else y != ignore_index
  if shift_labels:
    if y.ndim == 0 or y.shape[-1] == 0:
      raise ValueError("shift_labels=True needs a sequence axis: labels of shape [..., T] with T >= 1.")
    y = jnp.concatenate([y[..., 1:], y[..., :1]], axis=-1)
    active = jnp.concatenate([active[..., 1:], jnp.zeros_like(active[..., :1])], axis=-1)
  raw = y.dtype == jnp.int32 and ignore_index is None and not shift_labels
  y, active = y.reshape(-1), active.reshape(-1)
  in_range = (y >= 0) & (y < vocab_size)
  # An out-of-range label that is counted becomes -1: a NaN loss with zero gradient, never another class
  # (the schedules' own range check). int32 labels that are all counted are used as they are, which the
  # same check covers: no [N] copy of the labels beside the caller's.
  safe = y if raw else jnp.where(active, jnp.where(in_range, y, -1), 0).astype(jnp.int32)
  if class_weights is None:
    weights = active.astype(dt)
  else:
    cw = v.as_floating("class_weights", class_weights)
    if cw.shape != (vocab_size,):
      raise ValueError(f"class_weights must have shape [V] = [{vocab_size}]; got {list(cw.shape)}.")
    picked = jnp.take(cw.astype(dt), jnp.clip(safe, 0, vocab_size - 1))
    weights = jnp.where(active, jnp.where(in_range, picked, 1), 0)
  return safe, active, jax.lax.stop_gradient(weights)


def class_keep(where: ArrayLike | None, vocab: int) -> jax.Array | None:
  """``where`` (a class mask, as everywhere in jaxdiv) checked and broadcast to ``[V]``, or None."""
  if where is None:
    return None
  m = jnp.asarray(where)
  if m.dtype != jnp.bool_:
    raise TypeError(f"where must be a boolean mask; got {m.dtype}{list(m.shape)}.")
  if m.ndim > 1 or (m.ndim == 1 and m.shape[0] not in (1, vocab)):
    raise ValueError(
        f"where masks classes and must be broadcastable to [V] = [{vocab}] in the fused losses; got "
        f"{list(m.shape)}. Mask tokens with token_mask (or weights)."
    )
  return jnp.broadcast_to(m, (vocab,))


def class_mask(where: ArrayLike | None, vocab: int, b: jax.Array) -> jax.Array:
  """The bias ``[V]`` with ``-inf`` on the classes ``where`` masks."""
  keep = class_keep(where, vocab)
  return b if keep is None else jnp.where(keep, b, jnp.asarray(-jnp.inf, b.dtype))


def token_weights(
    token_shape: tuple, weights: ArrayLike | None, token_mask: ArrayLike | None, dt
) -> tuple[jax.Array, jax.Array]:
  """Flat per-token ``(weights, mask)`` from ``weights`` (float, ``token_shape``) and ``token_mask`` (bool).

  A masked token is left out entirely (its loss is not computed into anything, NaN included); a
  weight of 0 keeps the token counted with zero weight.
  """
  out = jnp.ones(token_shape, dt)
  mask = jnp.ones(token_shape, bool)
  if weights is not None:
    w = v.as_floating("weights", weights, "Per-token weights are floats; mask tokens with token_mask.")
    if w.shape != token_shape:
      raise ValueError(f"weights must have the token shape {list(token_shape)}; got {list(w.shape)}.")
    out = jax.lax.stop_gradient(w.astype(dt))
  if token_mask is not None:
    mask = jnp.asarray(token_mask)
    if mask.dtype != jnp.bool_:
      raise TypeError(f"token_mask must be a boolean mask; got {mask.dtype}{list(mask.shape)}.")
    if mask.shape != token_shape:
      raise ValueError(f"token_mask must have the token shape {list(token_shape)}; got {list(mask.shape)}.")
  return jnp.where(mask, out, 0).reshape(-1), mask.reshape(-1)


def aux_outputs(
    cfg: CEConfig, lse, reduction, weights, active, token_shape, normalizer
) -> dict[str, jax.Array]:
  """``{"logsumexp", "z_loss"}`` side outputs (no gradient): per token under ``"none"``, else reduced."""
  lse = jax.lax.stop_gradient(jnp.where(active, lse, 0))
  z_part = jnp.where(active, weights * _core.z_loss_part(cfg, lse), 0)
  if reduction == "none":
    return {"logsumexp": lse.reshape(token_shape), "z_loss": z_part.reshape(token_shape)}
  red = lambda a: _reduction.reduce(a.reshape(token_shape), reduction, weight=weights.reshape(token_shape),
                                     normalizer=normalizer)
  return {"logsumexp": red(weights * lse), "z_loss": red(z_part)}
