"""jaxdiv._series: φ(d) = expm1(d) − d and ψ(r) = r − log1p(r) to a few ulp of 40-digit
arithmetic in float32 and float64, exact derivatives, and the values at 0 and ±inf."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu

import reference as ref
from jaxdiv import _series

DTYPES = {"float32": np.float32, "float64": np.float64}
# Worst case measured over the grid below: 2.9 ulp (φ, float64) and 2.3 ulp (ψ, float32).
ULPS = 4


def _grid(rng):
  """Both signs from 1e-12 to ~30, both switch points, and uniform draws across them."""
  logs = 10.0 ** rng.uniform(-12, 1.5, 600) * rng.choice([-1, 1], 600)
  edges = np.array([1 - 1e-12, -1 + 1e-12, 1 + 1e-12, -1 - 1e-12, 0.5, -0.5, 1e-300, -1e-300])
  return np.concatenate([logs, rng.uniform(-3, 3, 300), edges])


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_phi_has_full_relative_precision(dtype, x64):
  d = _grid(np.random.default_rng(0)).astype(DTYPES[dtype])
  want = ref.phi_exact(d)
  got = np.asarray(_series.phi(jnp.asarray(d)), np.float64)
  assert got.dtype == np.float64 and np.asarray(_series.phi(jnp.asarray(d))).dtype == DTYPES[dtype]
  _assert_ulps(got, want, dtype)


def _assert_ulps(got, want, dtype):
  tiny = want < np.finfo(DTYPES[dtype]).tiny  # the true value underflows (d = 1e-300): 0 is right
  np.testing.assert_array_equal(got[tiny], 0)
  np.testing.assert_array_equal(got[np.isinf(want)], np.inf)  # r = −1 after rounding to float32
  tiny |= np.isinf(want)
  rel = np.abs(got[~tiny] - want[~tiny]) / want[~tiny]
  assert np.max(rel) < ULPS * np.finfo(DTYPES[dtype]).eps, np.max(rel)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_psi_has_full_relative_precision(dtype, x64):
  x = _grid(np.random.default_rng(1))
  r = np.where(x > -1, x, -x).astype(DTYPES[dtype])  # the domain r ≥ −1
  want = ref.psi_exact(r)
  got = np.asarray(_series.psi(jnp.asarray(r)), np.float64)
  _assert_ulps(got, want, dtype)


def test_series_lengths_follow_the_dtype():
  # The module docstring's table.
  assert (_series.phi_terms(jnp.float32), _series.phi_terms(jnp.float64)) == (10, 17)
  assert (_series.psi_terms(jnp.float32), _series.psi_terms(jnp.float64)) == (7, 16)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_exact_zero_at_zero_and_inf_not_nan_at_the_ends(dtype, x64):
  t = DTYPES[dtype]
  phi = np.asarray(_series.phi(jnp.asarray([0.0, -0.0, np.inf, -np.inf, 1e4, -1e4], t)))
  np.testing.assert_array_equal(phi, [0, 0, np.inf, np.inf, np.inf, 1e4 - 1])
  psi = np.asarray(_series.psi(jnp.asarray([0.0, -0.0, np.inf, -1.0], t)))
  np.testing.assert_array_equal(psi, [0, 0, np.inf, np.inf])


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_derivatives_are_exact_not_those_of_the_truncated_series(dtype, x64):
  t = DTYPES[dtype]
  d = jnp.asarray(_grid(np.random.default_rng(2))[:200], t)
  d = d[jnp.abs(d) < 30]
  eps = 2 * np.finfo(t).eps  # XLA's float32 expm1 is itself within 2 ulp, not 1/2
  np.testing.assert_allclose(jax.vmap(jax.grad(_series.phi))(d), np.expm1(np.float64(d)), rtol=2 * eps)
  np.testing.assert_allclose(jax.vmap(jax.grad(jax.grad(_series.phi)))(d), np.exp(np.float64(d)),
                             rtol=2 * eps)
  r = jnp.abs(d)
  r64 = np.float64(r)
  np.testing.assert_allclose(jax.vmap(jax.grad(_series.psi))(r), r64 / (1 + r64), rtol=3 * eps)


def test_derivatives_at_the_ends_are_the_limits_not_nan():
  g = jax.vmap(jax.grad(_series.psi))(jnp.asarray([0.0, np.inf, -1.0]))
  np.testing.assert_array_equal(g, [0, 1, -np.inf])
  g = jax.vmap(jax.grad(_series.phi))(jnp.asarray([0.0, np.inf, -np.inf]))
  np.testing.assert_array_equal(g, [0, np.inf, -1])
  h = jax.vmap(jax.hessian(_series.psi))(jnp.asarray([0.0, np.inf]))
  assert np.all(np.isfinite(np.asarray(h)))


def test_derivatives_match_float64_finite_differences(x64):
  for fn, x in [(_series.phi, jnp.asarray([0.3, -0.7, 1.5, -2.0, 1e-3])),
                (_series.psi, jnp.asarray([0.3, -0.4, 1.5, 4.0, 1e-3]))]:
    jtu.check_grads(jax.jit(lambda x, fn=fn: jnp.sum(fn(x))), (x,), order=2, modes=("fwd", "rev"), eps=1e-6)


def test_integer_input_raises_type_error():
  with pytest.raises(TypeError, match="expected a floating-point array; got int32"):
    _series.phi(jnp.zeros(2, jnp.int32))
