"""Gaussian KL and entropy: float64 references, accuracy for nearly equal distributions,
the [-80, 80] log-variance range, every transform, hypothesis properties and errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import test_util as jtu
from jax.flatten_util import ravel_pytree

import jaxdiv
import reference as ref

F32 = jnp.float32


def _f32(*arrays):
  return [jnp.asarray(a, F32) for a in arrays]


def _diag_args(rng, shape=(4, 3)):
  return [rng.normal(size=shape), rng.normal(size=shape), rng.normal(size=shape), rng.normal(size=shape)]


def _tril(rng, batch, k):
  """Well-conditioned random lower-triangular factors with diagonals of both signs."""
  low = np.tril(rng.normal(size=batch + (k, k)) * 0.5, -1)
  diag = rng.uniform(0.5, 2.0, size=batch + (k,)) * rng.choice([-1.0, 1.0], size=batch + (k,))
  return low + diag[..., :, None] * np.eye(k)


def _mvn_args(rng, batch=(4,), k=2):
  return [rng.normal(size=batch + (k,)), _tril(rng, batch, k),
          rng.normal(size=batch + (k,)), _tril(rng, batch, k)]


# The public functions, each with float64 inputs and its reference.
def _functions():
  rng = np.random.default_rng(0)
  diag = _diag_args(rng)
  mvn = _mvn_args(rng)
  return {
      "gaussian_kl_divergence": (jaxdiv.gaussian_kl_divergence, ref.gaussian_kl_divergence, diag),
      "gaussian_kl_divergence_log_scale": (
          lambda *a: jaxdiv.gaussian_kl_divergence(*a, parameterization="log_scale"),
          lambda *a: ref.gaussian_kl_divergence(*a, parameterization="log_scale"),
          diag,
      ),
      "standard_normal_kl_divergence": (
          jaxdiv.standard_normal_kl_divergence,
          lambda m, lv: ref.gaussian_kl_divergence(m, lv, 0 * m, 0 * lv),
          diag[:2],
      ),
      "gaussian_entropy": (jaxdiv.gaussian_entropy, ref.gaussian_entropy, diag[1:2]),
      "multivariate_normal_kl_divergence": (
          jaxdiv.multivariate_normal_kl_divergence, ref.multivariate_normal_kl_divergence, mvn
      ),
      "multivariate_normal_entropy": (
          jaxdiv.multivariate_normal_entropy, ref.multivariate_normal_entropy, mvn[1:2]
      ),
      "gaussian_cross_entropy": (jaxdiv.gaussian_cross_entropy, ref.gaussian_cross_entropy_exact, diag),
      "gaussian_cross_entropy_log_scale": (
          lambda *a: jaxdiv.gaussian_cross_entropy(*a, parameterization="log_scale"),
          lambda *a: ref.gaussian_cross_entropy_exact(*a, parameterization="log_scale"),
          diag,
      ),
      "multivariate_normal_cross_entropy": (
          jaxdiv.multivariate_normal_cross_entropy, lambda *a: ref.mvn_exact("cross_entropy", *a), mvn
      ),
  }


FUNCTIONS = _functions()
NAMES = sorted(FUNCTIONS)


# --------------------------------------------------------------------------- #
# Values and transforms
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("transform", ["eager", "jit", "vmap"])
def test_value_matches_float64_reference(name, transform):
  fn, reference, args = FUNCTIONS[name]
  inputs = _f32(*args)
  want = reference(*[np.asarray(a) for a in inputs])
  f = {"eager": fn, "jit": jax.jit(fn), "vmap": jax.vmap(fn)}[transform]
  got = f(*inputs)
  assert got.dtype == F32 and got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), want, rtol=3e-6, atol=1e-6)


def _flat(fn, inputs):
  """All arguments as one flat vector (one compilation per transform, not one per argument)."""
  x, unravel = ravel_pytree(list(inputs))
  return x, lambda flat: fn(*unravel(flat))


@pytest.mark.parametrize("name", NAMES)
def test_derivatives_match_float64_finite_differences(name):
  fn, _, args = FUNCTIONS[name]
  with jax.enable_x64(True):
    x, f = _flat(fn, [jnp.asarray(a[:1]) for a in args])  # one example keeps it fast
    jtu.check_grads(jax.jit(lambda x: jnp.sum(f(x))), (x,), order=2, modes=("fwd", "rev"),
                    atol=1e-6, rtol=1e-6, eps=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_jacfwd_equals_jacrev_and_hessian_is_finite_and_symmetric(name):
  fn, _, args = FUNCTIONS[name]
  x, f = _flat(fn, _f32(*[a[:2] for a in args]))
  np.testing.assert_allclose(jax.jacfwd(f)(x), jax.jacrev(f)(x), rtol=1e-5, atol=1e-6)
  h = np.asarray(jax.hessian(lambda x: jnp.sum(f(x)))(x))
  assert h.shape == (x.size, x.size) and np.all(np.isfinite(h))
  np.testing.assert_allclose(h, h.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis, shape", [(None, (4, 3)), (-1, (4,)), (0, (3,)), ((0, 1), ())])
def test_axis_selects_the_event_axes(axis, shape):
  args = _f32(*_diag_args(np.random.default_rng(1)))
  got = jaxdiv.gaussian_kl_divergence(*args, axis=axis)
  want = ref.gaussian_kl_divergence(*[np.asarray(a) for a in args], axis=axis)
  assert got.shape == shape
  np.testing.assert_allclose(np.asarray(got), want, rtol=3e-6)


def test_target_broadcasts_against_a_batch_of_posteriors():
  rng = np.random.default_rng(2)
  mean, log_var = _f32(rng.normal(size=(5, 3)), rng.normal(size=(5, 3)))
  prior_mean, prior_log_var = _f32(rng.normal(size=3), rng.normal(size=3))
  got = jaxdiv.gaussian_kl_divergence(mean, log_var, prior_mean, prior_log_var)
  against_prior = lambda m, lv: jaxdiv.gaussian_kl_divergence(m, lv, prior_mean, prior_log_var)
  want = jax.vmap(against_prior)(mean, log_var)
  np.testing.assert_array_equal(got, want)


def test_log_scale_is_log_var_halved():
  args = _f32(*_diag_args(np.random.default_rng(3)))
  by_var = jaxdiv.gaussian_kl_divergence(args[0], 2 * args[1], args[2], 2 * args[3])
  by_scale = jaxdiv.gaussian_kl_divergence(*args, parameterization="log_scale")
  np.testing.assert_allclose(by_var, by_scale, rtol=1e-6)


def test_standard_normal_kl_is_the_general_kl_against_zeros():
  mean, log_var = _f32(*_diag_args(np.random.default_rng(4))[:2])
  zeros = jnp.zeros_like(mean)
  np.testing.assert_array_equal(
      jaxdiv.standard_normal_kl_divergence(mean, log_var),
      jaxdiv.gaussian_kl_divergence(mean, log_var, zeros, zeros),
  )


def test_entropies_match_scipy():
  from scipy import stats

  rng = np.random.default_rng(5)
  log_var = rng.normal(size=3)
  want = sum(stats.norm(scale=np.exp(0.5 * lv)).entropy() for lv in log_var)
  np.testing.assert_allclose(jaxdiv.gaussian_entropy(jnp.asarray(log_var)), want, rtol=1e-6)
  tril = _tril(rng, (), 3)
  want = stats.multivariate_normal(cov=tril @ tril.T).entropy()
  np.testing.assert_allclose(jaxdiv.multivariate_normal_entropy(jnp.asarray(tril, F32)), want, rtol=1e-6)


def test_low_precision_inputs_are_accumulated_in_float32():
  args = [jnp.asarray(a, jnp.bfloat16) for a in _diag_args(np.random.default_rng(6))]
  got = jaxdiv.gaussian_kl_divergence(*args)
  assert got.dtype == F32
  want = ref.gaussian_kl_divergence(*[np.asarray(a.astype(F32)) for a in args])
  np.testing.assert_allclose(np.asarray(got), want, rtol=3e-6)


def test_float64_inputs_stay_float64():
  with jax.enable_x64(True):
    args = [jnp.asarray(a) for a in _mvn_args(np.random.default_rng(7))]
    got = jaxdiv.multivariate_normal_kl_divergence(*args)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, ref.multivariate_normal_kl_divergence(*args), rtol=1e-12)


# --------------------------------------------------------------------------- #
# Accuracy where textbook forms cancel, and the finite range
# --------------------------------------------------------------------------- #


def _nearly_equal(rng, n, gap):
  """float32 pairs whose means and log-scales differ by about ``gap``."""
  m2, s2 = (rng.normal(size=n).astype(np.float32) for _ in range(2))
  m1 = (m2 + np.float32(gap) * rng.choice([-1, 1], size=n)).astype(np.float32)
  s1 = (s2 + np.float32(gap) * rng.choice([-1, 1], size=n)).astype(np.float32)
  return m1, s1, m2, s2


@pytest.mark.parametrize("parameterization", ["log_scale", "log_var"])
def test_nearly_equal_diagonal_gaussians_keep_float32_relative_accuracy(parameterization):
  m1, s1, m2, s2 = _nearly_equal(np.random.default_rng(8), 256, 1e-6)
  if parameterization == "log_var":
    s1, s2 = 2 * s1, 2 * s2  # exact in float32
  got = jaxdiv.gaussian_kl_divergence(m1, s1, m2, s2, parameterization=parameterization, axis=None)
  # exp in float64: its 1e-16 rounding moves the KL by ~1e-22, far below 1e-5 of 1e-12.
  log_scale = lambda s: np.float64(s) if parameterization == "log_scale" else np.float64(s) / 2
  tril = lambda s: np.exp(log_scale(s)).reshape(1, 1)
  want = np.array([ref.multivariate_normal_kl_exact([a], tril(b), [c], tril(d))
                   for a, b, c, d in zip(m1, s1, m2, s2)])
  assert np.all(want > 0) and np.max(want) < 1e-10
  rel = np.abs(np.asarray(got, np.float64) - want) / want
  assert np.max(rel) < 1e-5, np.max(rel)


def test_nearly_equal_full_covariance_gaussians_keep_float32_relative_accuracy():
  rng = np.random.default_rng(9)
  for _ in range(4):
    m2, l2 = rng.normal(size=3).astype(np.float32), _tril(rng, (), 3).astype(np.float32)
    m1 = (m2 + np.float32(1e-6)).astype(np.float32)
    l1 = (l2 + np.float32(1e-6) * np.tril(rng.choice([-1.0, 1.0], size=(3, 3)))).astype(np.float32)
    got = float(jaxdiv.multivariate_normal_kl_divergence(m1, l1, m2, l2))
    want = ref.multivariate_normal_kl_exact(m1, l1, m2, l2)
    assert 0 < want < 1e-10
    assert abs(got - want) / want < 1e-4, (got, want)


def test_equal_distributions_give_exactly_zero():
  args = _f32(*_mvn_args(np.random.default_rng(10)))
  assert np.all(np.asarray(jaxdiv.multivariate_normal_kl_divergence(args[0], args[1], args[0], args[1])) == 0)
  d = _f32(*_diag_args(np.random.default_rng(10)))
  assert np.all(np.asarray(jaxdiv.gaussian_kl_divergence(d[0], d[1], d[0], d[1])) == 0)


def test_log_variances_from_minus_80_to_80_are_finite_with_finite_derivatives():
  grid = jnp.linspace(-80.0, 80.0, 33, dtype=F32)
  mean = jnp.full_like(grid, 3.0)
  f = lambda m, lv: jnp.sum(jaxdiv.standard_normal_kl_divergence(m, lv, axis=None))
  value = jaxdiv.standard_normal_kl_divergence(mean, grid, axis=None)
  want = ref.gaussian_kl_divergence(np.asarray(mean), np.asarray(grid), 0.0, 0.0, axis=None)
  np.testing.assert_allclose(np.asarray(value), want, rtol=2e-6)
  for g in jax.jit(jax.grad(f, argnums=(0, 1)))(mean, grid):
    assert np.all(np.isfinite(np.asarray(g)))
  for block in jax.tree.leaves(jax.jit(jax.hessian(f, argnums=(0, 1)))(mean, grid)):
    assert np.all(np.isfinite(np.asarray(block)))
  # Against a target anywhere in the range too, while the log-variance gap stays below 88.
  lv1, lv2 = jnp.meshgrid(grid, grid)
  keep = np.abs(np.asarray(lv1 - lv2)) < 88
  kl = jaxdiv.gaussian_kl_divergence(jnp.zeros_like(lv1), lv1, jnp.zeros_like(lv2), lv2, axis=None)
  assert np.all(np.isfinite(np.asarray(kl)[keep]))
  assert not np.any(np.isnan(np.asarray(kl)))
  a, b = lv1[keep], lv2[keep]
  total = lambda a, b: jnp.sum(jaxdiv.gaussian_kl_divergence(0 * a, a, 0 * b, b))
  grads = jax.jit(jax.grad(total, argnums=(0, 1)))(a, b)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def test_where_drops_dimensions_even_if_they_hold_nan():
  args = [np.array(a) for a in _diag_args(np.random.default_rng(11))]
  where = np.ones((4, 3), bool)
  where[:, 2] = False
  for a in args:
    a[:, 2] = np.nan
  inputs = _f32(*args)
  got = jaxdiv.gaussian_kl_divergence(*inputs, where=jnp.asarray(where))
  want = ref.gaussian_kl_divergence(*[a[:, :2] for a in args])
  np.testing.assert_allclose(np.asarray(got), want, rtol=3e-6)
  grads = jax.grad(lambda *a: jnp.sum(jaxdiv.gaussian_kl_divergence(*a, where=jnp.asarray(where))),
                   argnums=(0, 1, 2, 3))(*inputs)
  for g in grads:
    assert np.all(np.asarray(g)[:, 2] == 0) and np.all(np.isfinite(np.asarray(g)))


# --------------------------------------------------------------------------- #
# Properties
# --------------------------------------------------------------------------- #

_floats = st.floats(-3, 3, width=32)


@st.composite
def _mvn_pairs(draw, k=3):
  seed = draw(st.integers(0, 2**32 - 1))
  rng = np.random.default_rng(seed)
  return _f32(*_mvn_args(rng, batch=(), k=k))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(_floats, _floats, _floats, _floats), min_size=1, max_size=4))
def test_diagonal_kl_is_non_negative_and_zero_only_for_equal_distributions(rows):
  m1, s1, m2, s2 = (jnp.asarray(c, F32) for c in zip(*rows))
  kl = jaxdiv.gaussian_kl_divergence(m1, s1, m2, s2, axis=None)
  assert np.all(np.asarray(kl) >= 0)
  assert np.all(np.asarray(jaxdiv.gaussian_kl_divergence(m1, s1, m1, s1, axis=None)) == 0)


@settings(max_examples=20, deadline=None)
@given(_mvn_pairs())
def test_full_covariance_kl_is_non_negative_and_zero_for_equal_distributions(pair):
  m1, l1, m2, l2 = pair
  assert float(jaxdiv.multivariate_normal_kl_divergence(m1, l1, m2, l2)) >= 0
  assert float(jaxdiv.multivariate_normal_kl_divergence(m1, l1, m1, l1)) == 0


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(_floats, _floats, _floats, _floats), min_size=1, max_size=4))
def test_diagonal_and_full_covariance_forms_agree_on_diagonal_inputs(rows):
  m1, s1, m2, s2 = (jnp.asarray(c, F32) for c in zip(*rows))
  (diag, full), (h_diag, h_full) = _diag_and_full(m1, s1, m2, s2)
  np.testing.assert_allclose(full, diag, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(h_full, h_diag, rtol=1e-5, atol=1e-5)


@jax.jit
def _diag_and_full(m1, s1, m2, s2):
  kl_diag = jaxdiv.gaussian_kl_divergence(m1, s1, m2, s2, parameterization="log_scale")
  kl_full = jaxdiv.multivariate_normal_kl_divergence(m1, jnp.diag(jnp.exp(s1)), m2, jnp.diag(jnp.exp(s2)))
  h_diag = jaxdiv.gaussian_entropy(s1, parameterization="log_scale")
  return (kl_diag, kl_full), (h_diag, jaxdiv.multivariate_normal_entropy(jnp.diag(jnp.exp(s1))))


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


def test_integer_parameters_raise_type_error_naming_the_argument():
  x = jnp.zeros(3)
  with pytest.raises(TypeError, match="target_log_var must be a floating-point array; got int32"):
    jaxdiv.gaussian_kl_divergence(x, x, x, jnp.zeros(3, jnp.int32))
  with pytest.raises(TypeError, match="target_log_scale must be a floating-point array; got int32"):
    jaxdiv.gaussian_kl_divergence(x, x, x, jnp.zeros(3, jnp.int32), parameterization="log_scale")


def test_unbroadcastable_shapes_raise_value_error_listing_them():
  with pytest.raises(ValueError, match=r"must broadcast to one shape; got mean \[2, 3\], log_var \[2, 4\]"):
    jaxdiv.gaussian_kl_divergence(jnp.zeros((2, 3)), jnp.zeros((2, 4)), jnp.zeros(3), jnp.zeros(3))


def test_bad_parameterization_raises_value_error():
  with pytest.raises(ValueError, match="parameterization must be 'log_var' or 'log_scale'; got 'scale'"):
    jaxdiv.standard_normal_kl_divergence(jnp.zeros(3), jnp.zeros(3), parameterization="scale")


def test_bad_axis_raises_value_error():
  with pytest.raises(ValueError, match="axis=2 is out of range for mean of rank 1"):
    jaxdiv.gaussian_entropy(jnp.zeros(3), axis=2)


def test_mismatched_scale_tril_raises_value_error_with_both_shapes():
  with pytest.raises(ValueError,
                     match=r"target_scale_tril must have shape \[..., dim, dim\].*got target_mean \[3\] "
                           r"and target_scale_tril \[2, 2\]"):
    jaxdiv.multivariate_normal_kl_divergence(jnp.zeros(3), jnp.eye(3), jnp.zeros(3), jnp.eye(2))


# --------------------------------------------------------------------------- #
# float64 accuracy against 40-digit arithmetic (issue 15)
# --------------------------------------------------------------------------- #
# Before the dtype-aware series (jaxdiv._series) these were 5e-11 (Gaussian KL),
# 3.5e-10 (standard-normal KL at |log σ²| < 0.3) and 3e-12 (MVN KL): the float32
# series was used unchanged in float64.

F64_RTOL = 1e-14  # away from cancellation
F64_NEAR_RTOL = 1e-12  # nearly equal distributions (KL ~ 1e-12)


def _f64_diag(rng, n=64, spread=1.0):
  return [rng.normal(size=(n, 3)) * spread for _ in range(4)]


def _f64_cases():
  """(name, jaxdiv call, 40-digit reference, args, rtol) for every closed form, in float64."""
  rng = np.random.default_rng(20)
  diag = _f64_diag(rng)
  small = [0.3 * rng.uniform(-1, 1, size=(64, 3)) for _ in range(4)]  # |δ| < 0.6: the series branch
  m, s = rng.normal(size=(64, 3)), rng.normal(size=(64, 3))
  near = [m + 1e-6 * rng.choice([-1, 1], (64, 3)), s + 1e-6 * rng.choice([-1, 1], (64, 3)), m, s]
  mvn = _mvn_args(rng, batch=(16,), k=3)
  l2 = mvn[3]
  near_mvn = [mvn[2] + 1e-6, l2 + 1e-6 * np.tril(rng.choice([-1.0, 1.0], size=l2.shape)), mvn[2], l2]
  kl, ce = jaxdiv.gaussian_kl_divergence, jaxdiv.gaussian_cross_entropy
  log_scale = {"parameterization": "log_scale"}
  return [
      ("gaussian_kl", kl, ref.gaussian_kl_exact, diag, {}, F64_RTOL),
      ("gaussian_kl_log_scale", kl, ref.gaussian_kl_exact, diag, log_scale, F64_RTOL),
      ("gaussian_kl_small_gap", kl, ref.gaussian_kl_exact, small, {}, F64_RTOL),
      ("gaussian_kl_near_equal", kl, ref.gaussian_kl_exact, near, {}, F64_NEAR_RTOL),
      ("standard_normal_kl", lambda m, s, *_: jaxdiv.standard_normal_kl_divergence(m, s),
       lambda m, s, *_: ref.gaussian_kl_exact(m, s, 0 * m, 0 * s), small, {}, F64_RTOL),
      ("gaussian_cross_entropy", ce, ref.gaussian_cross_entropy_exact, [d + 2 for d in diag[:2]] + diag[2:],
       {}, F64_RTOL),
      ("gaussian_cross_entropy_log_scale", ce, ref.gaussian_cross_entropy_exact, diag, log_scale, F64_RTOL),
      ("gaussian_entropy", lambda s, *_: jaxdiv.gaussian_entropy(s),
       lambda s, *_: ref.gaussian_entropy_exact(s), [diag[1] + 3], {}, F64_RTOL),
      ("multivariate_normal_kl", jaxdiv.multivariate_normal_kl_divergence,
       lambda *a: ref.mvn_exact("kl", *a), mvn, {}, F64_RTOL),
      ("multivariate_normal_kl_near_equal", jaxdiv.multivariate_normal_kl_divergence,
       lambda *a: ref.mvn_exact("kl", *a), near_mvn, {}, F64_NEAR_RTOL),
      ("multivariate_normal_cross_entropy", jaxdiv.multivariate_normal_cross_entropy,
       lambda *a: ref.mvn_exact("cross_entropy", *a), [mvn[0], 3 * mvn[1], mvn[2], mvn[3]], {}, F64_RTOL),
      ("multivariate_normal_entropy", lambda tril, *_: jaxdiv.multivariate_normal_entropy(tril),
       lambda tril, *_: ref.mvn_exact("entropy", np.zeros(tril.shape[:-1]), tril), [3 * mvn[1]], {},
       F64_RTOL),
  ]


F64_CASES = {c[0]: c[1:] for c in _f64_cases()}


@pytest.mark.parametrize("name", sorted(F64_CASES))
def test_float64_matches_40_digit_arithmetic(name):
  fn, reference, args, kwargs, rtol = F64_CASES[name]
  want = reference(*args, **kwargs)
  with jax.enable_x64(True):
    got = fn(*[jnp.asarray(a) for a in args], **kwargs)
    assert got.dtype == jnp.float64
  # Away from the (differential) entropy's zero crossing: inputs shifted to keep |H| > 0.1.
  if "entropy" in name:
    assert np.min(np.abs(want)) > 0.1
  rel = np.abs(np.asarray(got) - want) / np.abs(want)
  assert np.max(rel) < rtol, np.max(rel)


def test_float64_gradients_match_the_closed_form_derivative():
  # ∂KL/∂log σ² = ½ expm1(δ) and ∂KL/∂μ = (μ − μ')/σ'²: exact, not the derivative of a truncated series.
  rng = np.random.default_rng(21)
  m1, s1, m2, s2 = (0.3 * rng.uniform(-1, 1, size=50) for _ in range(4))
  with jax.enable_x64(True):
    f = lambda *a: jnp.sum(jaxdiv.gaussian_kl_divergence(*a, axis=None))
    g_m1, g_s1 = jax.grad(f, argnums=(0, 1))(*[jnp.asarray(a) for a in (m1, s1, m2, s2)])
  np.testing.assert_allclose(g_s1, 0.5 * np.expm1(s1 - s2), rtol=1e-14)
  np.testing.assert_allclose(g_m1, (m1 - m2) * np.exp(-s2), rtol=1e-14)


@pytest.mark.parametrize("parameterization", ["log_var", "log_scale"])
def test_equal_gaussians_with_a_variance_below_the_float32_range_give_zero_not_nan(parameterization):
  # Regression: (μ, log σ², μ', log σ'²) = (0, −180, 0, −180) gave 0·e^90 = 0·inf = NaN in float32.
  args = [jnp.float32(0.0), jnp.float32(-180.0), jnp.float32(0.0), jnp.float32(-180.0)]
  kw = {"axis": None, "parameterization": parameterization}
  assert jaxdiv.gaussian_kl_divergence(*args, **kw) == 0
  for g in jax.grad(lambda *a: jaxdiv.gaussian_kl_divergence(*a, **kw), argnums=(0, 1, 2, 3))(*args):
    assert g == 0
  h = jaxdiv.gaussian_cross_entropy(*args, **kw)
  lv = -180.0 if parameterization == "log_var" else -360.0
  np.testing.assert_allclose(h, 0.5 * (np.log(2 * np.pi) + lv + 1), rtol=1e-6)
  # Different means there: the true KL exceeds the float32 range; +inf, not NaN.
  assert jaxdiv.gaussian_kl_divergence(jnp.float32(1.0), *args[1:], **kw) == np.inf
  # Inside the range the mean term keeps its exact Hessian 1/σ'² at equal means.
  hess = jax.hessian(lambda m: jaxdiv.gaussian_kl_divergence(m, 0.0, 0.0, -2.0, axis=None))(jnp.float32(0.0))
  np.testing.assert_allclose(hess, np.exp(2.0), rtol=1e-6)
