"""The divergences' per-class output and free log-probability derivatives (``jaxdiv._divergences``).

``per_class=True`` must give torch's ``kl_div(reduction="none")`` terms (a
float64 port in ``reference.torch_kl_div``), reduce like torch's
``"mean"``/``"batchmean"``, sum to the row value and keep the 0·log 0 and NaN
contracts. ``assume_normalized=True`` must keep the value and give the
derivatives of the pointwise sum w.r.t. free log-probabilities (torch, optax,
Liger), in reverse and forward mode.
"""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxdiv
import jaxdiv.optax
import reference as ref

LOG_TARGET_FNS = {
    "kl_divergence_with_log_targets": lambda z, t, **kw: jaxdiv.kl_divergence_with_log_targets(z, t, **kw),
    "reverse_kl_divergence": lambda z, t, **kw: jaxdiv.reverse_kl_divergence(z, t, **kw),
    "jsd_0.3": lambda z, t, **kw: jaxdiv.jensen_shannon_divergence(z, t, beta=0.3, **kw),
}


def _rows(seed, shape=(4, 6), scale=2.0):
  rng = np.random.default_rng(seed)
  return [(rng.normal(size=shape) * scale).astype(np.float32) for _ in range(2)]


def _pointwise_f64(name, z, t):
  """Float64 per-class terms of each divergence's pointwise form, from the log-softmaxes."""
  log_q, log_p = ref.log_softmax(z), ref.log_softmax(t)
  p, q = np.exp(log_p), np.exp(log_q)
  if name == "kl_divergence_with_log_targets":
    return ref.torch_kl_div(log_q, log_p, log_target=True, reduction="none")
  if name == "reverse_kl_divergence":
    return ref.torch_kl_div(log_p, log_q, log_target=True, reduction="none")
  beta = 0.3
  log_m = np.log(beta * p + (1 - beta) * q)
  return beta * p * (log_p - log_m) + (1 - beta) * q * (log_q - log_m)


@pytest.mark.parametrize("name", list(LOG_TARGET_FNS))
def test_per_class_terms_equal_the_float64_pointwise_form_and_sum_to_the_row_value(name):
  z, t = _rows(0)
  fn = LOG_TARGET_FNS[name]
  terms = fn(z, t, per_class=True)
  assert terms.shape == z.shape and terms.dtype == jnp.float32
  np.testing.assert_allclose(terms, _pointwise_f64(name, z, t), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jnp.sum(terms, axis=-1), fn(z, t), rtol=1e-5, atol=1e-6)


def test_kl_divergence_per_class_is_torch_kl_div_none_and_its_reductions_are_torchs():
  z, _ = _rows(1)
  p = np.random.default_rng(2).dirichlet(np.ones(6), size=4).astype(np.float32)
  p[0, 2] = 0.0  # a zero target: 0 · log 0 = 0, as torch's xlogy
  p /= p.sum(axis=-1, keepdims=True)
  log_q = np.asarray(jax.nn.log_softmax(z))
  for reduction in ("none", "sum", "mean", "batchmean"):
    got = jaxdiv.kl_divergence(log_q, p, per_class=True, reduction=reduction)
    np.testing.assert_allclose(got, ref.torch_kl_div(log_q, p, reduction=reduction), rtol=1e-5, atol=1e-7)
  # "mean" divides by N·V (torch's element mean), "batchmean" by N: V times apart.
  mean = jaxdiv.kl_divergence(log_q, p, per_class=True, reduction="mean")
  np.testing.assert_allclose(jaxdiv.kl_divergence(log_q, p, reduction="batchmean"), 6 * mean, rtol=1e-6)


def test_per_class_mean_counts_unmasked_elements_and_masked_terms_are_zero():
  z, t = _rows(3)
  where = np.ones(z.shape, bool)
  where[:, -2:] = False
  z[:, -1], t[:, -2] = np.nan, np.nan  # NaN in masked entries never reaches the output
  terms = jaxdiv.kl_divergence_with_log_targets(z, t, where=where, per_class=True)
  assert np.all(np.asarray(terms)[:, -2:] == 0)
  mean = jaxdiv.kl_divergence_with_log_targets(z, t, where=where, per_class=True, reduction="mean")
  np.testing.assert_allclose(mean, float(np.sum(terms)) / where.sum(), rtol=1e-6)


def test_per_class_zero_target_mass_on_minus_inf_and_nan():
  z = jnp.array([[0.0, -jnp.inf, 1.0], [0.0, -jnp.inf, 1.0], [jnp.nan, 0.0, 0.0]])
  t = jnp.array([[0.0, -jnp.inf, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
  terms = jaxdiv.kl_divergence_with_log_targets(z, t, per_class=True)
  assert float(terms[0, 1]) == 0.0 and np.all(np.isfinite(terms[0]))
  assert float(terms[1, 1]) == np.inf  # target mass on a -inf logit
  assert np.all(np.isnan(terms[2]))  # NaN in an unmasked logit spreads through its row's normalisation
  grads = jax.grad(lambda a, b: jnp.sum(jaxdiv.kl_divergence_with_log_targets(a, b, per_class=True)[0]),
                   argnums=(0, 1))(z, t)
  assert all(np.all(np.isfinite(g[0])) for g in grads)


def test_per_class_works_under_jit_and_vmap_over_a_batch_of_distributions():
  z, t = _rows(4, shape=(3, 5, 7))
  fn = lambda a, b: jaxdiv.jensen_shannon_divergence(a, b, per_class=True, reduction="sum")
  np.testing.assert_allclose(jax.jit(jax.vmap(fn))(z, t), [fn(a, b) for a, b in zip(z, t)], rtol=1e-6)


@pytest.mark.parametrize("flag", ["per_class", "assume_normalized"])
def test_flags_must_be_python_bools(flag):
  z, t = _rows(5)
  with pytest.raises(TypeError, match=f"{flag} must be a Python bool; got"):
    jaxdiv.kl_divergence_with_log_targets(z, t, **{flag: jnp.array(True)})


def _free_gradients_f64(name, log_q, log_p):
  """∂/∂log q and ∂/∂log p of the pointwise sum, with both log-probabilities free (float64)."""
  p, q = np.exp(log_p), np.exp(log_q)
  if name == "kl_divergence_with_log_targets":
    return -p, p * (log_p - log_q + 1)
  if name == "reverse_kl_divergence":
    return q * (log_q - log_p + 1), -q
  beta = 0.3
  log_m = np.log(beta * p + (1 - beta) * q)
  return (1 - beta) * q * (log_q - log_m), beta * p * (log_p - log_m)


@pytest.mark.parametrize("name", list(LOG_TARGET_FNS))
def test_assume_normalized_keeps_the_value_and_gives_the_free_log_probability_gradient(name):
  z, t = _rows(6)
  log_q, log_p = (np.asarray(jax.nn.log_softmax(a)) for a in (z, t))
  fn = LOG_TARGET_FNS[name]
  np.testing.assert_allclose(fn(log_q, log_p, assume_normalized=True), fn(log_q, log_p), rtol=1e-6, atol=1e-7)
  loss = lambda a, b: jnp.sum(fn(a, b, assume_normalized=True))
  expected = _free_gradients_f64(name, ref.f64(log_q), ref.f64(log_p))
  for got, want in zip(jax.grad(loss, argnums=(0, 1))(log_q, log_p), expected):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Forward mode gives the same derivative.
  tangent = np.random.default_rng(7).normal(size=z.shape).astype(np.float32)
  _, jvp = jax.jvp(lambda a: loss(a, log_p), (log_q,), (tangent,))
  np.testing.assert_allclose(jvp, np.sum(expected[0] * tangent), rtol=1e-4, atol=1e-5)
  # The default is the re-normalised form: its logit gradient sums to 0 over each row.
  default = jax.grad(lambda a: jnp.sum(fn(a, log_p)))(log_q)
  np.testing.assert_allclose(jnp.sum(default, axis=-1), 0, atol=1e-6)


def test_assume_normalized_with_probability_targets_matches_optax_gradient():
  z, _ = _rows(8)
  log_q = np.asarray(jax.nn.log_softmax(z))
  p = np.random.default_rng(9).dirichlet(np.ones(6), size=4).astype(np.float32)
  ours = jax.grad(lambda a, b: jnp.sum(jaxdiv.kl_divergence(a, b, assume_normalized=True)), argnums=(0, 1))
  theirs = jax.grad(lambda a, b: jnp.sum(jaxdiv.optax.kl_divergence(a, b)), argnums=(0, 1))
  for got, want in zip(ours(log_q, p), theirs(log_q, p)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_assume_normalized_keeps_inf_and_nan():
  log_q = jnp.log(jnp.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]))
  log_p = jnp.log(jnp.array([[0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]))
  log_q = log_q.at[1, 0].set(jnp.nan)
  out = jaxdiv.kl_divergence_with_log_targets(log_q, log_p, assume_normalized=True)
  assert float(out[0]) == np.inf and np.isnan(out[1])
  g = jax.grad(lambda a: jaxdiv.kl_divergence_with_log_targets(a, log_p, assume_normalized=True)[0])(log_q)
  assert np.all(np.isfinite(g[0]))


@settings(max_examples=25, deadline=None)
@given(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9),
               elements=st.floats(-20, 20, width=32)),
    st.integers(0, 2**31 - 1),
    st.sampled_from(list(LOG_TARGET_FNS)),
)
def test_per_class_terms_sum_to_the_row_value_on_random_shapes(z, seed, name):
  t = (np.random.default_rng(seed).normal(size=z.shape) * 4).astype(np.float32)
  fn = LOG_TARGET_FNS[name]
  row = np.asarray(fn(z, t))
  np.testing.assert_allclose(np.sum(fn(z, t, per_class=True), axis=-1), row, rtol=1e-4, atol=2e-5)
  assert np.all(row >= 0)
