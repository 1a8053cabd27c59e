"""The binary (sigmoid) losses: the origin note's example and their own promises."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxdiv
import reference as ref


def _logit(p):
  p = np.asarray(p, np.float64)
  return np.log(p) - np.log1p(-p)


def test_origin_note_numbers():
  # The NumPy example the project started from: BCE 0.2231 and KL 0.0367.
  bce = jaxdiv.binary_cross_entropy(jnp.asarray(_logit([0.2, 0.8]), jnp.float32), jnp.array([0, 1]))
  np.testing.assert_allclose(jnp.mean(bce), -np.log(0.8), rtol=1e-6)
  assert f"{float(jnp.mean(bce)):.4f}" == "0.2231"
  want_kl = 0.1 * np.log(0.1 / 0.2) + 0.9 * np.log(0.9 / 0.8)
  kl = jaxdiv.binary_kl_divergence(jnp.float32(_logit(0.8)), jnp.float32(_logit(0.9)))
  np.testing.assert_allclose(kl, want_kl, rtol=1e-6)
  cat = jaxdiv.kl_divergence(jnp.log(jnp.array([0.2, 0.8])), jnp.array([0.1, 0.9]))
  np.testing.assert_allclose(cat, want_kl, rtol=1e-6)
  assert f"{float(kl):.4f}" == f"{float(cat):.4f}" == "0.0367"


@pytest.mark.parametrize("logit, target, want", [
    (jnp.inf, 1.0, 0.0), (-jnp.inf, 0.0, 0.0), (jnp.inf, 0.0, jnp.inf), (-jnp.inf, 1.0, jnp.inf),
    (1e30, 1.0, 0.0), (1e30, 0.5, 5e29), (-1e30, 0.25, 2.5e29),
])
def test_infinite_and_huge_logits_give_exact_values(logit, target, want):
  got = jaxdiv.binary_cross_entropy(jnp.float32(logit), jnp.float32(target))
  np.testing.assert_allclose(got, want, rtol=1e-7)
  if np.isfinite(want) and np.isinf(logit):
    g = jax.grad(lambda z, y: jaxdiv.binary_cross_entropy(z, y), (0, 1))(jnp.float32(logit), jnp.float32(target))
    assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("logit, target_logit", [
    (3.0, jnp.inf), (3.0, -jnp.inf), (jnp.inf, jnp.inf), (-jnp.inf, -jnp.inf), (-1e30, 2.0), (0.5, 1e30),
    (jnp.inf, 2.0), (-jnp.inf, 2.0), (jnp.inf, -jnp.inf),
])
def test_bernoulli_kl_at_deterministic_outcomes(logit, target_logit):
  # Regression: [+inf, 0] is not a valid logit row, so infinite logits must not
  # reach the categorical kernel (which returned NaN for target_logits=+inf).
  got = jaxdiv.binary_kl_divergence(jnp.float32(logit), jnp.float32(target_logit))
  want = ref.binary_kl_divergence(np.float32(logit), np.float32(target_logit))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  if np.isfinite(want):
    g = jax.grad(lambda z, t: jaxdiv.binary_kl_divergence(z, t), (0, 1))(jnp.float32(logit), jnp.float32(target_logit))
    assert np.all(np.isfinite(np.asarray(g)))
    h = jax.hessian(lambda z: jaxdiv.binary_kl_divergence(z, jnp.float32(target_logit)))(jnp.float32(logit))
    assert np.isfinite(h)


def test_bool_and_integer_labels_equal_float_targets():
  z = jnp.array([-2.0, 0.5, 3.0])
  want = jaxdiv.binary_cross_entropy(z, jnp.array([0.0, 1.0, 1.0]))
  np.testing.assert_array_equal(jaxdiv.binary_cross_entropy(z, jnp.array([False, True, True])), want)
  np.testing.assert_array_equal(jaxdiv.binary_cross_entropy(z, jnp.array([0, 1, 1])), want)
  np.testing.assert_allclose(want, optax.losses.sigmoid_binary_cross_entropy(z, jnp.array([0.0, 1.0, 1.0])),
                             rtol=1e-6)


def test_axis_sums_over_labels_and_where_drops_elements():
  rng = np.random.default_rng(0)
  z, y = rng.normal(size=(4, 3, 5)).astype(np.float32), rng.uniform(size=(4, 3, 5)).astype(np.float32)
  where = rng.uniform(size=(4, 1, 5)) > 0.3
  for axis in (-1, (1, 2), None):
    np.testing.assert_allclose(jaxdiv.binary_cross_entropy(z, y, axis=axis, where=where),
                               ref.binary_cross_entropy(z, y, axis=axis, where=where), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match=r"axis=\(1, 1\) names the same axis twice"):
    jaxdiv.binary_cross_entropy(z, y, axis=(1, 1))


def test_bernoulli_kl_of_nearly_equal_distributions_keeps_relative_accuracy():
  rng = np.random.default_rng(1)
  t = rng.normal(size=1000).astype(np.float32)
  z = (t + 1e-3 * rng.normal(size=1000)).astype(np.float32)
  want = ref.binary_kl_divergence(z, t)
  assert np.median(want) < 1e-6
  got = np.asarray(jaxdiv.binary_kl_divergence(z, t))
  assert np.all(got >= 0)
  # Relative accuracy down to KL = 1e-12; below that the logits differ by about one
  # float32 ulp and the error is a few 1e-15 absolute (measured 2.8e-15: the
  # kernel's one-pass analytic renormalisation, vs 5e-16 with a second pass).
  big = want > 1e-12
  np.testing.assert_allclose(got[big], want[big], rtol=2e-3, atol=0)
  np.testing.assert_allclose(got[~big], want[~big], rtol=0, atol=5e-15)
  naive = np.asarray(optax.losses.sigmoid_binary_cross_entropy(z, jax.nn.sigmoid(t))
                     - optax.losses.sigmoid_binary_cross_entropy(t, jax.nn.sigmoid(t)))
  assert np.max(np.abs(naive - want) / want) > 10 * np.max(np.abs(got - want) / want)


def test_binary_target_type_errors_name_the_argument():
  with pytest.raises(TypeError, match="target_logits must be a floating-point array; got int32"):
    jaxdiv.binary_kl_divergence(jnp.zeros(3), jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match=r"target_probs must have the same shape as logits, \[3\]; got \[4\]"):
    jaxdiv.binary_cross_entropy(jnp.zeros(3), jnp.zeros(4))
