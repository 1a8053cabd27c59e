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
    grad = jax.grad(lambda z, y: jaxdiv.binary_cross_entropy(z, y), (0, 1))
    g = grad(jnp.float32(logit), jnp.float32(target))
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
    grad = jax.grad(lambda z, t: jaxdiv.binary_kl_divergence(z, t), (0, 1))
    g = grad(jnp.float32(logit), jnp.float32(target_logit))
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


# --------------------------------------------------------------------------- #
# pos_weight, label_smoothing, focal and poly forms (issue 13)
# --------------------------------------------------------------------------- #


def test_pos_weight_is_torch_bce_with_logits_semantics():
  # torch.nn.BCEWithLogitsLoss(pos_weight=w): -[w y log σ(z) + (1 - y) log σ(-z)], w broadcast per label.
  rng = np.random.default_rng(13)
  z, y = rng.normal(size=(4, 3)) * 3, rng.uniform(size=(4, 3))
  w = np.array([0.5, 2.0, 7.0])
  got = jaxdiv.binary_cross_entropy(jnp.float32(z), jnp.float32(y), pos_weight=jnp.float32(w))
  want = ref.binary_cross_entropy_options(np.float32(z), np.float32(y), pos_weight=w)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # pos_weight = 1 is the plain loss; an integer weight is accepted.
  np.testing.assert_array_equal(jaxdiv.binary_cross_entropy(z, y, pos_weight=1.0),
                                jaxdiv.binary_cross_entropy(z, y))
  np.testing.assert_allclose(jaxdiv.binary_cross_entropy(z, y, pos_weight=np.array([1, 2, 7])),
                             jaxdiv.binary_cross_entropy(z, y, pos_weight=np.array([1.0, 2.0, 7.0])),
                             rtol=1e-7)


def test_pos_weight_gradient_and_infinite_logits():
  z = jnp.array([jnp.inf, -jnp.inf, 0.5])
  y = jnp.array([1.0, 0.0, 1.0])
  value, (gz, gw) = jax.value_and_grad(
      lambda z, w: jnp.sum(jaxdiv.binary_cross_entropy(z, y, pos_weight=w)), (0, 1))(z, jnp.float32(3.0))
  np.testing.assert_allclose(value, 3.0 * np.log1p(np.exp(-0.5)), rtol=1e-6)
  np.testing.assert_allclose(gz, [0.0, 0.0, -3.0 / (1 + np.exp(0.5))], rtol=1e-6)
  np.testing.assert_allclose(gw, np.log1p(np.exp(-0.5)), rtol=1e-6)  # ∂/∂w = y softplus(-z)


def test_pos_weight_on_masked_elements_never_leaks():
  w = jnp.array([2.0, jnp.nan])
  where = jnp.array([True, False])
  got, g = jax.value_and_grad(
      lambda z: jaxdiv.binary_cross_entropy(z, jnp.ones(2), pos_weight=w, where=where, reduction="sum"))(
          jnp.zeros(2))
  np.testing.assert_allclose(got, 2.0 * np.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(g, [-1.0, 0.0], rtol=1e-6)


def test_label_smoothing_moves_targets_to_eps_over_2():
  rng = np.random.default_rng(14)
  z, y = rng.normal(size=(5, 4)) * 2, (rng.uniform(size=(5, 4)) > 0.5).astype(np.float64)
  got = jaxdiv.binary_cross_entropy(jnp.float32(z), jnp.float32(y), label_smoothing=0.2)
  np.testing.assert_allclose(got, ref.binary_cross_entropy_options(np.float32(z), y, label_smoothing=0.2),
                             rtol=1e-6)
  # The same as smoothing the labels over the two outcomes with optax.smooth_labels.
  two = jnp.stack([jnp.float32(y), 1 - jnp.float32(y)], -1)
  smoothed = optax.smooth_labels(two, 0.2)[..., 0]
  np.testing.assert_allclose(got, jaxdiv.binary_cross_entropy(jnp.float32(z), smoothed), rtol=1e-6)
  both = jaxdiv.binary_cross_entropy(jnp.float32(z), jnp.float32(y), label_smoothing=0.2, pos_weight=3.0)
  np.testing.assert_allclose(both, ref.binary_cross_entropy_options(
      np.float32(z), y, pos_weight=3.0, label_smoothing=0.2), rtol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"label_smoothing": 1.5}, r"label_smoothing must lie in \[0, 1\]; got 1.5"),
    ({"label_smoothing": -0.1}, r"label_smoothing must lie in \[0, 1\]; got -0.1"),
    ({"pos_weight": jnp.ones(4)},
     r"pos_weight must be broadcastable to the logits shape \[2, 3\].*got \[4\]"),
])
def test_binary_option_errors_name_the_argument(kwargs, message):
  with pytest.raises(ValueError, match=message):
    jaxdiv.binary_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 3)), **kwargs)


def test_option_errors_of_focal_loss_name_the_argument():
  with pytest.raises(ValueError, match=r"gamma must be >= 0; got -1.0"):
    jaxdiv.sigmoid_focal_loss(jnp.zeros(3), jnp.zeros(3), gamma=-1.0)
  with pytest.raises(TypeError, match="pos_weight must be a floating-point array; got complex64"):
    jaxdiv.binary_cross_entropy(jnp.zeros(3), jnp.zeros(3), pos_weight=jnp.ones(3, jnp.complex64))


@pytest.mark.parametrize("gamma, alpha", [(2.0, None), (0.5, 0.25), (0.0, None), (1.0, 0.75)])
def test_sigmoid_focal_loss_equals_optax_where_optax_is_finite(gamma, alpha):
  rng = np.random.default_rng(15)
  z, y = jnp.float32(rng.normal(size=(6, 5)) * 3), jnp.float32(rng.uniform(size=(6, 5)))
  got = jaxdiv.sigmoid_focal_loss(z, y, gamma=gamma, alpha=alpha)
  np.testing.assert_allclose(got, optax.losses.sigmoid_focal_loss(z, y, gamma=gamma, alpha=alpha), rtol=2e-6,
                             atol=1e-7)
  np.testing.assert_allclose(got, ref.sigmoid_focal_loss(z, y, gamma=gamma, alpha=alpha), rtol=2e-6,
                             atol=1e-7)
  if gamma == 0.0:  # α_t · BCE
    a_t = 1.0 if alpha is None else alpha * y + (1 - alpha) * (1 - y)
    np.testing.assert_allclose(got, a_t * jaxdiv.binary_cross_entropy(z, y), rtol=1e-6)


@pytest.mark.parametrize("fn, kwargs", [
    (jaxdiv.sigmoid_focal_loss, {"gamma": 2.0}), (jaxdiv.sigmoid_focal_loss, {"gamma": 0.5}),
    (jaxdiv.sigmoid_focal_loss, {"gamma": 0.0, "alpha": 0.25}), (jaxdiv.binary_poly_loss, {"epsilon": 1.0}),
    (jaxdiv.binary_poly_loss, {"epsilon": -1.0}),
], ids=lambda a: getattr(a, "__name__", str(a)))
def test_focal_and_poly_at_infinite_logits_are_finite_with_finite_derivatives(fn, kwargs):
  # optax 0.2.8's sigmoid_focal_loss is NaN at z = ±inf with an agreeing label.
  z = jnp.array([jnp.inf, -jnp.inf, 1e30, -1e30, 40.0, -40.0])
  y = jnp.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
  total = lambda z, y: jnp.sum(fn(z, y, **kwargs))
  got = fn(z, y, **kwargs)
  np.testing.assert_allclose(got, ref_fn(fn)(np.asarray(z), np.asarray(y), **kwargs), rtol=1e-5, atol=1e-30)
  for g in jax.grad(total, (0, 1))(z, y):
    assert np.all(np.isfinite(np.asarray(g)))
  assert np.all(np.isfinite(np.asarray(jax.jit(jax.hessian(total))(z, y))))
  # Wrong side of an infinite logit: the true value is +inf, not NaN.
  assert np.isposinf(fn(jnp.array([jnp.inf]), jnp.array([0.0]), **kwargs)[0])


def ref_fn(fn):
  return {jaxdiv.sigmoid_focal_loss: ref.sigmoid_focal_loss,
          jaxdiv.binary_poly_loss: ref.binary_poly_loss}[fn]


@pytest.mark.parametrize("fn", [jaxdiv.sigmoid_focal_loss, jaxdiv.binary_poly_loss,
                                jaxdiv.binary_cross_entropy])
def test_nan_logit_or_target_gives_nan(fn):
  got = fn(jnp.array([jnp.nan, 0.3, 1.0]), jnp.array([1.0, jnp.nan, 0.0]))
  assert np.all(np.isnan(np.asarray(got[:2]))) and np.isfinite(got[2])


def test_binary_poly_loss_is_bce_plus_epsilon_times_one_minus_pt():
  rng = np.random.default_rng(16)
  z, y = jnp.float32(rng.normal(size=(3, 4)) * 2), jnp.float32(rng.uniform(size=(3, 4)))
  bce = jaxdiv.binary_cross_entropy(z, y)
  np.testing.assert_allclose(jaxdiv.binary_poly_loss(z, y, epsilon=0.0), bce, rtol=1e-7)
  p = jax.nn.sigmoid(z)
  np.testing.assert_allclose(jaxdiv.binary_poly_loss(z, y, epsilon=2.0),
                             bce + 2.0 * (y * (1 - p) + (1 - y) * p), rtol=1e-6)
  np.testing.assert_allclose(jaxdiv.binary_poly_loss(z, y, epsilon=2.0, axis=-1, reduction="mean"),
                             np.mean(ref.binary_poly_loss(z, y, epsilon=2.0, axis=-1)), rtol=1e-6)
