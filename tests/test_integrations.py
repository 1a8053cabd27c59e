"""jaxdiv in the training loops users already have: optax, optax.lbfgs, Flax nnx, Flax linen, Haiku.

Each test trains a tiny model for a few dozen steps on 320 of scikit-learn's
bundled 8x8 digits (no download) through :class:`jaxdiv.objective.Objective`
and asserts that the loss fell and the training accuracy rose; the README's
stateful linen example (batch statistics and dropout) runs as written. The libraries
come from the ``examples`` extra, which the README's test command installs,
so a missing one is an error, never a skip.

The suite runs JAX with strict dtype and rank promotion, which optax, Flax and
Haiku were not written for; their calls (model init and apply, optimiser
updates) run under the standard rules through :func:`_lenient`, while the
jaxdiv loss inside each training step stays strict.
"""

from __future__ import annotations

import contextlib
import functools
import pathlib
import re

import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from sklearn.datasets import load_digits

import jaxdiv
from jaxdiv.objective import Objective

NUM_CLASSES, HIDDEN, STEPS = 10, 32, 30


@pytest.fixture(scope="module")
def batch():
  x, y = load_digits(return_X_y=True)
  order = np.random.default_rng(0).permutation(len(y))[:320]
  return {"inputs": jnp.asarray(x[order] / 16.0, jnp.float32), "labels": jnp.asarray(y[order], jnp.int32)}


@contextlib.contextmanager
def _standard_promotion():
  with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
    yield


def _lenient(fn):
  """``fn`` traced under JAX's standard promotion rules (for third-party code)."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with _standard_promotion():
      return fn(*args, **kwargs)

  return wrapped


def _assert_learned(history):
  """``history``: [(loss, accuracy), ...] from the first step to the last."""
  (loss0, acc0), (loss1, acc1) = history[0], history[-1]
  assert np.isfinite(loss1)
  assert loss1 < 0.5 * loss0, history
  assert acc1 > acc0 + 0.3 and acc1 > 0.8, history


def _history(losses_and_aux):
  return [(float(loss), float(aux.accuracy)) for loss, aux in losses_and_aux]


def _mlp_params(key, sizes):
  keys = jax.random.split(key, len(sizes) - 1)
  return [
      {"w": jax.random.normal(k, (m, n), jnp.float32) / np.sqrt(m), "b": jnp.zeros(n, jnp.float32)}
      for k, m, n in zip(keys, sizes[:-1], sizes[1:])
  ]


def _mlp_apply(params, x):
  for layer in params[:-1]:
    x = jnp.tanh(x @ layer["w"] + layer["b"][None])
  return x @ params[-1]["w"] + params[-1]["b"][None]


def test_optax_gradient_transformation_loop(batch):
  objective = Objective(jaxdiv.cross_entropy, _mlp_apply, loss_kwargs={"label_smoothing": 0.05})
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state, batch):
    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params, batch)
    updates, opt_state = _lenient(tx.update)(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux

  params = _mlp_params(jax.random.key(0), [64, HIDDEN, NUM_CLASSES])
  opt_state, history = _lenient(tx.init)(params), []
  for _ in range(STEPS):
    params, opt_state, loss, aux = step(params, opt_state, batch)
    history.append((loss, aux))
  _assert_learned(_history(history + [objective(params, batch)]))


def test_optax_lbfgs_with_value_and_grad_from_state(batch):
  objective = Objective(jaxdiv.cross_entropy, lambda p, x: x @ p["w"] + p["b"][None])
  value_fn = objective.value_fn(batch)
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(value_fn)

  @jax.jit
  def step(params, state):
    value, grad = value_and_grad(params, state=state)
    updates, state = _lenient(opt.update)(grad, state, params, value=value, grad=grad, value_fn=value_fn)
    return optax.apply_updates(params, updates), state

  params = {"w": jnp.zeros((64, NUM_CLASSES), jnp.float32), "b": jnp.zeros(NUM_CLASSES, jnp.float32)}
  history = [objective(params, batch)]
  state = _lenient(opt.init)(params)
  for _ in range(10):
    params, state = step(params, state)
  history.append(objective(params, batch))
  _assert_learned(_history(history))


class _NnxMLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(64, HIDDEN, rngs=rngs)
    self.out = nnx.Linear(HIDDEN, NUM_CLASSES, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.tanh(self.hidden(x)))


def test_flax_nnx_optimizer(batch):
  with _standard_promotion():
    model = _NnxMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  objective = Objective(jaxdiv.cross_entropy, _lenient(lambda model, x: model(x)),
                        loss_kwargs={"label_smoothing": 0.05})

  @nnx.jit
  def step(model, optimizer, batch):
    (loss, aux), grads = nnx.value_and_grad(objective, has_aux=True)(model, batch)
    _lenient(optimizer.update)(model, grads)
    return loss, aux

  history = [step(model, optimizer, batch) for _ in range(STEPS)]
  _assert_learned(_history(history + [objective(model, batch)]))


class _LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(NUM_CLASSES)(jnp.tanh(nn.Dense(HIDDEN)(x)))


def test_flax_linen_train_state(batch):
  model = _LinenMLP()
  with _standard_promotion():
    variables = model.init(jax.random.key(0), batch["inputs"][:1])
    state = train_state.TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=optax.adam(1e-2))
  objective = Objective(
      jaxdiv.cross_entropy, _lenient(lambda params, x: state.apply_fn({"params": params}, x)))

  @jax.jit
  def step(state, batch):
    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params, batch)
    return _lenient(state.apply_gradients)(grads=grads), loss, aux

  history = []
  for _ in range(STEPS):
    state, loss, aux = step(state, batch)
    history.append((loss, aux))
  _assert_learned(_history(history + [objective(state.params, batch)]))


def test_haiku_transform(batch):
  net = hk.without_apply_rng(
      hk.transform(lambda x: hk.nets.MLP([HIDDEN, NUM_CLASSES], activation=jnp.tanh)(x)))
  params = _lenient(net.init)(jax.random.key(0), batch["inputs"][:1])
  objective = Objective(jaxdiv.cross_entropy, _lenient(net.apply))
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state, batch):
    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params, batch)
    updates, opt_state = _lenient(tx.update)(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux

  opt_state, history = _lenient(tx.init)(params), []
  for _ in range(STEPS):
    params, opt_state, loss, aux = step(params, opt_state, batch)
    history.append((loss, aux))
  _assert_learned(_history(history + [objective(params, batch)]))


# Model state (batch statistics) and randomness (dropout): objective(params, batch, state=..., rng=...).


class _LinenBatchNormMLP(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.BatchNorm(use_running_average=not train, momentum=0.8)(nn.Dense(HIDDEN)(x))
    x = nn.Dropout(0.1, deterministic=not train)(jnp.tanh(x))
    return nn.Dense(NUM_CLASSES)(x)


def test_flax_linen_batch_stats_and_dropout(batch):
  model = _LinenBatchNormMLP()
  with _standard_promotion():
    variables = model.init(jax.random.key(0), batch["inputs"][:2], train=False)
  params, state = variables["params"], {"batch_stats": variables["batch_stats"]}

  @_lenient
  def apply_fn(params, x, *, state, rng=None):
    if rng is None:  # evaluation: running averages, no dropout, the state unchanged
      return model.apply({"params": params, **state}, x, train=False), state
    return model.apply({"params": params, **state}, x, train=True, mutable=list(state), rngs={"dropout": rng})

  objective = Objective(jaxdiv.cross_entropy, apply_fn)
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, state, opt_state, batch, rng):
    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params, batch, state=state, rng=rng)
    updates, opt_state = _lenient(tx.update)(grads, opt_state, params)
    return optax.apply_updates(params, updates), aux.state, opt_state, loss, aux

  opt_state, history, initial = _lenient(tx.init)(params), [objective(params, batch, state=state)], state
  for rng in jax.random.split(jax.random.key(1), STEPS):
    params, state, opt_state, loss, aux = step(params, state, opt_state, batch, rng)
  _assert_learned(_history(history + [objective(params, batch, state=state)]))
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), initial, state)
  assert all(jax.tree.leaves(moved)), "the batch statistics were not updated"


def test_haiku_transform_with_state_batch_norm_and_dropout(batch):
  def forward(x, is_training):
    x = hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=0.8)(
        hk.Linear(HIDDEN)(x), is_training=is_training)
    x = jnp.tanh(x)
    if is_training:
      x = hk.dropout(hk.next_rng_key(), 0.1, x)
    return hk.Linear(NUM_CLASSES)(x)

  net = hk.transform_with_state(forward)
  params, state = _lenient(net.init)(jax.random.key(0), batch["inputs"][:2], is_training=True)

  @_lenient
  def apply_fn(params, x, *, state, rng=None):
    return net.apply(params, state, rng, x, is_training=rng is not None)

  objective = Objective(jaxdiv.cross_entropy, apply_fn)
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, state, opt_state, batch, rng):
    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params, batch, state=state, rng=rng)
    updates, opt_state = _lenient(tx.update)(grads, opt_state, params)
    return optax.apply_updates(params, updates), aux.state, opt_state, loss, aux

  # The first step's state: BatchNorm's moving averages are only initialised by a training call.
  _, aux = objective(params, batch, state=state, rng=jax.random.key(2))
  opt_state, history, initial = _lenient(tx.init)(params), [objective(params, batch, state=aux.state)], state
  for rng in jax.random.split(jax.random.key(1), STEPS):
    params, state, opt_state, loss, aux = step(params, state, opt_state, batch, rng)
  _assert_learned(_history(history + [objective(params, batch, state=state)]))
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), initial, state)
  assert all(jax.tree.leaves(moved)), "the batch statistics were not updated"


def test_haiku_transform_with_dropout_rng(batch):
  def forward(x):
    x = hk.dropout(hk.next_rng_key(), 0.1, jnp.tanh(hk.Linear(HIDDEN)(x)))
    return hk.Linear(NUM_CLASSES)(x)

  net = hk.transform(forward)
  params = _lenient(net.init)(jax.random.key(0), batch["inputs"][:1])
  objective = Objective(jaxdiv.cross_entropy, _lenient(lambda p, x, *, rng: net.apply(p, rng, x)))
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state, batch, rng):
    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params, batch, rng=rng)
    updates, opt_state = _lenient(tx.update)(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux

  opt_state, history = _lenient(tx.init)(params), []
  for rng in jax.random.split(jax.random.key(1), STEPS):
    params, opt_state, loss, aux = step(params, opt_state, batch, rng)
    history.append((loss, aux))
  _assert_learned(_history(history))


def test_readme_state_and_dropout_example_runs():
  readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
  block = re.search(r"<!-- objective-state-example -->\n```python\n(.*?)```", readme, re.S)
  assert block, "README.md has no objective-state-example block"
  namespace: dict = {}
  with _standard_promotion():
    exec(compile(block.group(1), "README.md", "exec"), namespace)
  assert namespace["losses"][-1] < 0.2 * namespace["losses"][0], namespace["losses"]
