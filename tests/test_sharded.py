"""Vocab-parallel losses on the simulated 8-device CPU mesh against the one-device losses.

Values and gradients must equal the one-device result to 1e-6 relative, the
compiled program must never all-gather a vocabulary-sized array, and the
functions must work eagerly, under ``jit`` with ``NamedSharding`` inputs and
with an explicit-sharding mesh.
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

N, D, V = 16, 8, 128


def _mesh(shape=(2, 4), names=("data", "vocab"), explicit=False):
  kind = AxisType.Explicit if explicit else AxisType.Auto
  return jax.make_mesh(shape, names, axis_types=(kind,) * len(shape))


def _data(seed: int):
  rng = np.random.default_rng(seed)
  z = jnp.asarray(rng.normal(size=(N, V)) * 2, jnp.float32)
  t = jnp.asarray(rng.normal(size=(N, V)) * 2, jnp.float32)
  y = jnp.asarray(rng.integers(0, V, size=N), jnp.int32)
  return z, t, y


def _assert_close(got, want, rtol=1e-6):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=rtol * max(float(np.max(np.abs(want))), 1e-30))


def _all_gathers(compiled_text: str) -> list[str]:
  return [line for line in compiled_text.splitlines() if re.search(r"\ball-gather(-start)?\(", line)]


def _gathers_vocab(compiled_text: str, vocab: int) -> list[str]:
  """All-gather instructions whose result has a dimension of size ``vocab``."""
  out = []
  for line in _all_gathers(compiled_text):
    result = line.split("=", 1)[1] if "=" in line else line
    shapes = re.findall(r"\[([\d,]*)\]", result.split("all-gather")[0])
    dims = [int(x) for shape in shapes for x in shape.split(",") if x]
    if vocab in dims:
      out.append(line)
  return out


@pytest.mark.parametrize("token_axis", [None, "data"])
def test_cross_entropy_matches_one_device(token_axis):
  z, _, y = _data(0)
  mesh = _mesh() if token_axis else _mesh((8,), ("vocab",))
  for eps in (0.0, 0.1):
    f = lambda z, eps=eps: jaxdiv.vocab_parallel_cross_entropy(
        z, y, mesh=mesh, vocab_axis="vocab", token_axis=token_axis, label_smoothing=eps)
    want = lambda z, eps=eps: jaxdiv.cross_entropy(z, y, label_smoothing=eps)
    _assert_close(f(z), want(z))
    _assert_close(jax.jit(jax.grad(lambda z, f=f: jnp.sum(f(z) * jnp.arange(N, dtype=jnp.float32))))(z),
                  jax.grad(lambda z, want=want: jnp.sum(want(z) * jnp.arange(N, dtype=jnp.float32)))(z))
  bad = jaxdiv.vocab_parallel_cross_entropy(z, y.at[0].set(V), mesh=mesh, vocab_axis="vocab")
  assert np.isnan(bad[0]) and np.all(np.isfinite(np.asarray(bad[1:])))


def test_cross_entropy_forward_mode_and_vmap():
  z, _, y = _data(1)
  mesh = _mesh()
  f = lambda z: jaxdiv.vocab_parallel_cross_entropy(z, y, mesh=mesh, vocab_axis="vocab", token_axis="data")
  _assert_close(jax.jacfwd(f)(z), jax.jacrev(lambda z: jaxdiv.cross_entropy(z, y))(z))
  batched = jax.vmap(f)(jnp.stack([z, 2 * z]))
  _assert_close(batched[1], jaxdiv.cross_entropy(2 * z, y))


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd"])
def test_divergences_match_one_device_values_and_gradients(name):
  z, t, _ = _data(2)
  mesh = _mesh()
  kw = {"mesh": mesh, "vocab_axis": "vocab", "token_axis": "data"}
  sharded, single = {
      "forward_kl": (lambda z, t: jaxdiv.vocab_parallel_kl_divergence(z, t, **kw),
             jaxdiv.kl_divergence_with_log_targets),
      "reverse_kl": (lambda z, t: jaxdiv.vocab_parallel_kl_divergence(z, t, divergence="reverse_kl", **kw),
                     jaxdiv.reverse_kl_divergence),
      "jsd": (lambda z, t: jaxdiv.vocab_parallel_jensen_shannon_divergence(z, t, beta=0.3, **kw),
              lambda z, t: jaxdiv.jensen_shannon_divergence(z, t, beta=0.3)),
  }[name]
  _assert_close(jax.jit(sharded)(z, t), single(z, t))
  weights = jnp.arange(1.0, N + 1.0)
  total = lambda f: lambda z, t: jnp.sum(f(z, t) * weights)
  got = jax.jit(jax.grad(total(sharded), (0, 1)))(z, t)
  want = jax.grad(total(single), (0, 1))(z, t)
  for g, gw in zip(got, want):
    _assert_close(g, gw)


@pytest.mark.parametrize("token_axis", [None, "data"])
def test_fused_linear_cross_entropy_matches_one_device(token_axis):
  rng = np.random.default_rng(3)
  h = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(V,)), jnp.float32)
  y = jnp.asarray(rng.integers(0, V, size=N), jnp.int32).at[::3].set(-100)
  mesh = _mesh() if token_axis else _mesh((8,), ("vocab",))
  kw = {"ignore_index": -100, "label_smoothing": 0.1, "z_loss": 1e-3, "soft_cap": 5.0}

  def sharded(h, w, b):
    return jaxdiv.vocab_parallel_fused_linear_cross_entropy(
        h, w, y, bias=b, mesh=mesh, vocab_axis="vocab", token_axis=token_axis, vocab_block=12, **kw)

  def single(h, w, b):
    return jaxdiv.cross_entropy(h @ w + b[None, :], y, reduction="mean", **kw)

  got, grads = jax.jit(jax.value_and_grad(sharded, (0, 1, 2)))(h, w, b)
  want, want_grads = jax.value_and_grad(single, (0, 1, 2))(h, w, b)
  _assert_close(got, want)
  for g, gw in zip(grads, want_grads):
    _assert_close(g, gw)
  per_token, lse = jaxdiv.vocab_parallel_fused_linear_cross_entropy(
      h, w, y, mesh=mesh, vocab_axis="vocab", token_axis=token_axis, reduction="none", return_lse=True,
      ignore_index=-100)
  _assert_close(per_token, jaxdiv.cross_entropy(h @ w, y, ignore_index=-100))
  _assert_close(lse, jax.nn.logsumexp(h @ w, axis=1))


def test_compiled_programs_never_all_gather_the_vocabulary():
  rng = np.random.default_rng(4)
  h = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
  z, t, y = _data(5)
  mesh = _mesh()
  kw = {"mesh": mesh, "vocab_axis": "vocab", "token_axis": "data"}
  programs = {
      "fused": (lambda h, w: jaxdiv.vocab_parallel_fused_linear_cross_entropy(h, w, y, **kw), (h, w)),
      "ce": (lambda z, t: jnp.sum(jaxdiv.vocab_parallel_cross_entropy(z, y, label_smoothing=0.1, **kw)),
             (z, t)),
      "jsd": (lambda z, t: jnp.sum(jaxdiv.vocab_parallel_jensen_shannon_divergence(z, t, **kw)), (z, t)),
  }
  for name, (f, args) in programs.items():
    text = jax.jit(jax.value_and_grad(f, (0, 1))).lower(*args).compile().as_text()
    assert "all-reduce" in text, name  # the psums are there ...
    assert not _gathers_vocab(text, V), (name, _gathers_vocab(text, V))  # ... and no [*, V] gather
  # The detector itself sees a vocabulary gather when there is one.
  gather = jax.shard_map(lambda z: jax.lax.all_gather(z, "vocab", axis=1, tiled=True), mesh=mesh,
                         in_specs=P("data", "vocab"), out_specs=P("data"), check_vma=False)
  sharded = jax.device_put(z, NamedSharding(mesh, P("data", "vocab")))
  assert _gathers_vocab(jax.jit(gather).lower(sharded).compile().as_text(), V)


def test_named_sharding_inputs_under_jit_and_an_explicit_mesh():
  z, t, y = _data(6)
  mesh = _mesh()
  zs = jax.device_put(z, NamedSharding(mesh, P("data", "vocab")))
  ts = jax.device_put(t, NamedSharding(mesh, P(None, "vocab")))  # a different layout is resharded
  kw = {"mesh": mesh, "vocab_axis": "vocab", "token_axis": "data"}
  f = jax.jit(lambda z, t: jaxdiv.vocab_parallel_kl_divergence(z, t, **kw))
  _assert_close(f(zs, ts), jaxdiv.kl_divergence_with_log_targets(z, t))
  explicit = _mesh(explicit=True)
  with jax.set_mesh(explicit):
    ze = jax.device_put(z, NamedSharding(explicit, P("data", "vocab")))
    loss = jax.jit(lambda z: jnp.mean(
        jaxdiv.vocab_parallel_cross_entropy(z, y, mesh=explicit, vocab_axis="vocab", token_axis="data")))(ze)
  _assert_close(loss, jnp.mean(jaxdiv.cross_entropy(z, y)))


def test_layout_errors_name_the_argument():
  z, t, y = _data(7)
  mesh = _mesh()
  with pytest.raises(ValueError, match="vocab_axis='model' is not an axis of the mesh"):
    jaxdiv.vocab_parallel_cross_entropy(z, y, mesh=mesh, vocab_axis="model")
  with pytest.raises(ValueError, match="V = 126 classes must be divisible by the 4 devices"):
    jaxdiv.vocab_parallel_cross_entropy(z[:, :126], y, mesh=mesh, vocab_axis="vocab")
  with pytest.raises(ValueError, match="N = 15 tokens must be divisible"):
    jaxdiv.vocab_parallel_kl_divergence(z[:15], t[:15], mesh=mesh, vocab_axis="vocab", token_axis="data")
  with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
    jaxdiv.vocab_parallel_cross_entropy(z, y, mesh="mesh", vocab_axis="vocab")
  with pytest.raises(ValueError, match="target_logits must have the same shape as logits"):
    jaxdiv.vocab_parallel_jensen_shannon_divergence(z, t[:, :64], mesh=mesh, vocab_axis="vocab")


def test_divergences_support_forward_mode_and_the_fused_loss_vmaps():
  z, t, y = _data(8)
  mesh = _mesh()
  kw = {"mesh": mesh, "vocab_axis": "vocab", "token_axis": "data"}
  f = lambda z: jaxdiv.vocab_parallel_kl_divergence(z, t, **kw)
  want = jax.jacrev(lambda z: jaxdiv.kl_divergence_with_log_targets(z, t))(z)
  _assert_close(jax.jit(jax.jacfwd(f))(z), want)
  rng = np.random.default_rng(9)
  hs = jnp.asarray(rng.normal(size=(2, N, D)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
  loss = jax.jit(jax.vmap(lambda h: jaxdiv.vocab_parallel_fused_linear_cross_entropy(h, w, y, **kw)))(hs)
  for i in range(2):
    _assert_close(loss[i], jaxdiv.cross_entropy(hs[i] @ w, y, reduction="mean"))
