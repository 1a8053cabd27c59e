"""Schulman's KL estimators: reference values, accuracy near r = 1, overflow behaviour, masks, transforms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu

import jaxdiv
import reference as ref

KINDS = ["k1", "k2", "k3"]


def _tokens(seed, shape=(3, 5)):
  rng = np.random.default_rng(seed)
  lp = np.log(rng.uniform(0.01, 1.0, size=shape)).astype(np.float32)
  return lp, (lp + rng.normal(size=shape) * 0.7).astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_values_match_reference_with_masks_axis_and_reductions(kind):
  lp, ref_lp = _tokens(1)
  where = np.random.default_rng(2).uniform(size=lp.shape) > 0.3
  where[2] = False
  lp[~where] = np.nan  # padding may hold anything
  for axis in (None, -1):
    per = ref.kl_estimator(lp, ref_lp, kind, axis=axis, where=where)
    weight = where if axis is None else where.any(-1)
    for reduction in ("none", "sum", "mean", "batchmean"):
      got = jaxdiv.kl_estimator(lp, ref_lp, kind=kind, axis=axis, where=where, reduction=reduction)
      assert got.dtype == jnp.float32
      np.testing.assert_allclose(np.asarray(got), ref.reduce(per, reduction, weight), rtol=2e-6, atol=1e-7)
  grad = jax.grad(lambda a: jaxdiv.kl_estimator(a, ref_lp, kind=kind, where=where, reduction="mean"))(lp)
  assert np.all(np.isfinite(np.asarray(grad))) and np.all(np.asarray(grad)[~where] == 0)


def test_sign_conventions_k1_k2_k3():
  """r = π_ref/π: k1 = -log r = log π - log π_ref, k2 = (log r)²/2, k3 = r - 1 - log r."""
  lp, rlp = np.log(np.float32(0.5)), np.log(np.float32(0.25))
  log_r = float(rlp) - float(lp)
  for kind, want in (("k1", -log_r), ("k2", 0.5 * log_r**2), ("k3", np.exp(log_r) - 1 - log_r)):
    np.testing.assert_allclose(float(jaxdiv.kl_estimator(lp, rlp, kind=kind)), want, rtol=1e-6)


def test_k3_keeps_relative_precision_for_nearly_equal_models():
  log_r = np.array([1e-4, -1e-4, 1e-6, 3e-3, -0.2, 0.3], np.float32)
  lp = np.full_like(log_r, -2.0)
  got = np.asarray(jaxdiv.kl_estimator(lp, lp + log_r))
  d = (lp + log_r).astype(np.float64) - lp.astype(np.float64)  # the log-ratio the function receives
  want = ref.kl_estimator(np.zeros_like(d), d)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  naive = np.asarray(jnp.exp(lp + log_r - lp) - 1 - (lp + log_r - lp))
  assert abs(naive[0] - want[0]) / want[0] > 1e-2  # the textbook form loses the value


def test_k3_large_log_ratios():
  """log r → -∞ stays finite (≈ -1 - log r); log r > 88.7 overflows to +inf as e^{log r} does."""
  lp = np.array([0.0, 0.0, -100.0, -np.inf], np.float32)
  rlp = np.array([-1e4, -80.0, -5.0, -1.0], np.float32)
  got = np.asarray(jaxdiv.kl_estimator(lp, rlp))
  np.testing.assert_allclose(got[:2], [-1 + 1e4, -1 + 80.0], rtol=1e-6)
  assert got[2] == np.inf and got[3] == np.inf
  grad = jax.grad(lambda a: jnp.sum(jaxdiv.kl_estimator(a, rlp[:2])))(lp[:2])
  np.testing.assert_allclose(np.asarray(grad), [1.0, 1.0 - np.exp(-80.0)], rtol=1e-6)
  g_inf = jax.grad(lambda a: jnp.sum(jaxdiv.kl_estimator(a, rlp[3:])))(lp[3:])
  assert np.all(np.isfinite(np.asarray(g_inf)))


def test_k3_is_unbiased_for_the_exact_reverse_kl():
  """Monte Carlo mean of k3 over tokens sampled from the policy ≈ reverse_kl_divergence(policy, ref)."""
  rng = np.random.default_rng(3)
  policy, reference_logits = rng.normal(size=6), rng.normal(size=6)
  lp, rlp = ref.log_softmax(policy), ref.log_softmax(reference_logits)
  x = rng.choice(6, size=200_000, p=np.exp(lp))
  exact = float(jaxdiv.reverse_kl_divergence(policy.astype(np.float32), reference_logits.astype(np.float32)))
  for kind in ("k1", "k3"):
    est = float(jaxdiv.kl_estimator(lp[x].astype(np.float32), rlp[x].astype(np.float32), kind=kind,
                                    reduction="mean"))
    assert abs(est - exact) < 0.02 * exact + 5e-3, (kind, est, exact)


def test_transforms_and_float64_derivatives():
  lp, rlp = _tokens(4, (2, 4))
  f = lambda a, b: jaxdiv.kl_estimator(a, b, axis=-1)
  want = ref.kl_estimator(lp, rlp, axis=-1)
  np.testing.assert_allclose(np.asarray(jax.jit(f)(lp, rlp)), want, rtol=2e-6)
  np.testing.assert_allclose(np.asarray(jax.vmap(f)(lp, rlp)), want, rtol=2e-6)
  np.testing.assert_allclose(jax.jacfwd(f)(lp, rlp), jax.jacrev(f)(lp, rlp), rtol=1e-6, atol=1e-7)
  h = np.asarray(jax.hessian(lambda a: jnp.sum(f(a, rlp)))(lp)).reshape(lp.size, lp.size)
  assert np.all(np.isfinite(h))
  np.testing.assert_allclose(h, h.T, rtol=1e-6)
  with jax.enable_x64(True):
    for kind in KINDS:
      g = jax.jit(lambda a, b, kind=kind: jnp.sum(jaxdiv.kl_estimator(a, b, kind=kind, reduction="mean")))
      jtu.check_grads(g, (jnp.asarray(lp, jnp.float64), jnp.asarray(rlp, jnp.float64)), order=2,
                      modes=("fwd", "rev"), atol=1e-6, rtol=1e-6, eps=1e-6)


def test_errors_name_the_argument():
  z = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="kind must be 'k1', 'k2' or 'k3'; got 'k4'"):
    jaxdiv.kl_estimator(z, z, kind="k4")
  with pytest.raises(ValueError,
                     match=r"ref_log_probs must have the same shape as log_probs, \[2, 3\]; got \[3\]"):
    jaxdiv.kl_estimator(z, jnp.zeros(3))
  with pytest.raises(TypeError, match="log_probs must be a floating-point array; got int32"):
    jaxdiv.kl_estimator(jnp.zeros((2, 3), jnp.int32), z)
  with pytest.raises(ValueError, match=r"where must be broadcastable to the logits shape \[2, 3\]"):
    jaxdiv.kl_estimator(z, z, where=jnp.ones(2, bool))
