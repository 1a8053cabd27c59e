"""The fused losses under data parallelism: token sharding kept, one reduction of the weight gradient.

On the simulated 8-device CPU mesh, with ``hidden`` placed ``P("data", None)``
on an Auto mesh (under ``jit``) and on an Explicit mesh, every fused mode must
compile without an all-gather (of the hidden states, the logits or anything
else), return the hidden-state gradient with the token sharding, reduce the
weight gradient once, and equal the one-device result to 1e-6.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxdiv

N, D, V = 64, 16, 256


def _mesh(shape=(8,), names=("data",), explicit=False):
  kind = AxisType.Explicit if explicit else AxisType.Auto
  return jax.make_mesh(shape, names, axis_types=(kind,) * len(shape))


def _data(seed: int = 0):
  rng = np.random.default_rng(seed)
  h = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(D, V)) / 2, jnp.float32)
  b = jnp.asarray(rng.normal(size=(V,)), jnp.float32)
  y = jnp.asarray(rng.integers(0, V, size=N), jnp.int32).at[::5].set(-100)
  t = jnp.asarray(rng.normal(size=(N, V)) * 2, jnp.float32)
  return h, w, b, y, t


def _assert_close(got, want, rtol=1e-6):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=rtol * max(float(np.max(np.abs(want))), 1e-30))


def _ops(text: str, op: str) -> list[str]:
  return [line for line in text.splitlines() if re.search(rf"\b{op}(-start)?\(", line)]


def _place(mesh, h, w, b, y, t, weight_spec=None):
  weight_spec = P() if weight_spec is None else weight_spec
  put = lambda x, s: jax.device_put(x, NamedSharding(mesh, s))
  return (put(h, P("data", None)), put(w, weight_spec), put(b, P(*weight_spec[1:2])), put(y, P("data")),
          put(t, P("data", *weight_spec[1:2])))


def _ce(mode, token_axis=None, **kw):
  def loss(h, w, b, y):
    return jaxdiv.fused_linear_cross_entropy(h, w, y, bias=b, ignore_index=-100, label_smoothing=0.1,
                                             z_loss=1e-3, mode=mode, token_axis=token_axis,
                                             vocab_block=64, **kw)
  return loss


def _check(loss, mesh, args, want_loss, want_args, reduces_once=True):
  """Compiled HLO, output shardings and values/gradients of ``value_and_grad(loss)`` on the mesh."""
  f = jax.jit(jax.value_and_grad(loss, (0, 1, 2)))
  with jax.set_mesh(mesh):
    text = f.lower(*args).compile().as_text()
    value, grads = f(*args)
  assert _ops(text, "all-gather") == [], "the hidden states, logits or weight were all-gathered"
  if reduces_once:  # the [D, V] weight gradient is all-reduced once, not per block
    dw = [line for line in _ops(text, "all-reduce") if re.search(rf"f32\[{D},{V}\]", line)]
    assert len(dw) == 1, dw
  assert grads[0].sharding.spec[0] == "data", grads[0].sharding  # the hidden gradient keeps the token split
  want_value, want_grads = jax.value_and_grad(want_loss, (0, 1, 2))(*want_args)
  _assert_close(value, want_value)
  for g, gw in zip(grads, want_grads, strict=True):
    _assert_close(g, gw)


CASES = [  # (explicit mesh, mode, token_axis)
    (False, "auto", None), (False, "low_memory", None), (False, "fast", "data"),
    (True, "auto", None), (True, "fast", None), (True, "low_memory", None),
]


@pytest.mark.parametrize(("explicit", "mode", "token_axis"), CASES)
def test_cross_entropy_keeps_the_token_sharding(explicit, mode, token_axis):
  h, w, b, y, t = _data(0)
  mesh = _mesh(explicit=explicit)
  loss = _ce(mode, token_axis)
  hs, ws, bs, ys, _ = _place(mesh, h, w, b, y, t)
  # On an Auto mesh without token_axis the partitioner splits the vocabulary schedule: each block's
  # slice of the weight gradient is reduced once (no [D, V] accumulator to reduce).
  gspmd = not explicit and token_axis is None
  _check(lambda h, w, b: loss(h, w, b, ys), mesh, (hs, ws, bs), lambda h, w, b: _ce(mode)(h, w, b, y),
         (h, w, b), reduces_once=not gspmd)


def test_auto_mode_follows_the_sharding():
  """Visible split: the per-device auto rule (64/8 = 8 tokens < 2D: low_memory here; fast with more
  tokens); an Auto mesh under jit, split unseen: the vocabulary schedule, which the partitioner splits."""
  from jaxdiv import _fused_inputs as fi

  h, w, *_ = _data(0)
  mesh = _mesh(explicit=True)
  hs = jax.device_put(jnp.zeros((1024, D)), NamedSharding(mesh, P("data", None)))
  assert fi.plan("auto", "mean", 1024, D, V, None, None, fi.layout(hs, w, 1024, V))[0] == "fast"
  assert fi.plan("auto", "mean", 1024, D, V, None, None, (None, True))[0] == "low_memory"
  assert fi.plan("auto", "mean", 1024, D, V, None, None, (None, False))[0] == "fast"
  auto = _mesh()
  seen = []
  jax.jit(lambda h: seen.append(fi.layout(h, w, N, V)) or h)(
      jax.device_put(h, NamedSharding(auto, P("data", None))))
  assert seen == [(None, True)]
  with pytest.raises(ValueError, match=r"token_axis='batch' is not an axis of the mesh; its axes "
                     r"are \['data'\]"):
    jaxdiv.fused_linear_cross_entropy(jax.device_put(h, NamedSharding(auto, P())), w, jnp.zeros(N, jnp.int32),
                                      token_axis="batch")


def test_eager_placed_arrays_run_on_their_mesh():
  """An eager call reads a placed array's NamedSharding (under an eager grad the arrays are traced:
  jit the step, as in training)."""
  h, w, b, y, t = _data(1)
  mesh = _mesh()
  hs, ws, bs, ys, _ = _place(mesh, h, w, b, y, t)
  per_token = jaxdiv.fused_linear_cross_entropy(hs, ws, ys, bias=bs, ignore_index=-100, reduction="none")
  assert per_token.sharding.spec == P("data")
  _assert_close(per_token, jaxdiv.fused_linear_cross_entropy(h, w, y, bias=b, ignore_index=-100,
                                                             reduction="none"))
  _assert_close(_ce("fast")(hs, ws, bs, ys), _ce("fast")(h, w, b, y))


def test_distillation_keeps_the_token_sharding(mode="fast"):
  h, w, b, y, t = _data(2)
  mesh = _mesh(explicit=True)
  hs, ws, bs, ys, ts = _place(mesh, h, w, b, y, t)

  def loss(h, w, b, t, y):
    return jaxdiv.fused_linear_distillation(h, w, t, bias=b, divergence="jsd", beta=0.3, temperature=2.0,
                                            labels=y, ignore_index=-100, alpha=0.2, mode=mode, vocab_block=64)

  # Two terms (soft and hard), each reducing its own weight gradient once.
  f = lambda h, w, b: loss(h, w, b, ts, ys)
  g = jax.jit(jax.value_and_grad(f, (0, 1, 2)))
  with jax.set_mesh(mesh):
    text = g.lower(hs, ws, bs).compile().as_text()
    value, grads = g(hs, ws, bs)
  assert _ops(text, "all-gather") == []
  assert grads[0].sharding.spec[0] == "data"
  want_value, want_grads = jax.value_and_grad(lambda h, w, b: loss(h, w, b, t, y), (0, 1, 2))(h, w, b)
  _assert_close(value, want_value)
  for got, gw in zip(grads, want_grads, strict=True):
    _assert_close(got, gw)


@pytest.mark.parametrize(("explicit", "mode"), [(True, "auto"), (True, "low_memory"), (False, "auto")])
def test_two_dimensional_mesh_with_a_vocabulary_sharded_weight(explicit, mode):
  """("data", "model") mesh, weight split along V: on an Explicit mesh both schedules combine the row
  statistics over "model" (nothing gathered); on an Auto mesh the partitioner decides, and the answer
  is the one-device answer."""
  h, w, b, y, t = _data(3)
  mesh = _mesh((2, 4), ("data", "model"), explicit)
  hs, ws, bs, ys, _ = _place(mesh, h, w, b, y, t, P(None, "model"))
  token_axis = "data" if mode == "fast" and not explicit else None
  loss = _ce(mode, token_axis)
  f = jax.jit(jax.value_and_grad(lambda h, w, b: loss(h, w, b, ys), (0, 1, 2)))
  with jax.set_mesh(mesh):
    text = f.lower(hs, ws, bs).compile().as_text()
    value, grads = f(hs, ws, bs)
  if explicit:
    assert _ops(text, "all-gather") == []
    assert grads[0].sharding.spec[0] == "data" and grads[1].sharding.spec[1] == "model"
  want_value, want_grads = jax.value_and_grad(lambda h, w, b: _ce(mode)(h, w, b, y), (0, 1, 2))(h, w, b)
  _assert_close(value, want_value)
  for g, gw in zip(grads, want_grads, strict=True):
    _assert_close(g, gw)
