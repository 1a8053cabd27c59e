"""Each promise of the shared kernel, tested at the point it is about.

jax's own primitives break these at exactly these points (log_softmax of an
all -inf row is NaN; logaddexp and xlogy have NaN derivatives at (-inf, -inf)
and (0, 0)); jaxdiv's kernels must not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiv import _core, _kernels, _row_losses, _rows

KL = _core.DivSpec("forward_kl")

NEG_INF = -jnp.inf


def _all_finite(tree) -> bool:
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def test_log_softmax_of_an_all_minus_inf_row_is_minus_inf_with_zero_derivatives():
  x = jnp.array([[NEG_INF, NEG_INF, NEG_INF], [0.0, NEG_INF, 1.0]])
  log_probs, shift, log_sum = _kernels.log_softmax(x, 1)
  assert not np.any(np.isnan(log_probs))
  assert np.all(log_probs[0] == NEG_INF) and log_sum[0, 0] == NEG_INF and shift[0, 0] == 0
  f = lambda a: jnp.sum(jnp.exp(_kernels.log_softmax(a, 1)[0]) * jnp.array([[1.0, 2.0, 3.0]]))
  for d in (jax.grad(f)(x), jax.jacfwd(f)(x), jax.hessian(f)(x)):
    assert _all_finite(d)
  np.testing.assert_array_equal(jax.grad(f)(x)[0], 0.0)


def test_log_softmax_keeps_the_log_sum_apart_from_a_1e30_shift():
  log_probs, shift, log_sum = _kernels.log_softmax(jnp.array([1e30, 1e30, 0.0]), 0)
  np.testing.assert_allclose(log_probs, [-np.log(2), -np.log(2), -1e30], rtol=1e-7)
  assert shift[0] == 1e30 and np.isclose(log_sum[0], np.log(2))


def test_mul_safe_zero_times_infinity_is_zero_with_finite_derivatives_of_all_orders():
  x, y = jnp.array([0.0, 0.0, 2.0]), jnp.array([NEG_INF, 3.0, 5.0])
  np.testing.assert_array_equal(_kernels.mul_safe(x, y), [0.0, 0.0, 10.0])
  f = lambda a, b: jnp.sum(_kernels.mul_safe(a, b))
  gx, gy = jax.grad(f, (0, 1))(x, y)
  np.testing.assert_array_equal(gx, [0.0, 3.0, 5.0])  # ∂/∂x = y, except 0 at (0, ±inf)
  np.testing.assert_array_equal(gy, [0.0, 0.0, 2.0])
  assert _all_finite(jax.hessian(f, (0, 1))(x, y))
  assert _all_finite(jax.jvp(f, (x, y), (jnp.ones(3), jnp.ones(3))))


def test_log_mix_of_two_zero_probabilities_is_minus_inf_with_zero_derivatives():
  lp, lq = jnp.array([NEG_INF, 0.0, -1.0]), jnp.array([NEG_INF, NEG_INF, -2.0])
  out = _kernels.log_mix(lp, lq, 0.25)
  with np.errstate(divide="ignore"):
    p, q = np.exp(np.array([-np.inf, 0.0, -1.0])), np.exp(np.array([-np.inf, -np.inf, -2.0]))
    want = np.log(0.25 * p + 0.75 * q)
  np.testing.assert_allclose(out, want, rtol=1e-7)
  f = lambda a, b: jnp.sum(jnp.exp(_kernels.log_mix(a, b, 0.25)))
  ga, gb = jax.grad(f, (0, 1))(lp, lq)
  assert ga[0] == 0 and gb[0] == 0 and _all_finite((ga, gb))
  assert _all_finite(jax.hessian(f, (0, 1))(lp, lq))


@pytest.mark.parametrize("d", [1e-6, -1e-4, 0.01, 0.2, -0.24, 0.3, -0.9, 3.0, -30.0, 80.0])
def test_kl_term_is_accurate_for_every_log_ratio(d):
  # p (e^d - 1 - d) for p = 0.3, against float64.
  p = 0.3
  lq = np.float32(np.log(p) + d)
  got = float(_kernels.kl_terms(jnp.float32(np.log(p)), jnp.float32(lq), True))
  dd = np.float64(lq) - np.float64(np.float32(np.log(p)))
  want = p * (np.expm1(dd) - dd)
  np.testing.assert_allclose(got, want, rtol=3e-6)


def test_kl_terms_with_zero_target_are_the_model_mass_with_finite_derivatives():
  p, lq = jnp.array([0.0, 0.0, 0.5]), jnp.array([-1.0, NEG_INF, NEG_INF])
  np.testing.assert_allclose(_kernels.kl_terms(p, lq, False), [np.exp(-1.0), 0.0, np.inf])
  p, lq = p[:2], lq[:2]  # (the third term, p > 0 = q, is truly infinite)
  f = lambda a, b: jnp.sum(_kernels.kl_terms(a, b, False))
  assert _all_finite(jax.grad(f, (0, 1))(p, lq))
  assert _all_finite(jax.hessian(f, (0, 1))(p, lq))


def test_kl_rows_is_exactly_zero_for_equal_logits_and_has_analytic_derivatives():
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(3, 50)), jnp.float32)
  np.testing.assert_array_equal(_row_losses.divergence_rows(z, z, 1, KL), 0.0)
  t = jnp.asarray(rng.normal(size=(3, 50)), jnp.float32)
  g = jax.grad(lambda a: jnp.sum(_row_losses.divergence_rows(a, t, 1, KL)))(z)
  np.testing.assert_allclose(g, jax.nn.softmax(z) - jax.nn.softmax(t), atol=1e-7)


@pytest.mark.parametrize("model, target", [
    ([0.5, 0.0], [1e30, 0.0]), ([0.5, 0.0, -3.0], [0.0, 1e30, 2.0]), ([1e30, 0.0], [0.0, 1e4]),
    ([-1e30, 2.0, 0.0], [3.0, -1e30, 1.0]),
    # Regression: a rounded offset = lse_z - lse_t lost 1.7e-5 of 11.0000167 here.
    ([449.0, 672.0, 1096.0, -1369.0, 1107.0, -352.75], [510.75, -3428.0, 2204.0, -827.5, -2522.0, -166.375]),
])
def test_kl_rows_when_the_two_rows_maxima_are_far_apart(model, target):
  # Regression: forming log q - log p as (z - t) - (lse_z - lse_t) cancelled
  # catastrophically here (0.32 instead of 0.47 for the first row).
  z, t = np.array(model, np.float32), np.array(target, np.float32)
  lq = z.astype(np.float64) - np.logaddexp.reduce(z.astype(np.float64))
  lp = t.astype(np.float64) - np.logaddexp.reduce(t.astype(np.float64))
  p = np.exp(lp)
  want = np.sum(np.where(p > 0, p * (lp - lq), 0.0))
  got = _row_losses.divergence_rows(jnp.asarray(z), jnp.asarray(t), 0, KL)
  np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("vocab", [65536, 65537], ids=["chunked", "prime-whole"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_rows_longer_than_the_fast_reduction_limit_match_float64(vocab, dtype):
  """Rows over 32768 classes are reduced in chunks on CPU (65536 = 2 · 32768); a
  prime length has no chunk and is reduced whole. Values and gradients agree
  with float64 either way, with masked classes and a 1e4 logit in the row."""
  import jaxdiv
  from tests import reference as ref

  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, vocab)).astype(np.float32) * 3
  x[0, :100] = -np.inf
  x[1, 7] = 1e4
  x = jnp.asarray(x, dtype)
  labels = jnp.array([105, 7, vocab - 1])
  assert (_rows.chunk(x.shape, 1) is not None) == (vocab % 2 == 0 and jax.default_backend() == "cpu")
  got, grad = jax.value_and_grad(lambda z: jnp.sum(jaxdiv.cross_entropy(z, labels)))(x)
  want = ref.cross_entropy(x, labels)
  np.testing.assert_allclose(got, np.sum(want), rtol=1e-6)
  probs = np.exp(ref.log_softmax(x))
  probs[np.arange(3), labels] -= 1
  np.testing.assert_allclose(np.asarray(grad, np.float64), probs, atol=2e-7 if dtype == jnp.float32 else 4e-3)
  p = jax.nn.softmax(jnp.asarray(rng.normal(size=(3, vocab)), jnp.float32))
  np.testing.assert_allclose(jaxdiv.soft_cross_entropy(x, p), ref.soft_cross_entropy(x, p), rtol=1e-5)
  np.testing.assert_allclose(jaxdiv.kl_divergence(x, p), ref.kl_divergence(x, p), rtol=1e-5)
  # Every reduction of the soft-target kernels is chunked too: target mass on a -inf logit (row 0) is
  # still found (+inf), and log-space targets, JSD and the gradients agree with float64.
  assert np.isinf(jaxdiv.soft_cross_entropy(x, p)[0]) and np.isinf(ref.soft_cross_entropy(x, p)[0])
  t = jnp.asarray(rng.normal(size=(3, vocab)) * 3, dtype)
  for name in ("kl_divergence_with_log_targets", "reverse_kl_divergence", "jensen_shannon_divergence"):
    np.testing.assert_allclose(getattr(jaxdiv, name)(x, t), getattr(ref, name)(x, t), rtol=1e-5, err_msg=name)
  q, atol = np.exp(ref.log_softmax(x[1:])), 2e-7 if dtype == jnp.float32 else 4e-3
  grad = jax.grad(lambda z: jnp.sum(jaxdiv.soft_cross_entropy(z, p[1:])))(x[1:])
  np.testing.assert_allclose(np.asarray(grad, np.float64), q - np.asarray(p[1:]), atol=atol)
  grad = jax.grad(lambda z: jnp.sum(jaxdiv.kl_divergence_with_log_targets(z, t)))(x)
  want = q - np.exp(ref.log_softmax(np.asarray(t[1:], np.float64)))
  np.testing.assert_allclose(np.asarray(grad[1:], np.float64), want, atol=atol)
