"""Structural facts about the fused kernels' compiled code (never timings).

Performance on CPU is dominated by how many full-size buffers a step writes:
every temporary is a fresh allocation, page-faulted in on each call. XLA's
``memory_analysis()`` reports the compiled temporary memory, so the number of
full-size ``[rows, classes]`` float32 temporaries of ``value_and_grad`` is a
deterministic proxy that tests can assert. The figures below are what the
kernels compile to (jax 0.10, XLA:CPU); each bound is also checked against the
optax formulation of the same loss, which is the issue's goal (temporary
memory of forward+backward no larger than optax's).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxdiv
from jaxdiv import _kernels, _row_losses, _rows
from jaxdiv.cli import bench as _bench

ROWS, CLASSES = 64, 512
FULL_F32 = ROWS * CLASSES * 4  # bytes of one full-size float32 temporary


def _inputs(kind: str, dtype):
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(ROWS, CLASSES)), dtype)
  if kind == "labels":
    return z, jnp.asarray(rng.integers(0, CLASSES, ROWS), jnp.int32)
  t = rng.normal(size=(ROWS, CLASSES))
  if kind == "probs":
    t = np.exp(t) / np.exp(t).sum(-1, keepdims=True)
  return z, jnp.asarray(t, dtype)


def _compiled(fn, z, t):
  total = lambda a, b: jnp.sum(fn(a, b).astype(jnp.float32))
  return jax.jit(jax.value_and_grad(total)).lower(z, t).compile()


def _temp_buffers(fn, z, t) -> float:
  """Compiled temporary memory of ``value_and_grad``, in full-size float32 buffers."""
  analysis = _compiled(fn, z, t).memory_analysis()
  return analysis.temp_size_in_bytes / FULL_F32


OPTAX = {
    "cross_entropy": optax.losses.softmax_cross_entropy_with_integer_labels,
    "soft_cross_entropy": optax.losses.softmax_cross_entropy,
    "kl_divergence_with_log_targets": lambda s, t: optax.losses.kl_divergence(
        jax.nn.log_softmax(s), jax.nn.softmax(t)
    ),
    "jensen_shannon_divergence": _bench._naive_jsd,  # optax has no JSD: the plain-JAX composition
}

# (loss, target kind, dtype) -> most full-size float32 temporaries allowed.
BOUNDS = {
    ("cross_entropy", "labels", "float32"): 0,
    ("cross_entropy", "labels", "bfloat16"): 0,  # no float32 copy of bf16 logits
    ("soft_cross_entropy", "probs", "float32"): 0,
    ("soft_cross_entropy", "probs", "bfloat16"): 1,  # the forward terms only
    ("kl_divergence_with_log_targets", "logits", "float32"): 2,
    ("kl_divergence_with_log_targets", "logits", "bfloat16"): 2,
    ("jensen_shannon_divergence", "logits", "float32"): 4,
    ("jensen_shannon_divergence", "logits", "bfloat16"): 5,
}


@pytest.mark.parametrize("key", sorted(BOUNDS), ids=lambda k: "-".join(k))
def test_value_and_grad_has_at_most_the_stated_full_size_temporaries(key):
  name, kind, dtype = key
  z, t = _inputs(kind, jnp.dtype(dtype))
  fn = getattr(jaxdiv, name)
  # A temporary smaller than one full-size buffer (row statistics) counts as 0.
  assert int(_temp_buffers(fn, z, t)) <= BOUNDS[key]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", sorted(OPTAX))
def test_value_and_grad_temporaries_are_no_larger_than_optax(name, dtype):
  kind = {"cross_entropy": "labels", "soft_cross_entropy": "probs"}.get(name, "logits")
  z, t = _inputs(kind, jnp.dtype(dtype))
  assert _temp_buffers(getattr(jaxdiv, name), z, t) <= _temp_buffers(OPTAX[name], z, t)


def test_cross_entropy_gradient_is_one_elementwise_pass_without_scatter():
  """softmax - onehot from the row statistics: no gather transpose (scatter-add) and no
  full-size residual; the gradient is written directly as the output."""
  z, y = _inputs("labels", jnp.float32)
  grad = jax.grad(lambda a: jnp.sum(jaxdiv.cross_entropy(a, y)))
  assert "scatter" not in str(jax.make_jaxpr(grad)(z))
  hlo = _compiled(jaxdiv.cross_entropy, z, y).as_text()
  assert " scatter(" not in hlo


def test_bfloat16_logits_get_a_bfloat16_gradient_without_a_float32_copy():
  z, y = _inputs("labels", jnp.bfloat16)
  _, g = jax.value_and_grad(lambda a: jnp.sum(jaxdiv.cross_entropy(a, y)))(z)
  assert g.dtype == jnp.bfloat16
  entry = _compiled(jaxdiv.cross_entropy, z, y).as_text().split("ENTRY")[1]
  assert f"f32[{ROWS},{CLASSES}]" not in entry  # no full-size float32 buffer in the program


@pytest.mark.parametrize(
    "kernel",
    [_rows.row_lse, _row_losses.ce_rows, _kernels.soft_cross_entropy_rows, _row_losses.divergence_rows],
    ids=lambda k: k.__name__,
)
def test_kernels_are_custom_jvp_so_forward_mode_and_hessians_work(kernel):
  assert isinstance(kernel, jax.custom_jvp)


def test_fused_gradients_match_plain_autodiff_of_the_textbook_formulas():
  z, t = _inputs("logits", jnp.float32)
  y = jnp.asarray(np.random.default_rng(1).integers(0, CLASSES, ROWS))
  p = jax.nn.softmax(t)
  cases = [
      (lambda a: jaxdiv.cross_entropy(a, y),
       lambda a: -jnp.take_along_axis(jax.nn.log_softmax(a), y[:, None], 1)),
      (lambda a: jaxdiv.soft_cross_entropy(a, p), lambda a: -jnp.sum(p * jax.nn.log_softmax(a), -1)),
      (lambda a: jaxdiv.kl_divergence_with_log_targets(a, t),
       lambda a: jnp.sum(p * (jax.nn.log_softmax(t) - jax.nn.log_softmax(a)), -1)),
  ]
  for fused, plain in cases:
    g1 = jax.grad(lambda a, fused=fused: jnp.sum(fused(a)))(z)
    g2 = jax.grad(lambda a, plain=plain: jnp.sum(plain(a)))(z)
    np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("vocab", [1024, 65536], ids=["whole-rows", "chunked-rows"])
def test_cross_entropy_of_intermediate_logits_overwrites_them_with_their_gradient(vocab):
  """Logits made inside the program (``hidden @ weight``, as in every model): value_and_grad w.r.t. hidden
  and weight needs one [N, V] float32 temporary with jaxdiv's CE (the backward recomputes the softmax and
  writes the gradient over the logits), where optax's CE keeps two."""
  n, d = 256, 32
  args = (jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((d, vocab), jnp.float32),
          jax.ShapeDtypeStruct((n,), jnp.int32))

  def full_buffers(ce):
    f = jax.value_and_grad(lambda h, w, y: jnp.sum(ce(h @ w, y)), (0, 1))
    return jax.jit(f).lower(*args).compile().memory_analysis().temp_size_in_bytes / (n * vocab * 4)

  assert int(full_buffers(jaxdiv.cross_entropy)) == 1
  assert int(full_buffers(optax.losses.softmax_cross_entropy_with_integer_labels)) == 2
