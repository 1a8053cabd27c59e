"""Properties and quantitative promises of the categorical losses.

The per-function contract (references, transforms, edge cases, bad input) is in
test_api.py; this module holds the identities between functions (hypothesis),
the figures the docstrings and README state, and label handling.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.experimental import checkify

import jaxdiv
import reference as ref

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True)
_NUM_CLASSES = st.integers(2, 9)
_BATCH = st.integers(1, 3)


def _logits(num_classes=_NUM_CLASSES, batch=_BATCH, scale=30.0):
  return st.tuples(batch, num_classes).flatmap(
      lambda shape: hnp.arrays(np.float32, shape, elements=st.floats(-scale, scale, width=32)))


def _pair(scale=30.0):
  elements = st.floats(-scale, scale, width=32)
  return _logits(scale=scale).flatmap(
      lambda z: st.tuples(st.just(z), hnp.arrays(np.float32, z.shape, elements=elements)))


def _softmax(x):
  return np.exp(ref.log_softmax(x)).astype(np.float32)


@PROPERTY
@given(_pair())
def test_kl_is_non_negative_and_zero_only_for_equal_distributions(pair):
  z, t = pair
  assert np.all(np.asarray(jaxdiv.kl_divergence_with_log_targets(z, t)) >= 0)
  assert np.all(np.asarray(jaxdiv.kl_divergence(z, _softmax(t))) >= 0)
  assert np.all(np.asarray(jaxdiv.reverse_kl_divergence(z, t)) >= 0)
  np.testing.assert_array_equal(np.asarray(jaxdiv.kl_divergence_with_log_targets(z, z)), 0.0)


@PROPERTY
@given(_pair())
def test_cross_entropy_is_entropy_plus_kl(pair):
  z, t = pair
  h = jaxdiv.soft_cross_entropy_with_log_targets(z, t)
  parts = jaxdiv.entropy(t) + jaxdiv.kl_divergence_with_log_targets(z, t)
  np.testing.assert_allclose(h, parts, rtol=2e-6, atol=2e-6)


@PROPERTY
@given(_pair(), st.floats(-1e3, 1e3, width=32))
def test_every_loss_is_invariant_to_adding_a_constant_to_logits(pair, c):
  z, t = pair
  zc, tc = (z + np.float32(c)).astype(np.float32), (t + np.float32(c)).astype(np.float32)
  labels = np.argmax(t, -1)
  # Shifting by c rounds the logits themselves (ulp(1e3) = 6e-5): compare against
  # the reference on the shifted inputs, and both to each other within that rounding.
  for f, args, args_c in [
      (jaxdiv.cross_entropy, (z, labels), (zc, labels)),
      (jaxdiv.kl_divergence_with_log_targets, (z, t), (zc, tc)),
      (jaxdiv.jensen_shannon_divergence, (z, t), (zc, tc)),
      (jaxdiv.entropy, (z,), (zc,)),
  ]:
    np.testing.assert_allclose(f(*args), f(*args_c), rtol=1e-4, atol=abs(c) * 4e-7 + 1e-6)


@PROPERTY
@given(_pair(scale=10.0))
def test_jsd_is_symmetric_at_one_half_and_bounded_by_log_2(pair):
  z, t = pair
  a = jaxdiv.jensen_shannon_divergence(z, t, beta=0.5)
  b = jaxdiv.jensen_shannon_divergence(t, z, beta=0.5)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(a) <= math.log(2) + 1e-6)
  assert np.all(np.asarray(a) >= 0)


@pytest.mark.parametrize("seed", range(3))
def test_jsd_beta_limits_are_forward_and_reverse_kl(seed):
  rng = np.random.default_rng(seed)
  with jax.enable_x64(True):
    z, t = rng.normal(size=(2, 6)), rng.normal(size=(2, 6))
    forward = jaxdiv.kl_divergence_with_log_targets(z, t)  # KL(P‖Q), P the target
    reverse = jaxdiv.reverse_kl_divergence(z, t)  # KL(Q‖P)
    for beta in (1e-4, 1e-6):
      np.testing.assert_allclose(jaxdiv.jensen_shannon_divergence(z, t, beta=beta) / beta, forward,
                                 rtol=10 * beta)
      np.testing.assert_allclose(jaxdiv.jensen_shannon_divergence(z, t, beta=1 - beta) / beta, reverse,
                                 rtol=10 * beta)
    # The end points follow TRL / Liger-Kernel: the normalised limits themselves.
    np.testing.assert_allclose(jaxdiv.jensen_shannon_divergence(z, t, beta=0.0), forward, rtol=1e-12)
    np.testing.assert_allclose(jaxdiv.jensen_shannon_divergence(z, t, beta=1.0), reverse, rtol=1e-12)


def test_jsd_rejects_bad_beta():
  z = jnp.zeros(3)
  with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\]; got 1.5"):
    jaxdiv.jensen_shannon_divergence(z, z, beta=1.5)
  with pytest.raises(TypeError, match="beta must be a concrete Python float"):
    jax.jit(lambda b: jaxdiv.jensen_shannon_divergence(z, z, beta=b))(0.5)


@PROPERTY
@given(_pair(scale=10.0))
def test_agrees_with_optax_where_optax_is_finite(pair):
  z, t = pair
  labels = np.argmax(t, -1)
  np.testing.assert_allclose(
      jaxdiv.cross_entropy(z, labels), optax.losses.softmax_cross_entropy_with_integer_labels(z, labels),
      rtol=1e-5, atol=1e-5)
  p = _softmax(t)
  np.testing.assert_allclose(jaxdiv.soft_cross_entropy(z, p), optax.losses.softmax_cross_entropy(z, p),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      jaxdiv.kl_divergence_with_log_targets(z, t),
      optax.losses.kl_divergence_with_log_targets(jax.nn.log_softmax(z), jax.nn.log_softmax(t)),
      rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- #
# The figures stated in the docstrings and the README
# --------------------------------------------------------------------------- #

VOCAB = 32768


def _nearly_equal(seed, eps=1e-4, rows=4):
  rng = np.random.default_rng(seed)
  t = rng.normal(size=(rows, VOCAB)).astype(np.float32)
  z = (t + eps * rng.normal(size=(rows, VOCAB))).astype(np.float32)
  return z, t


def test_tiny_kl_from_log_targets_keeps_1e_4_relative_accuracy():
  z, t = _nearly_equal(0)
  want = ref.kl_divergence_with_log_targets(z, t)
  assert 1e-9 < want.mean() < 1e-8  # KL ≈ 5e-9
  got = np.asarray(jaxdiv.kl_divergence_with_log_targets(z, t))
  assert np.max(np.abs(got / want - 1)) < 1e-4  # measured 1e-5
  got = np.asarray(jaxdiv.reverse_kl_divergence(t, z))
  assert np.max(np.abs(got / want - 1)) < 1e-4
  naive = np.asarray(
      optax.losses.kl_divergence_with_log_targets(jax.nn.log_softmax(z), jax.nn.log_softmax(t)))
  assert np.max(np.abs(naive / want - 1)) > 1.0  # the pointwise form is >100% off


def test_tiny_kl_from_probability_targets_is_limited_by_float32_log_of_the_input():
  z, t = _nearly_equal(1)
  p = _softmax(t)
  want = ref.kl_divergence(z, p)  # on the same float32 probabilities
  got = np.asarray(jaxdiv.kl_divergence(z, p))
  assert np.max(np.abs(got / want - 1)) < 3e-4  # measured 1.3e-4; see the docstring


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_give_float32_results_accurate_to_1e_6(dtype):
  rng = np.random.default_rng(2)
  z = jnp.asarray(rng.normal(size=(8, VOCAB)) * 3, dtype)
  t = jnp.asarray(rng.normal(size=(8, VOCAB)) * 3, dtype)
  labels = rng.integers(0, VOCAB, 8)
  zq, tq = np.asarray(z.astype(jnp.float32)), np.asarray(t.astype(jnp.float32))
  for got, want in [
      (jaxdiv.cross_entropy(z, labels), ref.cross_entropy(zq, labels)),
      (jaxdiv.kl_divergence_with_log_targets(z, t), ref.kl_divergence_with_log_targets(zq, tq)),
      (jaxdiv.jensen_shannon_divergence(z, t), ref.jensen_shannon_divergence(zq, tq)),
  ]:
    assert got.dtype == jnp.float32
    assert abs(float(jnp.mean(got)) / want.mean() - 1) < 1e-6


def test_ties_at_1e30_keep_log_2():
  z = jnp.array([[1e30, 1e30, 0.0], [-1e30, -1e30, -1e30]])
  np.testing.assert_allclose(jaxdiv.cross_entropy(z, jnp.array([0, 2])), [math.log(2), math.log(3)],
                             rtol=1e-7)
  np.testing.assert_allclose(jaxdiv.entropy(z), [math.log(2), math.log(3)], rtol=1e-7)


def test_float64_inputs_stay_float64_under_x64():
  with jax.enable_x64(True):
    z = jnp.zeros((2, 3), jnp.float64)
    assert jaxdiv.cross_entropy(z, jnp.array([0, 1])).dtype == jnp.float64
    assert jaxdiv.kl_divergence_with_log_targets(z, z).dtype == jnp.float64


def test_nan_in_masked_classes_reaches_neither_value_nor_gradient():
  z = jnp.array([[1.0, jnp.nan, 2.0, jnp.inf]])
  t = jnp.array([[0.5, jnp.nan, 1.0, -jnp.inf]])
  where = jnp.array([[True, False, True, False]])
  for f, target in [(jaxdiv.soft_cross_entropy_with_log_targets, t),
                    (jaxdiv.kl_divergence_with_log_targets, t),
                    (jaxdiv.jensen_shannon_divergence, t),
                    (jaxdiv.cross_entropy, jnp.array([2]))]:
    value, grad = jax.value_and_grad(lambda a, f=f, target=target: f(a, target, where=where).sum())(z)
    assert np.isfinite(value)
    np.testing.assert_array_equal(np.asarray(grad)[0, [1, 3]], 0.0)
    assert np.all(np.isfinite(grad))


def test_label_on_a_masked_class_is_infinite_but_a_fully_masked_row_is_zero():
  z = jnp.zeros((2, 3))
  where = jnp.array([[False, True, True], [False, False, False]])
  np.testing.assert_array_equal(jaxdiv.cross_entropy(z, jnp.array([0, 0]), where=where), [np.inf, 0.0])


# --------------------------------------------------------------------------- #
# Integer labels out of range
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("bad_label", [-1, 3, -100])
def test_out_of_range_label_gives_nan_loss_and_zero_gradient_never_another_class(bad_label):
  z = jnp.array([[1.0, 2.0, 3.0], [0.5, 0.1, -0.3]])
  labels = jnp.array([bad_label, 0])
  loss, grad = jax.value_and_grad(lambda a: jaxdiv.cross_entropy(a, labels).sum())(z)
  per_example = jaxdiv.cross_entropy(z, labels)
  assert np.isnan(per_example[0]) and np.isfinite(per_example[1])
  assert np.isnan(loss)  # any mean that includes it is NaN: visible
  np.testing.assert_array_equal(grad[0], 0.0)  # ... but harmless to parameters
  np.testing.assert_allclose(grad[1], jax.nn.softmax(z[1]) - jnp.array([1.0, 0.0, 0.0]), rtol=1e-6)


def test_labels_must_be_integers_with_a_hint_for_probabilities():
  with pytest.raises(TypeError,
                     match="labels must be an integer array of class indices; got float32.*soft_cross"):
    jaxdiv.cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2,)))


def test_check_labels_raises_eagerly_and_under_checkify():
  ok = jnp.array([0, 2, 1])
  assert jaxdiv.check_labels(ok, 3) is ok
  with pytest.raises(Exception, match=r"labels must lie in \[0, 3\); found 3"):
    jaxdiv.check_labels(jnp.array([0, 3]), 3)
  jaxdiv.check_labels(jnp.array([0, -100]), 3, ignore_index=-100)

  @jax.jit
  def loss(z, y):
    return jaxdiv.cross_entropy(z, jaxdiv.check_labels(y, z.shape[-1])).mean()

  err, value = checkify.checkify(loss)(jnp.zeros((2, 3)), jnp.array([1, -1]))
  assert "labels must lie in [0, 3); found -1" in err.get()
  with pytest.raises(Exception, match="found -1"):
    err.throw()
  err, value = checkify.checkify(loss)(jnp.zeros((2, 3)), jnp.array([1, 2]))
  assert err.get() is None
  np.testing.assert_allclose(value, math.log(3), rtol=1e-6)
