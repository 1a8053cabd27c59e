"""Training options of the cross-entropies against the float64 reference of their documented semantics.

ignore_index, class weights, label smoothing (uniform / T5X), z-loss, soft-capping,
side outputs, and their combinations with ``where`` and every reduction.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu

import jaxdiv
import reference as ref

REDUCTIONS = ["none", "sum", "mean", "batchmean"]
NUM_CLASSES = 5


def _batch(seed, batch=6):
  rng = np.random.default_rng(seed)
  z = (rng.normal(size=(batch, NUM_CLASSES)) * 2).astype(np.float32)
  y = rng.integers(0, NUM_CLASSES, size=batch)
  y[1] = -100
  weights = rng.uniform(0.2, 3.0, size=NUM_CLASSES).astype(np.float32)
  where = np.ones((batch, NUM_CLASSES), bool)
  where[:, 3] = False  # a masked vocabulary entry ...
  where[4] = False  # ... and a masked example
  z[:, 3] = np.nan  # masked entries may hold anything
  y[y == 3] = 0  # labels avoid the masked class
  return z, y, weights, where


SMOOTHINGS = [{}, {"label_smoothing": 0.1}, {"label_smoothing": 0.3, "smoothing": "t5x"},
              {"label_smoothing": 0.3, "smoothing": "t5x", "t5x_normalize": True}]
COMBOS = list(itertools.product([False, True], [False, True], range(len(SMOOTHINGS)), [False, True]))


@pytest.mark.parametrize("weighted, ignore, smoothing, masked", COMBOS)
def test_option_combinations_match_reference_for_every_reduction(weighted, ignore, smoothing, masked):
  z, y, weights, where = _batch(len(COMBOS))
  if not ignore:
    y = np.where(y == -100, 2, y)
  kw = dict(SMOOTHINGS[smoothing])
  if weighted:
    kw["class_weights"] = weights
  if ignore:
    kw["ignore_index"] = -100
  if masked:
    kw["where"] = where
  else:
    z = np.nan_to_num(z)
  for reduction in REDUCTIONS:
    got = jaxdiv.cross_entropy(z, y, reduction=reduction, **kw)
    want = ref.cross_entropy_options(z, y, reduction=reduction, **kw)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=1e-6, err_msg=reduction)
    assert np.all(np.isfinite(np.asarray(got)))


def test_weighted_mean_is_torchs_weighted_mean():
  z, y, weights, _ = _batch(1)
  z = np.nan_to_num(z)
  per = ref.cross_entropy(z, np.where(y == -100, 0, y))
  valid = y != -100
  w = weights[np.where(valid, y, 0)] * valid
  got = jaxdiv.cross_entropy(z, y, ignore_index=-100, class_weights=weights, reduction="mean")
  np.testing.assert_allclose(float(got), np.sum(w * per) / np.sum(w), rtol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "batchmean", "none"])
def test_all_ignored_batch_is_zero_with_zero_gradient(reduction):
  """torch returns NaN for reduction='mean' when every target is ignore_index."""
  z = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4)), jnp.float32)
  y = jnp.full((3,), -100)
  f = lambda a: jnp.sum(jaxdiv.cross_entropy(a, y, ignore_index=-100, label_smoothing=0.1, z_loss=1e-2,
                                             class_weights=jnp.ones(4), reduction=reduction))
  loss, grad = jax.value_and_grad(f)(z)
  assert float(loss) == 0.0
  np.testing.assert_array_equal(np.asarray(grad), 0.0)


@pytest.mark.parametrize("smoothing", ["uniform", "t5x"])
def test_masked_vocabulary_with_label_smoothing_stays_finite(smoothing):
  """Smoothing mass only goes to supported classes: -inf logits and where-masked ones (torch/Liger: +inf)."""
  z = jnp.array([[1.0, -jnp.inf, 0.5, 2.0], [0.0, 1.0, jnp.nan, -1.0]])
  where = jnp.array([[True, True, True, True], [True, True, False, True]])
  y = jnp.array([0, 1])
  f = lambda a: jaxdiv.cross_entropy(a, y, where=where, label_smoothing=0.2, smoothing=smoothing)
  loss = f(z)
  np.testing.assert_allclose(np.asarray(loss), ref.cross_entropy_options(
      np.asarray(z), np.asarray(y), where=np.asarray(where), label_smoothing=0.2, smoothing=smoothing),
      rtol=1e-6)
  grad = jax.grad(lambda a: jnp.sum(f(a)))(z)
  assert np.all(np.isfinite(np.asarray(loss))) and np.all(np.isfinite(np.asarray(grad)))
  assert float(grad[0, 1]) == 0.0 and float(grad[1, 2]) == 0.0
  # The torch/optax convention (ε/K over all K classes, masked ones included) is infinite here.
  naive = (1 - 0.2) * -jax.nn.log_softmax(z[0])[0] + 0.2 / 4 * -jnp.sum(jax.nn.log_softmax(z[0]))
  assert float(naive) == np.inf


def test_label_smoothing_equals_soft_cross_entropy_on_the_dense_smoothed_target():
  rng = np.random.default_rng(5)
  z = rng.normal(size=(4, 6)).astype(np.float32)
  y = rng.integers(0, 6, size=4)
  for smoothing in ("uniform", "t5x"):
    dense = ref.smoothed_targets(y, np.ones_like(z, bool), 0.25, smoothing).astype(np.float32)
    got = jaxdiv.cross_entropy(z, y, label_smoothing=0.25, smoothing=smoothing)
    np.testing.assert_allclose(np.asarray(got), np.asarray(jaxdiv.soft_cross_entropy(z, dense)), rtol=2e-6)
  uniform = np.full_like(z, 1 / 6) * 0.25 + 0.75 * np.eye(6, dtype=np.float32)[y]
  np.testing.assert_allclose(np.asarray(jaxdiv.soft_cross_entropy(z, np.eye(6, dtype=np.float32)[y],
                                                                  label_smoothing=0.25)),
                             np.asarray(jaxdiv.soft_cross_entropy(z, uniform)), rtol=2e-6)


def test_t5x_normalized_loss_is_zero_at_the_smoothed_target():
  eps, y = 0.1, np.array([2])
  target = ref.smoothed_targets(y, np.ones((1, 5), bool), eps, "t5x")
  loss = jaxdiv.cross_entropy(jnp.log(jnp.asarray(target, jnp.float32)), y, label_smoothing=eps,
                              smoothing="t5x", t5x_normalize=True)
  assert abs(float(loss[0])) < 1e-6


def test_z_loss_is_reported_and_aux_matches_reference():
  z, y, weights, where = _batch(7)
  kw = {"ignore_index": -100, "class_weights": weights, "where": where, "z_loss": 1e-2, "soft_cap": 3.0,
        "label_smoothing": 0.1}
  for reduction in REDUCTIONS:
    loss, aux = jaxdiv.cross_entropy(z, y, reduction=reduction, return_aux=True, **kw)
    want, want_aux = ref.cross_entropy_options(z, y, reduction=reduction, return_aux=True, **kw)
    np.testing.assert_allclose(np.asarray(loss), want, rtol=2e-6, atol=1e-6)
    assert sorted(aux) == ["accuracy", "entropy", "logsumexp", "z_loss"]
    for k in aux:
      np.testing.assert_allclose(np.asarray(aux[k]), want_aux[k], rtol=2e-6, atol=1e-6,
                                 err_msg=f"{reduction} {k}")
    no_z = jaxdiv.cross_entropy(z, y, reduction=reduction, **(kw | {"z_loss": 0.0}))
    np.testing.assert_allclose(np.asarray(loss - aux["z_loss"]), np.asarray(no_z), rtol=1e-6, atol=1e-6)


def test_soft_cap_bounds_the_logits_and_keeps_masked_entries_masked():
  z = jnp.array([[1e30, 0.0, -jnp.inf, -1e30]])
  loss = jaxdiv.cross_entropy(z, jnp.array([1]), soft_cap=5.0)
  capped = np.array([5.0, 0.0, -np.inf, -5.0])
  np.testing.assert_allclose(np.asarray(loss), -ref.log_softmax(capped)[[1]], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(jaxdiv.soft_cross_entropy(z, jnp.array([[0.0, 1.0, 0.0, 0.0]]),
                                                                  soft_cap=5.0)), np.asarray(loss), rtol=1e-6)


@pytest.mark.parametrize("fn", [jaxdiv.soft_cross_entropy, jaxdiv.soft_cross_entropy_with_log_targets])
def test_soft_cross_entropy_options_match_reference(fn):
  rng = np.random.default_rng(9)
  z = rng.normal(size=(4, 6)).astype(np.float32) * 3
  t = rng.normal(size=(4, 6)).astype(np.float32)
  where = rng.uniform(size=(4, 6)) > 0.2
  where[2] = False
  p = np.exp(ref.log_softmax(t, where=where)) if fn is jaxdiv.soft_cross_entropy_with_log_targets else \
      np.exp(ref.log_softmax(t)).astype(np.float32)
  target = t if fn is jaxdiv.soft_cross_entropy_with_log_targets else p
  kw = {"label_smoothing": 0.2, "z_loss": 1e-3, "soft_cap": 4.0, "where": where}
  for reduction in REDUCTIONS:
    got = fn(z, target, reduction=reduction, **kw)
    want = ref.soft_cross_entropy_options(z, p, reduction=reduction, **kw)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=1e-6, err_msg=reduction)


GRAD_OPTIONS = {
    "uniform": {"label_smoothing": 0.2},
    "t5x_normalize": {"label_smoothing": 0.2, "smoothing": "t5x", "t5x_normalize": True},
    "z_loss": {"z_loss": 0.05},
    "soft_cap": {"soft_cap": 2.0},
    "ignore_mean": {"ignore_index": -100, "reduction": "mean"},
    "where_batchmean": {"where": np.array([True, True, False, True]), "reduction": "batchmean"},
    "all": {"label_smoothing": 0.1, "z_loss": 0.01, "soft_cap": 3.0, "ignore_index": -100,
            "reduction": "mean", "where": np.array([[True], [True], [False]])},
}


@pytest.mark.parametrize("option", list(GRAD_OPTIONS))
def test_gradients_of_each_option_match_float64_finite_differences(option):
  kw = GRAD_OPTIONS[option]
  with jax.enable_x64(True):
    rng = np.random.default_rng(11)
    z = jnp.asarray(rng.normal(size=(3, 4)))
    y = jnp.asarray([1, -100, 3])
    w = jnp.asarray(rng.uniform(0.5, 2.0, size=4))
    f = lambda a, cw: jnp.sum(jaxdiv.cross_entropy(a, y if "ignore_index" in kw else jnp.abs(y) % 4,
                                                   class_weights=cw, **kw))
    order = 2 if option == "all" else 1  # second order once, for every option together
    jtu.check_grads(jax.jit(f), (z, w), order=order, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6, eps=1e-6)
    soft = lambda a, t: jnp.sum(jaxdiv.soft_cross_entropy_with_log_targets(
        a, t, **{k: v for k, v in kw.items() if k in ("label_smoothing", "z_loss", "soft_cap", "where")}))
    jtu.check_grads(jax.jit(soft), (z, jnp.asarray(rng.normal(size=(3, 4)))), order=1, modes=("rev",),
                    atol=1e-6, rtol=1e-6, eps=1e-6)


def test_option_errors_name_the_argument():
  z, y = jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32)
  with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\]; got 1.5\."):
    jaxdiv.cross_entropy(z, y, label_smoothing=1.5)
  with pytest.raises(TypeError, match="label_smoothing must be a concrete Python float"):
    jax.jit(lambda e: jaxdiv.cross_entropy(z, y, label_smoothing=e))(0.1)
  with pytest.raises(ValueError, match=r"smoothing must be one of \['uniform', 't5x'\]; got 'torch'"):
    jaxdiv.cross_entropy(z, y, label_smoothing=0.1, smoothing="torch")
  with pytest.raises(ValueError, match="t5x_normalize=True needs smoothing='t5x'"):
    jaxdiv.cross_entropy(z, y, label_smoothing=0.1, t5x_normalize=True)
  with pytest.raises(ValueError, match=r"class_weights must have shape \[num_classes\] = \[3\]; got \[4\]"):
    jaxdiv.cross_entropy(z, y, class_weights=jnp.ones(4))
  with pytest.raises(TypeError, match="class_weights must be a floating-point array; got int32"):
    jaxdiv.cross_entropy(z, y, class_weights=jnp.ones(3, jnp.int32))
  with pytest.raises(TypeError, match="ignore_index must be None or an int"):
    jaxdiv.cross_entropy(z, y, ignore_index=-100.0)
  with pytest.raises(ValueError, match=r"soft_cap must lie in \(0, inf\); got 0.0\."):
    jaxdiv.cross_entropy(z, y, soft_cap=0.0)
  with pytest.raises(ValueError, match=r"z_loss must lie in \[0, inf\); got -1.0\."):
    jaxdiv.soft_cross_entropy(z, z, z_loss=-1.0)
