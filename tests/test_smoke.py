"""A fast smoke subset, run against the declared minimum versions as well as the current ones.

``.ci/run`` runs this file alone in a second environment pinned to the floors in ``pyproject.toml``
(jax, jaxlib, optax), so a floor that stops working fails CI. It touches each layer once: the core
losses (value and reverse/forward-mode derivatives), the optax drop-ins against optax itself, one fused
call in each mode and one vocab-parallel call on a simulated 8-device mesh
(Auto and Explicit axes; ``jax.make_mesh`` defaults to Explicit), forward mode included (jax 0.9.0
fails there on an Explicit mesh). It needs only pytest and what jaxdiv installs, and runs in seconds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxdiv
from jaxdiv import optax as dropin

N, V, D = 8, 32, 4


def _data(seed: int):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(N, V)) * 2
  t = rng.normal(size=(N, V)) * 2
  y = rng.integers(0, V, size=N)
  return z, t, y


def _log_softmax64(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _close(got, want, rtol=1e-5):
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=rtol)


def test_core_losses_match_float64():
  z, t, y = _data(0)
  log_q, log_p = _log_softmax64(z), _log_softmax64(t)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  _close(jaxdiv.cross_entropy(f32(z), jnp.asarray(y, jnp.int32)), -log_q[np.arange(N), y])
  _close(jaxdiv.soft_cross_entropy(f32(z), f32(np.exp(log_p))), -(np.exp(log_p) * log_q).sum(-1))
  _close(jaxdiv.kl_divergence_with_log_targets(f32(z), f32(t)), (np.exp(log_p) * (log_p - log_q)).sum(-1))
  sig = 1 / (1 + np.exp(-z[0]))
  _close(jaxdiv.binary_cross_entropy(f32(z[0]), f32(sig)), -(sig * np.log(sig) + (1 - sig) * np.log1p(-sig)))


def test_core_derivatives_are_finite_at_a_masked_class():
  z = jnp.array([[2.0, 1.0, -jnp.inf]])
  p = jnp.array([[0.7, 0.3, 0.0]])
  loss = lambda z: jnp.sum(jaxdiv.soft_cross_entropy(z, p))
  for derivative in (jax.grad(loss), jax.jacfwd(loss), jax.jit(jax.hessian(loss))):
    assert np.all(np.isfinite(np.asarray(derivative(z))))


@pytest.mark.parametrize("name", [
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "kl_divergence",
    "sigmoid_binary_cross_entropy",
])
def test_dropins_agree_with_optax_on_ordinary_inputs(name):
  z, t, y = _data(1)
  z32 = jnp.asarray(z, jnp.float32)
  target = {
      "softmax_cross_entropy": jax.nn.softmax(jnp.asarray(t, jnp.float32)),
      "softmax_cross_entropy_with_integer_labels": jnp.asarray(y, jnp.int32),
      "kl_divergence": jax.nn.softmax(jnp.asarray(t, jnp.float32)),
      "sigmoid_binary_cross_entropy": jax.nn.sigmoid(jnp.asarray(t, jnp.float32)),
  }[name]
  if name == "kl_divergence":
    z32 = jax.nn.log_softmax(z32)
  _close(getattr(dropin, name)(z32, target), getattr(optax.losses, name)(z32, target), rtol=1e-4)


@pytest.mark.parametrize("mode", ["fast", "low_memory"])
def test_fused_linear_cross_entropy_equals_the_materialised_loss(mode):
  rng = np.random.default_rng(2)
  h = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
  y = jnp.asarray(rng.integers(0, V, size=N), jnp.int32)
  fused = lambda h, w: jaxdiv.fused_linear_cross_entropy(h, w, y, mode=mode, token_block=4, vocab_block=8)
  naive = lambda h, w: jnp.mean(jaxdiv.cross_entropy(h @ w, y))
  got, got_grads = jax.jit(jax.value_and_grad(fused, (0, 1)))(h, w)
  want, want_grads = jax.value_and_grad(naive, (0, 1))(h, w)
  _close(got, np.asarray(want))
  for g, gw in zip(got_grads, want_grads):
    _close(g, np.asarray(gw))


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_vocab_parallel_cross_entropy_on_a_simulated_mesh_in_both_modes(axis_type):
  if jax.device_count() < 8:
    pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/conftest.py sets it)")
  z, _, y = _data(3)
  z, y = jnp.asarray(z, jnp.float32), jnp.asarray(y, jnp.int32)
  kind = getattr(jax.sharding.AxisType, axis_type)
  mesh = jax.make_mesh((2, 4), ("data", "vocab"), axis_types=(kind, kind))
  sharded = lambda z: jaxdiv.vocab_parallel_cross_entropy(
      z, y, mesh=mesh, vocab_axis="vocab", token_axis="data")
  single = lambda z: jaxdiv.cross_entropy(z, y)
  _close(jax.jit(sharded)(z), np.asarray(single(z)))
  weights = jnp.arange(1.0, N + 1.0)
  total = lambda f: lambda z: jnp.sum(f(z) * weights)
  _close(jax.jit(jax.grad(total(sharded)))(z), np.asarray(jax.grad(total(single))(z)))
  _close(jax.jacfwd(sharded)(z), np.asarray(jax.jacrev(single)(z)))
