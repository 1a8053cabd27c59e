"""The one reduction every loss uses: semantics, all-masked batches, per-example masks, micro-batching."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxdiv
import reference as ref
from jaxdiv import _reduction

REDUCTIONS = ["none", "sum", "mean", "batchmean"]
PROPERTY = settings(max_examples=12, deadline=None, derandomize=True)


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _inputs(seed, shape=(4, 5)):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=shape).astype(np.float32)
  t = rng.normal(size=shape).astype(np.float32)
  y = rng.integers(0, shape[-1], size=shape[:-1])
  return z, t, y


# (name, call(z, t, y, **kw), per-example float64 reference(z, t, y, **kw)) for every loss family.
LOSSES = [
    ("cross_entropy", lambda z, t, y, **kw: jaxdiv.cross_entropy(z, y, **kw),
     lambda z, t, y, **kw: ref.cross_entropy(z, y, **kw)),
    ("soft_cross_entropy", lambda z, t, y, **kw: jaxdiv.soft_cross_entropy(z, _softmax(t), **kw),
     lambda z, t, y, **kw: ref.soft_cross_entropy(z, _softmax(t), **kw)),
    ("soft_cross_entropy_with_log_targets",
     lambda z, t, y, **kw: jaxdiv.soft_cross_entropy_with_log_targets(z, t, **kw),
     lambda z, t, y, **kw: ref.soft_cross_entropy(z, np.exp(ref.log_softmax(t, **kw)), **kw)),
    ("kl_divergence", lambda z, t, y, **kw: jaxdiv.kl_divergence(z, _softmax(t), **kw),
     lambda z, t, y, **kw: ref.kl_divergence(z, _softmax(t), **kw)),
    ("kl_divergence_with_log_targets",
     lambda z, t, y, **kw: jaxdiv.kl_divergence_with_log_targets(z, t, **kw),
     lambda z, t, y, **kw: ref.kl_divergence_with_log_targets(z, t, **kw)),
    ("reverse_kl_divergence", lambda z, t, y, **kw: jaxdiv.reverse_kl_divergence(z, t, **kw),
     lambda z, t, y, **kw: ref.reverse_kl_divergence(z, t, **kw)),
    ("jensen_shannon_divergence", lambda z, t, y, **kw: jaxdiv.jensen_shannon_divergence(z, t, **kw),
     lambda z, t, y, **kw: ref.jensen_shannon_divergence(z, t, **kw)),
    ("entropy", lambda z, t, y, **kw: jaxdiv.entropy(z, **kw), lambda z, t, y, **kw: ref.entropy(z, **kw)),
    ("distillation_loss", lambda z, t, y, **kw: jaxdiv.distillation_loss(z, t, temperature=2.0, **kw),
     lambda z, t, y, **kw: ref.distillation_loss(z, t, temperature=2.0, **kw)),
]
BINARY = [
    ("binary_cross_entropy", lambda z, t, **kw: jaxdiv.binary_cross_entropy(z, 1 / (1 + np.exp(-t)), **kw),
     lambda z, t, **kw: ref.binary_cross_entropy(z, 1 / (1 + np.exp(-t)), **kw)),
    ("binary_kl_divergence", lambda z, t, **kw: jaxdiv.binary_kl_divergence(z, t, **kw),
     lambda z, t, **kw: ref.binary_kl_divergence(z, t, **kw)),
    ("binary_entropy", lambda z, t, **kw: jaxdiv.binary_entropy(z, **kw),
     lambda z, t, **kw: ref.binary_entropy(z, **kw)),
    ("kl_estimator", lambda z, t, **kw: jaxdiv.kl_estimator(z, t, **kw),
     lambda z, t, **kw: ref.kl_estimator(z, t, **kw)),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name, fn, reference", LOSSES, ids=[n for n, *_ in LOSSES])
def test_categorical_reductions_with_row_mask_match_reference(name, fn, reference, reduction):
  z, t, y = _inputs(1)
  rows = np.array([True, False, True, True])[:, None]  # per-example where: [batch, 1]
  got = fn(z, t, y, where=rows, reduction=reduction)
  per_example = reference(z, t, y, where=rows)
  want = ref.reduce(per_example, reduction, weight=rows[:, 0])
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=1e-6)
  if reduction == "mean":  # the mean is over the three unmasked rows, not the four
    np.testing.assert_allclose(float(got), per_example[rows[:, 0]].mean(), rtol=2e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("axis", [None, -1])
@pytest.mark.parametrize("name, fn, reference", BINARY, ids=[n for n, *_ in BINARY])
def test_elementwise_reductions_match_reference(name, fn, reference, axis, reduction):
  z, t, _ = _inputs(2, (3, 4))
  where = np.random.default_rng(3).uniform(size=(3, 4)) > 0.3
  where[1] = False
  got = fn(z, t, axis=axis, where=where, reduction=reduction)
  per = reference(z, t, axis=axis, where=where)
  weight = where if axis is None else where.any(-1)
  np.testing.assert_allclose(np.asarray(got), ref.reduce(per, reduction, weight=weight), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("name, fn, reference", LOSSES, ids=[n for n, *_ in LOSSES])
def test_all_masked_batch_is_zero_with_zero_gradient_never_nan(name, fn, reference):
  z, t, y = _inputs(4)
  z = z.copy()
  z[0, 0] = np.nan  # masked entries may hold anything
  where = np.zeros((4, 1), bool)
  for reduction in ("mean", "batchmean", "sum"):
    loss, grad = jax.value_and_grad(
        lambda a, reduction=reduction: fn(a, t, y, where=where, reduction=reduction))(jnp.asarray(z))
    assert float(loss) == 0.0
    np.testing.assert_array_equal(np.asarray(grad), 0.0)
  assert float(fn(z, t, y, where=where, reduction="mean", normalizer=0)) == 0.0


def test_reduce_semantics_and_zero_denominator():
  loss = jnp.asarray([1.0, 2.0, 0.0, 3.0])
  weight = jnp.asarray([1.0, 1.0, 0.0, 2.0])
  assert float(_reduction.reduce(loss, "sum")) == 6.0
  assert float(_reduction.reduce(loss, "mean", weight=weight)) == 1.5
  assert float(_reduction.reduce(loss, "mean")) == 1.5
  assert float(_reduction.reduce(loss, "batchmean")) == 1.5
  assert float(_reduction.reduce(loss.reshape(2, 2), "batchmean")) == 3.0  # torch: sum / input.size(0)
  assert float(_reduction.reduce(loss, "mean", normalizer=12)) == 0.5
  assert float(_reduction.reduce(loss, "batchmean", normalizer=3.0)) == 2.0
  g = jax.grad(lambda w: _reduction.reduce(jnp.zeros(3), "mean", weight=w))(jnp.zeros(3))
  np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_bad_reduction_and_normalizer_raise_with_the_argument_named():
  z = jnp.zeros((2, 3))
  with pytest.raises(ValueError,
                     match=r"reduction must be one of \['none', 'sum', 'mean', 'batchmean'\]; got 'avg'"):
    jaxdiv.entropy(z, reduction="avg")
  with pytest.raises(ValueError, match="normalizer is only used with reduction='mean' or 'batchmean'"):
    jaxdiv.kl_divergence_with_log_targets(z, z, reduction="sum", normalizer=2)
  with pytest.raises(ValueError, match=r"normalizer must be a scalar .* got shape \[2\]"):
    jaxdiv.cross_entropy(z, jnp.zeros(2, jnp.int32), reduction="mean", normalizer=jnp.ones(2))
  with pytest.raises(TypeError, match="normalizer must be an integer or floating scalar; got bool"):
    jaxdiv.binary_cross_entropy(z, z, reduction="mean", normalizer=True)


@settings(max_examples=5, deadline=None, derandomize=True)
@given(st.integers(0, 2**31 - 1), st.sampled_from([1, 2, 4]))  # few chunk shapes: few compilations
def test_micro_batches_with_normalizer_sum_to_the_full_batch(seed, num_chunks):
  """Σ_chunks loss(chunk, normalizer=N_total) == loss(full batch), for values and gradients."""
  rng = np.random.default_rng(seed)
  batch, num_classes = 8, 5
  z = jnp.asarray(rng.normal(size=(batch, num_classes)), jnp.float32)
  y = rng.integers(0, num_classes, size=batch)
  y[rng.uniform(size=batch) < 0.3] = -100
  w = jnp.asarray(rng.uniform(0.5, 2.0, size=num_classes), jnp.float32)
  kw = {"ignore_index": -100, "class_weights": w, "label_smoothing": 0.1, "z_loss": 1e-3}

  def full(a):
    return jaxdiv.cross_entropy(a, y, reduction="mean", **kw)

  total_weight = jnp.sum(jnp.where(y != -100, w[np.where(y != -100, y, 0)], 0))
  chunks = np.array_split(np.arange(batch), num_chunks)

  def accumulated(a):
    return sum(jaxdiv.cross_entropy(a[c], y[c], reduction="mean", normalizer=total_weight, **kw)
               for c in chunks)

  np.testing.assert_allclose(float(accumulated(z)), float(full(z)), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(jax.grad(accumulated)(z)), np.asarray(jax.grad(full)(z)), rtol=1e-5,
                             atol=1e-7)


@PROPERTY
@given(st.integers(0, 2**31 - 1))
def test_micro_batches_of_a_token_mask_sum_to_the_full_batch(seed):
  """The same for a masked (padding) token batch of KL and RL estimators, normaliser = token count."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(6, 4)).astype(np.float32)
  t = rng.normal(size=(6, 4)).astype(np.float32)
  rows = rng.uniform(size=(6, 1)) < 0.7
  count = int(rows.sum())
  halves = (slice(0, 3), slice(3, 6))
  for fn in (jaxdiv.kl_divergence_with_log_targets, jaxdiv.kl_estimator):
    where = rows if fn is jaxdiv.kl_divergence_with_log_targets else np.broadcast_to(rows, z.shape)
    kw = {"where": where}
    count = int(np.broadcast_to(kw["where"], (6, 4)).any(-1).sum()) if fn is not jaxdiv.kl_estimator else int(
        np.broadcast_to(rows, z.shape).sum())
    full = fn(z, t, reduction="mean", **kw)
    parts = sum(fn(z[h], t[h], reduction="mean", normalizer=count, where=kw["where"][h]) for h in halves)
    np.testing.assert_allclose(float(parts), float(full), rtol=1e-6, atol=1e-8)
