"""jaxdiv.distributions on real distrax objects: agreement with distrax's own KL and
entropy, better accuracy where distrax cancels, finite where distrax is NaN."""

from __future__ import annotations

from decimal import Decimal, localcontext

import jax
import jax.interpreters.xla
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiv.distributions as jd
import reference as ref

if not hasattr(jax.interpreters.xla, "pytype_aval_mappings"):
  # TFP 0.25 (distrax's dependency, latest at the time of writing) still reads this alias at import;
  # recent jax removed it. Restore it (test-only) so the installed distrax can be exercised.
  from jax._src import core

  jax.interpreters.xla.pytype_aval_mappings = core.pytype_aval_mappings

distrax = pytest.importorskip("distrax")

F32 = jnp.float32


def _tril(rng, batch, k):
  low = np.tril(rng.normal(size=batch + (k, k)) * 0.5, -1)
  diag = rng.uniform(0.5, 2.0, size=batch + (k,))
  return low + diag[..., :, None] * np.eye(k)


def _pairs(rng, dtype):
  a = lambda *shape: jnp.asarray(rng.normal(size=shape), dtype)
  pos = lambda *shape: jnp.asarray(rng.uniform(0.3, 3.0, size=shape), dtype)
  tri = lambda: jnp.asarray(_tril(rng, (4,), 3), dtype)
  return {
      "Normal": (distrax.Normal(a(4, 3), pos(4, 3)), distrax.Normal(a(4, 3), pos(3))),
      "MultivariateNormalDiag": (distrax.MultivariateNormalDiag(a(4, 3), pos(4, 3)),
                                 distrax.MultivariateNormalDiag(a(3), pos(4, 3))),
      "MultivariateNormalTri": (distrax.MultivariateNormalTri(a(4, 3), tri()),
                                distrax.MultivariateNormalTri(a(4, 3), tri())),
      # An upper-triangular scale (is_lower=False) is a square root of Σ but no Cholesky factor.
      "MultivariateNormalTriUpper": (
          distrax.MultivariateNormalTri(a(4, 3), jnp.swapaxes(tri(), -1, -2), is_lower=False),
          distrax.MultivariateNormalTri(a(4, 3), tri())),
      "Diag_Tri": (distrax.MultivariateNormalDiag(a(4, 3), pos(4, 3)),
                   distrax.MultivariateNormalTri(a(4, 3), tri())),
      "Tri_Diag": (distrax.MultivariateNormalTri(a(4, 3), tri()),
                   distrax.MultivariateNormalDiag(a(4, 3), pos(4, 3))),
      "Bernoulli": (distrax.Bernoulli(logits=3 * a(4, 3)), distrax.Bernoulli(logits=3 * a(4, 3))),
      "Categorical": (distrax.Categorical(logits=3 * a(4, 5)), distrax.Categorical(logits=3 * a(4, 5))),
  }


PAIRS = sorted(_pairs(np.random.default_rng(0), F32))


@pytest.mark.parametrize("name", PAIRS)
def test_kl_agrees_with_distrax_in_float64(name):
  with jax.enable_x64(True):
    p, q = _pairs(np.random.default_rng(1), jnp.float64)[name]
    got = jd.kl_divergence(p, q)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, p.kl_divergence(q), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", PAIRS)
def test_kl_agrees_with_distrax_in_float32_under_jit(name):
  p, q = _pairs(np.random.default_rng(2), F32)[name]
  got = jax.jit(jd.kl_divergence)(p, q)
  assert got.dtype == F32
  np.testing.assert_allclose(got, p.kl_divergence(q), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in PAIRS if "_" not in n])
def test_entropy_agrees_with_distrax(name):
  with jax.enable_x64(True):
    p, _ = _pairs(np.random.default_rng(3), jnp.float64)[name]
    np.testing.assert_allclose(jd.entropy(p), p.entropy(), rtol=1e-6, atol=1e-12)


def test_gradients_flow_through_distrax_parameters():
  rng = np.random.default_rng(4)
  mean, log_scale = jnp.asarray(rng.normal(size=(2, 3)), F32), jnp.asarray(rng.normal(size=(2, 3)), F32)

  def kl(mean, log_scale, ours, prior_shape=(2, 3)):
    q = distrax.MultivariateNormalDiag(mean, jnp.exp(log_scale))
    prior = distrax.MultivariateNormalDiag(jnp.zeros(prior_shape))
    return jnp.sum(jd.kl_divergence(q, prior) if ours else q.kl_divergence(prior))

  # A prior without the batch axis broadcasts (distrax's own KL raises under strict rank promotion).
  np.testing.assert_allclose(kl(mean, log_scale, True, (3,)), kl(mean, log_scale, True), rtol=1e-6)

  for g, w in zip(jax.grad(kl, argnums=(0, 1))(mean, log_scale, True),
                  jax.grad(kl, argnums=(0, 1))(mean, log_scale, False)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  per_example = jax.vmap(lambda m, s: kl(m, s, True, (3,)))(mean, log_scale)
  np.testing.assert_allclose(per_example.sum(), kl(mean, log_scale, True), rtol=1e-6)


def test_nearly_equal_normals_keep_their_digits_where_distrax_cancels():
  rng = np.random.default_rng(5)
  scale2 = rng.uniform(0.5, 2.0, size=64).astype(np.float32)
  scale1 = (scale2 * np.float32(1 + 2e-6)).astype(np.float32)
  loc2 = rng.normal(size=64).astype(np.float32)
  loc1 = (loc2 + np.float32(1e-6)).astype(np.float32)
  p, q = distrax.Normal(loc1, scale1), distrax.Normal(loc2, scale2)
  with localcontext() as ctx:
    ctx.prec = 50
    d = lambda x: Decimal(float(x))
    want = np.array([float((r * r - 1 - 2 * r.ln()) / 2 + ((d(m1) - d(m2)) / d(s2)) ** 2 / 2)
                     for m1, s1, m2, s2 in zip(loc1, scale1, loc2, scale2) for r in [d(s1) / d(s2)]])
  ours = np.max(np.abs(np.asarray(jd.kl_divergence(p, q), np.float64) - want) / want)
  theirs = np.max(np.abs(np.asarray(p.kl_divergence(q), np.float64) - want) / want)
  assert ours < 1e-5, ours
  assert theirs > 1e-2, theirs  # distrax's log(σ₁) − log(σ₂) loses the ratio to rounding


def _categorical_kl_f64(a, b):
  log_softmax = lambda x: x - np.logaddexp.reduce(x, axis=-1, keepdims=True)
  la, lb = log_softmax(np.asarray(a, np.float64)), log_softmax(np.asarray(b, np.float64))
  with np.errstate(invalid="ignore"):
    return np.sum(np.where(la == -np.inf, 0.0, np.exp(la) * (la - lb)), axis=-1)


def test_categorical_with_logits_of_1e4_and_masked_classes_is_exact_with_finite_derivatives():
  a = jnp.asarray([[3e4, -3e4, 0.0, -jnp.inf], [1e4, 0.0, -1e4, -jnp.inf]], F32)
  b = jnp.asarray([[-4e4, 3e4, 0.0, -jnp.inf], [0.0, 1e4, -1e4, -jnp.inf]], F32)
  kl = lambda a, b: jnp.sum(jd.kl_divergence(distrax.Categorical(logits=a), distrax.Categorical(logits=b)))
  np.testing.assert_allclose(jd.kl_divergence(distrax.Categorical(logits=a), distrax.Categorical(logits=b)),
                             _categorical_kl_f64(a, b), rtol=1e-6)
  for g in jax.grad(kl, argnums=(0, 1))(a, b):
    assert np.all(np.isfinite(np.asarray(g)))
  for h in jax.tree.leaves(jax.hessian(kl, argnums=(0, 1))(a, b)):
    assert np.all(np.isfinite(np.asarray(h)))


def test_normal_with_large_means_and_small_target_scale_is_finite_where_distrax_is_nan():
  # distrax forms μ₁/σ₂ − μ₂/σ₂: at μ = 1e30, σ₂ = 1e-10 both overflow and inf − inf = NaN.
  p = distrax.Normal(jnp.float32(1e30), jnp.float32(1.0))
  q = distrax.Normal(jnp.float32(1e30), jnp.float32(1e-10))
  assert np.isnan(p.kl_divergence(q)), "distrax no longer NaN here: update this test"
  ratio = 1.0 / float(np.float32(1e-10))
  want = 0.5 * (ratio**2 - 1 - 2 * np.log(ratio))
  # e^{2s} amplifies the float32 rounding of s = log(σ₁/σ₂) = 23 by 2s ≈ 46.
  np.testing.assert_allclose(jd.kl_divergence(p, q), want, rtol=1e-5)


def test_missing_distrax_pair_raises_not_implemented_naming_both_types():
  with pytest.raises(NotImplementedError, match="KL\\(Normal ‖ Categorical\\)"):
    jd.kl_divergence(distrax.Normal(0.0, 1.0), distrax.Categorical(logits=jnp.zeros(3)))


# --------------------------------------------------------------------------- #
# Issue 15: batch broadcasting for every pair, cross-entropy, DiagPlusLowRank, TFP objects
# --------------------------------------------------------------------------- #

tfd = pytest.importorskip("tensorflow_probability.substrates.jax").distributions


def _peer(fn, *args):
  """Call distrax/TFP's own methods under jax's default promotion (their code assumes it)."""
  with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
    return fn(*args)


def test_categorical_with_a_batch_against_an_unbatched_one_broadcasts_like_distrax():
  # The example: this raised "target_logits must have the same shape as logits".
  p = distrax.Categorical(probs=jnp.asarray([[0.1, 0.5, 0.4], [0.2, 0.4, 0.4]]))
  q = distrax.Categorical(logits=jnp.asarray([0.0, 0.1, 0.1]))
  got = jd.kl_divergence(p, q)
  np.testing.assert_allclose(got, [0.13302903, 0.03145725], rtol=2e-6)  # 40-digit values of these inputs
  assert jd.kl_divergence(q, p).shape == (2,) and jd.cross_entropy(p, q).shape == (2,)
  bern = jd.kl_divergence(distrax.Bernoulli(probs=jnp.asarray([[0.1, 0.5, 0.4], [0.2, 0.4, 0.8]])),
                          distrax.Bernoulli(logits=jnp.asarray([0.0, -0.1, 0.1])))
  assert bern.shape == (2, 3)


def test_categorical_with_different_numbers_of_classes_raises_value_error_with_both_shapes():
  with pytest.raises(ValueError,
                     match=r"same number of categories; got 3 \(shape \[2, 3\]\) and 2 \(shape \[2\]\)"):
    jd.kl_divergence(distrax.Categorical(logits=jnp.zeros((2, 3))), distrax.Categorical(logits=jnp.zeros(2)))


def _tfp_pairs(rng, dtype):
  a = lambda *shape: jnp.asarray(rng.normal(size=shape), dtype)
  pos = lambda *shape: jnp.asarray(rng.uniform(0.3, 3.0, size=shape), dtype)
  tri = lambda: jnp.asarray(_tril(rng, (4,), 3), dtype)
  return {
      "Normal": (tfd.Normal(a(4, 3), pos(4, 3)), tfd.Normal(a(3), pos(4, 3))),
      "MultivariateNormalDiag": (tfd.MultivariateNormalDiag(a(4, 3), pos(4, 3)),
                                 tfd.MultivariateNormalDiag(a(3), pos(3))),
      "MultivariateNormalTriL": (tfd.MultivariateNormalTriL(a(4, 3), tri()),
                                 tfd.MultivariateNormalTriL(a(4, 3), tri())),
      "DiagPlusLowRank_TriL": (
          tfd.MultivariateNormalDiagPlusLowRank(a(4, 3), pos(4, 3), 0.3 * a(4, 3, 2), pos(4, 2)),
          tfd.MultivariateNormalTriL(a(3), tri())),
      "Bernoulli": (tfd.Bernoulli(logits=3 * a(4, 3)), tfd.Bernoulli(logits=3 * a(3))),
      "Categorical": (tfd.Categorical(logits=3 * a(4, 5)), tfd.Categorical(logits=3 * a(5))),
  }


TFP_PAIRS = sorted(_tfp_pairs(np.random.default_rng(0), F32))
# Bernoulli and Categorical go through jaxdiv._binary/_categorical, whose kernel still uses a float32
# series in float64 (~1e-11): 1e-13 once it calls jaxdiv._series.
TFP_F64_RTOL = {"Bernoulli": 1e-10, "Categorical": 1e-10}


@pytest.mark.parametrize("name", TFP_PAIRS)
def test_tfp_objects_agree_with_tfp_in_float64(name):
  with jax.enable_x64(True):
    p, q = _tfp_pairs(np.random.default_rng(11), jnp.float64)[name]
    for ours, theirs in [(jd.kl_divergence(p, q), _peer(p.kl_divergence, q)),
                         (jd.cross_entropy(p, q), _peer(p.cross_entropy, q)),
                         (jd.entropy(p), _peer(p.entropy))]:
      assert ours.dtype == jnp.float64 and ours.shape == theirs.shape
      np.testing.assert_allclose(ours, theirs, rtol=TFP_F64_RTOL.get(name, 1e-13))


def test_mixed_distrax_and_tfp_pairs_and_diag_plus_low_rank_gradients():
  rng = np.random.default_rng(12)
  loc, diag, u = (jnp.asarray(rng.normal(size=s), F32) for s in [(2, 3), (2, 3), (2, 3, 1)])
  prior = tfd.MultivariateNormalDiag(jnp.zeros(3), jnp.ones(3))

  def kl(loc, diag, u, ours):
    q = distrax.MultivariateNormalDiagPlusLowRank(loc, diag, u)
    p = distrax.MultivariateNormalDiag(jnp.zeros(3))
    return jnp.sum(jd.kl_divergence(q, prior) if ours else _peer(q.kl_divergence, p))

  np.testing.assert_allclose(kl(loc, diag, u, True), kl(loc, diag, u, False), rtol=1e-5)
  for g, w in zip(jax.grad(kl, argnums=(0, 1, 2))(loc, diag, u, True),
                  jax.grad(kl, argnums=(0, 1, 2))(loc, diag, u, False)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_unknown_tfp_pair_names_both_types_for_kl_and_cross_entropy():
  with pytest.raises(NotImplementedError, match="KL\\(Normal ‖ Categorical\\)"):
    jd.kl_divergence(tfd.Normal(0.0, 1.0), distrax.Categorical(logits=jnp.zeros(3)))
  with pytest.raises(NotImplementedError, match="no cross-entropy registered for H\\(Normal ‖ Bernoulli\\)"):
    jd.cross_entropy(distrax.Normal(0.0, 1.0), tfd.Bernoulli(logits=0.0))


def test_gaussian_cross_entropy_does_not_cancel_where_kl_plus_entropy_does():
  # For σ = 1e-16: H(p) = ½ log(2πe σ²) ≈ −35.4 and KL(p‖q) ≈ 36.3, so KL + H = 0.92 loses ~1.6 digits
  # to rounding of the two; the direct form ½(log 2π + σ² + μ²) keeps them.
  with jax.enable_x64(True):
    p = distrax.Normal(jnp.float64(1e-3), jnp.float64(1e-16))
    q = distrax.Normal(jnp.float64(0.0), jnp.float64(1.0))
    want = float(ref.gaussian_cross_entropy_exact(1e-3, np.log(1e-16), 0.0, 0.0, parameterization="log_scale",
                                                  axis=None))
    np.testing.assert_allclose(jd.cross_entropy(p, q), want, rtol=1e-15)
