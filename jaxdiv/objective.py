"""Turn a jaxdiv loss and a model's apply function into a training objective.

:class:`Objective` builds ``loss_fn(params, batch) -> (loss, aux)``, ready for
``jax.value_and_grad(loss_fn, has_aux=True)``, ``nnx.value_and_grad`` or
``TrainState`` loops, and its :meth:`Objective.value_fn` gives the scalar
``params -> loss`` that optax's line-search optimisers (``optax.lbfgs`` with
``optax.value_and_grad_from_state``) need. It works with any parameter pytree
(optax, Flax linen, Haiku) and with Flax nnx modules passed as ``params``.

The batch is a mapping:

* ``batch["inputs"]``: the model's input, passed to ``apply_fn(params, inputs)``.
* ``batch["labels"]``: the loss's target (integer labels, target probabilities
  or teacher logits; the key is ``target_key``).
* ``batch["mask"]`` (optional): per-example boolean mask, the shape of the
  per-example loss; masked examples give 0 with zero gradient w.r.t. their
  logits whatever their logits (NaN included) or labels (padding), and leave
  the mean.
* ``batch["where"]`` (optional): boolean mask of classes, broadcastable to
  the logits (a masked vocabulary), passed to the loss as ``where``.
* ``batch["normalizer"]`` (optional): the denominator of the mean, passed to
  losses that take ``normalizer`` (micro-batches of one large batch).
* any key named in ``batch_kwargs``, passed to the loss as a keyword argument
  (e.g. ``{"labels": "labels"}`` for :func:`jaxdiv.distillation_loss`).

Model state and randomness are arguments of the call, not of the batch:
``objective(params, batch, state=state, rng=key)``. Each is passed on to
``apply_fn`` as a keyword only when given, so a stateless, deterministic
model keeps the two-argument ``apply_fn(params, inputs)``.

* ``state`` (any pytree): the model's non-trained variables, e.g. Flax linen's
  ``batch_stats`` or Haiku ``transform_with_state``'s state. ``apply_fn`` is
  then called as ``apply_fn(params, inputs, state=state)`` and must return
  ``(logits, new_state)``; the new state comes back as ``aux.state`` (no
  gradient flows into it). Flax linen:
  ``lambda p, x, *, state, rng: model.apply({"params": p, **state}, x,
  train=True, mutable=list(state), rngs={"dropout": rng})``; Haiku:
  ``lambda p, x, *, state, rng: transformed.apply(p, state, rng, x)``.
* ``rng`` (a ``jax.random`` key): passed as ``apply_fn(..., rng=rng)``, for
  dropout or any sampling in the model; split a new one for every step.

``apply_fn`` must return logits, a floating array (with ``state``, the pair
``(logits, new_state)``); anything else (a linen ``mutable=`` call's tuple
without ``state``, a dict of outputs) is a ``TypeError`` that names
``apply_fn`` and says what it returned.

The reduction belongs to the loss: a jaxdiv loss with a ``reduction``
argument reduces itself (so ``ignore_index`` and ``class_weights`` keep their
torch semantics); for any other callable returning per-example values the
objective takes the mean (or sum) over unmasked examples, and an all-masked
batch gives 0 with zero gradient.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Concatenate, Generic, Literal, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiv import _reduction

Params = TypeVar("Params")
Batch = Mapping[str, Any]

__all__ = ["Aux", "Objective"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Aux:
  """Side outputs of an :class:`Objective` (a pytree; no gradient flows through them).

  Attributes:
    per_example: ``[...]`` per-example losses, 0 where ``batch["mask"]`` is False.
    accuracy: scalar float32, the fraction of counted examples whose argmax
      logit (over unmasked classes) is the label (the argmax of the target for
      probability or logit targets).
    count: scalar float32, the number of counted (unmasked) examples.
    metrics: the loss's own side outputs (with ``return_aux``: z-loss,
      logsumexp, entropy, ...) reduced like the loss, and each extra metric of
      ``Objective.metrics`` as a mean over counted examples.
    state: the model's new state, ``apply_fn``'s second output, when the
      objective is called with ``state=``; None otherwise.
  """

  per_example: jax.Array
  accuracy: jax.Array
  count: jax.Array
  metrics: dict[str, jax.Array]
  state: Any = None


def _accepts(fn: Callable[..., Any], name: str) -> bool:
  """Whether ``fn`` takes a keyword ``name`` (checked at trace time only)."""
  try:
    return name in inspect.signature(fn).parameters
  except (TypeError, ValueError):  # a callable without a signature: the plain (logits, target) form
    return False


def _default(fn: Callable[..., Any], name: str) -> Any:
  """The value ``fn`` uses for keyword ``name`` when the caller passes none, or None.

  ``inspect.signature`` reports a ``functools.partial``'s keywords as the
  defaults, so ``partial(cross_entropy, ignore_index=-100)`` gives -100.
  """
  try:
    parameter = inspect.signature(fn).parameters.get(name)
  except (TypeError, ValueError):
    return None
  if parameter is None or parameter.default is inspect.Parameter.empty:
    return None
  return parameter.default


def _check_normalizer(source: str, value: Any) -> None:
  """Trace-time check that ``value`` is a numeric scalar, with a message naming ``source``."""
  expected = f"{source} must be an integer or floating scalar (the denominator of the mean); got "
  if isinstance(value, (bool, str, bytes)):
    raise TypeError(f"{expected}{value!r} of type {type(value).__name__}.")
  try:
    n = jnp.asarray(value)
  except TypeError as e:
    raise TypeError(f"{expected}{value!r} of type {type(value).__name__}.") from e
  if not (jnp.issubdtype(n.dtype, jnp.integer) or jnp.issubdtype(n.dtype, jnp.floating)):
    raise TypeError(f"{expected}{n.dtype}{list(n.shape)}.")
  if n.shape != ():
    raise ValueError(f"{expected}shape {list(n.shape)}. Pass one count or weight sum for the whole batch.")


def _describe(value: Any) -> str:
  """A short description of ``value`` for error messages: ``float32[8, 10]``, ``a dict with keys [...]``."""
  if isinstance(value, (jax.Array, np.ndarray)):
    return f"{value.dtype}{list(value.shape)}"
  if isinstance(value, Mapping):
    return f"a {type(value).__name__} with keys {sorted(map(str, value))}"
  if isinstance(value, (tuple, list)):
    parts = ", ".join(_describe(v) for v in value[:4]) + (", ..." if len(value) > 4 else "")
    return f"a {type(value).__name__} of {len(value)} ({parts})"
  return f"{type(value).__name__} {value!r:.60}"


def _logits(value: Any, source: str, hint: str = "") -> jax.Array:
  """``value`` as logits, or a ``TypeError`` saying that ``source`` returned something else."""
  is_array = isinstance(value, (jax.Array, np.ndarray))
  if is_array and value.ndim >= 1 and jnp.issubdtype(value.dtype, jnp.floating):
    return jnp.asarray(value)
  raise TypeError(
      f"{source} must be logits, a floating array of shape [..., num_classes]; got {_describe(value)}.{hint}"
  )


def _keyword(fn: Callable[..., Any], name: str) -> tuple[bool, bool] | None:
  """Whether ``apply_fn`` takes keyword ``name`` and whether it requires it; None when it has no signature.

  Raises a ``TypeError`` when ``name`` is ``fn``'s second positional parameter, where the objective
  passes the inputs (Haiku's ``apply(params, state, rng, *inputs)`` passed as it is).
  """
  try:
    parameters = list(inspect.signature(fn).parameters.values())
  except (TypeError, ValueError):
    return None
  positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  if positional[1:2] == [name]:
    raise TypeError(
        f"apply_fn {fn!r} takes `{name}` as its second argument, where the objective passes the inputs; "
        f"wrap it so that it reads apply_fn(params, inputs, *, {name}), e.g. for Haiku's "
        "transform_with_state `lambda p, x, *, state, rng: transformed.apply(p, state, rng, x)`."
    )
  for p in parameters:
    if p.name == name and p.kind is not p.POSITIONAL_ONLY and p.name not in positional[:2]:
      return True, p.default is p.empty
  return any(p.kind is p.VAR_KEYWORD for p in parameters) and name not in positional[:2], False


@dataclasses.dataclass(frozen=True, eq=False)
class Objective(Generic[Params]):
  """``loss_fn(params, batch) -> (loss, aux)`` from a jaxdiv loss and an apply function.

  Args:
    loss: a loss ``loss(logits, target, *, where=..., **kwargs)`` returning
      per-example values, e.g. :func:`jaxdiv.cross_entropy`,
      :func:`jaxdiv.distillation_loss` or a ``functools.partial`` of one.
    apply_fn: ``apply_fn(params, inputs) -> logits``: ``lambda p, x:
      model.apply({"params": p}, x)`` (linen), ``transformed.apply`` of
      ``hk.without_apply_rng(hk.transform(f))`` (Haiku), ``lambda model, x:
      model(x)`` (nnx, with the module as ``params``). It also receives
      ``state=`` and ``rng=`` as keywords when the objective is called with
      them, and then returns ``(logits, new_state)`` (see the module
      docstring).
    reduction: ``"mean"`` over counted examples (default) or ``"sum"``.
    loss_kwargs: fixed keyword arguments for ``loss`` (``label_smoothing``,
      ``z_loss``, ``temperature``, ...).
    batch_kwargs: keyword arguments taken from the batch, as
      ``{loss_keyword: batch_key}``.
    metrics: extra per-example metrics ``{name: fn(logits, target)}``, logged
      as means over counted examples (e.g. a KL next to a distillation loss).
    return_aux: ask the loss for its side outputs (``return_aux=True``, e.g.
      the z-loss part of :func:`jaxdiv.cross_entropy`); ignored by losses
      without that option.
    inputs_key: the batch key of the model input.
    target_key: the batch key of the loss's target.
    labels_key: the batch key of integer labels for the accuracy, if different
      from the target (distillation); defaults to the target.
    axis: the class axis of the logits.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, jaxdiv
    >>> from jaxdiv.objective import Objective
    >>> loss_fn = Objective(jaxdiv.cross_entropy, lambda w, x: x @ w, loss_kwargs={"label_smoothing": 0.1})
    >>> batch = {"inputs": jnp.eye(3), "labels": jnp.array([0, 1, 2])}
    >>> tx = optax.sgd(1.0)
    >>> @jax.jit
    ... def step(w, state, batch):
    ...   (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(w, batch)
    ...   updates, state = tx.update(grads, state)
    ...   return optax.apply_updates(w, updates), state, loss, aux
    >>> w = jnp.zeros((3, 3))
    >>> state = tx.init(w)
    >>> for _ in range(20):
    ...   w, state, loss, aux = step(w, state, batch)
    >>> print(f"{float(loss):.2f} {float(aux.accuracy):.0%}")
    0.33 100%
  """

  loss: Callable[..., Any]
  # Params is inferred from an annotated apply_fn; the second member types an unannotated lambda's
  # parameters as Any (Objective[Any]) where pyright would otherwise give them `object`.
  apply_fn: Callable[Concatenate[Params, ...], Any] | Callable[..., Any]
  reduction: Literal["mean", "sum"] = "mean"
  loss_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  batch_kwargs: Mapping[str, str] = dataclasses.field(default_factory=dict)
  metrics: Mapping[str, Callable[[jax.Array, Any], jax.Array]] = dataclasses.field(default_factory=dict)
  return_aux: bool = False
  inputs_key: str = "inputs"
  target_key: str = "labels"
  labels_key: str | None = None
  axis: int = -1

  def __post_init__(self) -> None:
    if self.reduction not in ("mean", "sum"):
      raise ValueError(f"reduction must be 'mean' or 'sum'; got {self.reduction!r}.")
    if not callable(self.loss) or not callable(self.apply_fn):
      raise TypeError(f"loss and apply_fn must be callable; got {self.loss!r} and {self.apply_fn!r}.")
    if self.loss_kwargs.get("normalizer") is not None:
      _check_normalizer("loss_kwargs['normalizer']", self.loss_kwargs["normalizer"])

  # state and rng are not keyword-only: nnx.value_and_grad binds every argument to a position.
  def __call__(
      self, params: Params, batch: Batch, state: Any = None, rng: jax.Array | None = None
  ) -> tuple[jax.Array, Aux]:
    """The scalar loss and its :class:`Aux` for ``params`` on ``batch``.

    Args:
      params: the trained parameters, ``apply_fn``'s first argument (the
        argument that ``jax.value_and_grad`` differentiates).
      batch: the batch mapping described in the module docstring.
      state: the model's state (a pytree), for a model that returns
        ``(logits, new_state)``; the new state is ``aux.state``.
      rng: a ``jax.random`` key for the model's randomness (dropout), passed to
        ``apply_fn`` as ``rng=``; use a new one for every step.

    Examples:
      A model with a running mean of its inputs as state, and dropout:

      >>> import jax, jax.numpy as jnp, jaxdiv
      >>> from jaxdiv.objective import Objective
      >>> def apply_fn(w, x, *, state, rng):
      ...   keep = jax.random.bernoulli(rng, 0.9, x.shape)
      ...   logits = jnp.where(keep, x / 0.9, 0.0) @ w
      ...   return logits, {"mean": 0.9 * state["mean"] + 0.1 * jnp.mean(x, axis=0)}
      >>> objective = Objective(jaxdiv.cross_entropy, apply_fn)
      >>> batch = {"inputs": jnp.eye(3), "labels": jnp.array([0, 1, 2])}
      >>> state = {"mean": jnp.zeros(3)}
      >>> (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(
      ...     jnp.zeros((3, 3)), batch, state=state, rng=jax.random.key(0))
      >>> state = aux.state
      >>> print(f"{float(loss):.3f}", state["mean"])
      1.099 [0.0333 0.0333 0.0333]
    """
    for key in (self.inputs_key, self.target_key, *self.batch_kwargs.values()):
      if key not in batch:
        raise KeyError(f"batch has no {key!r} entry; it has {sorted(batch)}.")
    logits, new_state = self._apply(params, batch[self.inputs_key], state, rng)
    target = batch[self.target_key]
    axis = self.axis % logits.ndim
    row_shape = logits.shape[:axis] + logits.shape[axis + 1 :]
    mask = self._row_mask(batch, row_shape)
    where = self._where(batch, logits.shape, mask, axis)

    kwargs = dict(self.loss_kwargs)
    kwargs.update({name: batch[key] for name, key in self.batch_kwargs.items()})
    if where is not None:
      if not _accepts(self.loss, "where"):
        raise TypeError(f"batch has a 'mask' or 'where' entry but the loss {self.loss!r} takes no `where`.")
      kwargs["where"] = where
    if self.axis != -1:
      kwargs["axis"] = self.axis

    metrics: dict[str, jax.Array] = {}
    if _accepts(self.loss, "reduction"):
      reduced_kwargs = dict(kwargs, reduction=self.reduction)
      if "normalizer" in batch and _accepts(self.loss, "normalizer"):
        _check_normalizer("batch['normalizer']", batch["normalizer"])
        reduced_kwargs["normalizer"] = batch["normalizer"]
      if self.return_aux and _accepts(self.loss, "return_aux"):
        loss, parts = self.loss(logits, target, **reduced_kwargs, return_aux=True)
        metrics.update(parts)
      else:
        loss = self.loss(logits, target, **reduced_kwargs)
      per_example = jax.lax.stop_gradient(self.loss(logits, target, **kwargs, reduction="none"))
      per_example = _masked(per_example, mask)
    else:
      per_example = _masked(self.loss(logits, target, **kwargs), mask)
      loss = _reduction.reduce(per_example, self.reduction, weight=mask)
      per_example = jax.lax.stop_gradient(per_example)

    counted = self._counted(batch, target, mask, row_shape)
    count = jnp.asarray(per_example.size if counted is None else jnp.sum(counted), jnp.float32)
    stopped = jax.lax.stop_gradient(logits)
    correct = self._correct(stopped, batch, target, where, axis)
    accuracy = _mean(correct, counted, count)
    for name, fn in self.metrics.items():
      metrics[name] = _mean(jnp.asarray(fn(stopped, target)), counted, count)
    return loss, Aux(per_example, accuracy, count, metrics, new_state)

  def _apply(self, params: Params, inputs: Any, state: Any, rng: jax.Array | None) -> tuple[jax.Array, Any]:
    """``apply_fn`` called with the keywords given, its output checked: (logits, new state or None)."""
    extra = {name: value for name, value in (("state", state), ("rng", rng)) if value is not None}
    for name in ("state", "rng"):
      takes = _keyword(self.apply_fn, name)
      if takes is None:
        continue
      accepts, requires = takes
      if name in extra and not accepts:
        raise TypeError(
            f"The objective was called with {name}= but apply_fn {self.apply_fn!r} takes no `{name}` "
            f"keyword; define it as apply_fn(params, inputs, *, {name}, ...)."
        )
      if name not in extra and requires:
        what = "the model's state: objective(params, batch, state=state)" if name == "state" else (
            "a new jax.random key every step: objective(params, batch, rng=key)")
        raise TypeError(f"apply_fn {self.apply_fn!r} requires `{name}`; call the objective with {what}.")
    out = self.apply_fn(params, inputs, **extra)
    if state is None:
      hint = ""
      if isinstance(out, (tuple, list)) and len(out) == 2:
        hint = (
            " If the model also returns its new state (Flax linen with mutable=[...], Haiku "
            "transform_with_state), call the objective with the state, "
            "objective(params, batch, state=state), and take "
            "apply_fn(params, inputs, *, state) -> (logits, new_state); the new state is aux.state."
        )
      return _logits(out, "apply_fn's output", hint), None
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
      raise TypeError(
          f"With state=..., apply_fn must return the pair (logits, new_state); got {_describe(out)}. "
          "Return the state unchanged if the model does not update it."
      )
    logits, new_state = out
    return _logits(logits, "apply_fn's logits (the first of (logits, new_state))"), new_state

  def value_fn(
      self, batch: Batch, *, state: Any = None, rng: jax.Array | None = None
  ) -> Callable[[Params], jax.Array]:
    """``params -> loss`` on a fixed ``batch``, for ``optax.value_and_grad_from_state``.

    ``state`` and ``rng`` are passed to every call as in :meth:`__call__`; the
    new state is dropped.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, jaxdiv
      >>> from jaxdiv.objective import Objective
      >>> objective = Objective(jaxdiv.cross_entropy, lambda w, x: x @ w)
      >>> batch = {"inputs": jnp.eye(3), "labels": jnp.array([0, 1, 2])}
      >>> value_fn = objective.value_fn(batch)
      >>> opt, w = optax.lbfgs(), jnp.zeros((3, 3))
      >>> value_and_grad = optax.value_and_grad_from_state(value_fn)
      >>> @jax.jit
      ... def step(w, state):
      ...   value, grad = value_and_grad(w, state=state)
      ...   updates, state = opt.update(grad, state, w, value=value, grad=grad, value_fn=value_fn)
      ...   return optax.apply_updates(w, updates), state
      >>> state = opt.init(w)
      >>> for _ in range(5):
      ...   w, state = step(w, state)
      >>> print(f"{float(value_fn(w)):.3f}")
      0.015
    """
    return lambda params: self(params, batch, state=state, rng=rng)[0]

  def _row_mask(self, batch: Batch, row_shape: tuple[int, ...]) -> jax.Array | None:
    if batch.get("mask") is None:
      return None
    mask = jnp.asarray(batch["mask"])
    if mask.dtype != jnp.bool_ or mask.shape != row_shape:
      raise ValueError(
          f"batch['mask'] must be a boolean per-example mask of shape {list(row_shape)} (the logits "
          f"without the class axis); got {mask.dtype}{list(mask.shape)}."
      )
    return mask

  def _where(self, batch, shape, mask, axis) -> jax.Array | None:
    where = batch.get("where")
    if where is not None:
      where = jnp.asarray(where)
      if where.dtype != jnp.bool_:
        raise TypeError(f"batch['where'] must be a boolean class mask; got {where.dtype}.")
      try:
        where = jnp.broadcast_to(where, shape)
      except ValueError as e:
        raise ValueError(
            f"batch['where'] must be broadcastable to the logits shape {list(shape)}; "
            f"got {list(where.shape)}."
        ) from e
    if mask is not None:
      rows = jnp.broadcast_to(jnp.expand_dims(mask, axis), shape)
      where = rows if where is None else where & rows
    return where

  def _ignore_index(self, batch: Batch) -> Any:
    """The loss's ``ignore_index``: from the batch, ``loss_kwargs`` or the loss (a partial's keyword)."""
    for name, key in self.batch_kwargs.items():
      if name == "ignore_index":
        return batch[key]
    if "ignore_index" in self.loss_kwargs:
      return self.loss_kwargs["ignore_index"]
    return _default(self.loss, "ignore_index")

  def _counted(self, batch, target, mask, row_shape) -> jax.Array | None:
    """Examples that count for the accuracy: unmasked, and not ``ignore_index``."""
    ignore = self._ignore_index(batch)
    labels = jnp.asarray(batch[self.labels_key] if self.labels_key is not None else target)
    if ignore is None or not jnp.issubdtype(labels.dtype, jnp.integer) or labels.shape != row_shape:
      return mask
    kept = labels != ignore
    return kept if mask is None else mask & kept

  def _correct(self, logits, batch, target, where, axis) -> jax.Array:
    if where is not None:
      logits = jnp.where(where, logits, -jnp.inf)
    predicted = jnp.argmax(logits, axis=axis)
    labels = jnp.asarray(batch[self.labels_key] if self.labels_key is not None else target)
    if jnp.issubdtype(labels.dtype, jnp.floating) and labels.shape == logits.shape:
      if where is not None:
        labels = jnp.where(where, labels, -jnp.inf)
      labels = jnp.argmax(labels, axis=axis)
    return (predicted == labels.astype(predicted.dtype)).astype(jnp.float32)


def _masked(values: jax.Array, mask: jax.Array | None) -> jax.Array:
  return values if mask is None else jnp.where(mask, values, jnp.zeros_like(values))


def _mean(values: jax.Array, mask: jax.Array | None, count: jax.Array) -> jax.Array:
  total = jnp.sum(_masked(values, mask).astype(jnp.float32))
  return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.zeros_like(total))
