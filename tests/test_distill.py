"""Distillation: conventions (T², teacher gradient, JSD_β limits) and the sparse top-k teacher."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import test_util as jtu

import jaxdiv
import reference as ref

PROPERTY = settings(max_examples=10, deadline=None, derandomize=True)
SHAPE = (3, 6)


def _pair(seed, scale=2.0):
  rng = np.random.default_rng(seed)
  return [(rng.normal(size=SHAPE) * scale).astype(np.float32) for _ in range(2)]


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_options_match_reference(divergence):
  z, t = _pair(1)
  y = np.array([0, -100, 5])
  where = np.ones(SHAPE, bool)
  where[:, 2] = False
  for kw in ({"temperature": 1.0}, {"temperature": 3.0, "scale_by_temperature_squared": False},
             {"temperature": 2.0, "labels": y, "alpha": 0.3, "ignore_index": -100, "where": where},
             {"temperature": 0.5, "beta": 0.2, "where": where[:1, :], "reduction": "mean"},
             {"temperature": 2.0, "labels": y, "ignore_index": -100, "reduction": "batchmean",
              "normalizer": 4}):
    got = jaxdiv.distillation_loss(z, t, divergence=divergence, **kw)
    want = ref.distillation_loss(z, t, divergence=divergence, **kw)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=1e-6, err_msg=str(kw))


@PROPERTY
@given(st.integers(0, 2**31 - 1))
def test_temperature_one_equals_kl_and_beta_limits_of_jsd_are_the_kls(seed):
  z, t = _pair(seed, scale=3.0)
  forward = jaxdiv.kl_divergence_with_log_targets(z, t)
  reverse = jaxdiv.reverse_kl_divergence(z, t)
  close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  close(jaxdiv.distillation_loss(z, t), forward)
  close(jaxdiv.distillation_loss(z, t, divergence="reverse_kl"), reverse)
  close(jaxdiv.distillation_loss(z, t, divergence="jsd", beta=0.0), forward)
  close(jaxdiv.distillation_loss(z, t, divergence="jsd", beta=1.0), reverse)
  with jax.enable_x64(True):  # JSD_β/β → KL(P‖Q) and JSD_β/(1-β) → KL(Q‖P), O(β·max p/q) away from the limit
    z64, t64 = np.float64(z), np.float64(t)
    small = jaxdiv.distillation_loss(z64, t64, divergence="jsd", beta=1e-9) / 1e-9
    large = jaxdiv.distillation_loss(z64, t64, divergence="jsd", beta=1 - 1e-9) / (1 - (1 - 1e-9))
    np.testing.assert_allclose(np.asarray(small), ref.kl_divergence_with_log_targets(z64, t64), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(large), ref.reverse_kl_divergence(z64, t64), rtol=1e-4)


def test_temperature_squared_factor_and_hard_label_mix():
  z, t = _pair(3)
  y = np.array([1, 2, 3])
  soft = jaxdiv.kl_divergence_with_log_targets(z / 4, t / 4)
  np.testing.assert_allclose(np.asarray(jaxdiv.distillation_loss(z, t, temperature=4.0)),
                             16 * np.asarray(soft), rtol=1e-6)
  np.testing.assert_allclose(
      np.asarray(jaxdiv.distillation_loss(z, t, temperature=4.0, scale_by_temperature_squared=False)),
      np.asarray(soft), rtol=1e-6)
  mixed = jaxdiv.distillation_loss(z, t, temperature=4.0, labels=y, alpha=0.25)
  np.testing.assert_allclose(np.asarray(mixed), 0.25 * np.asarray(jaxdiv.cross_entropy(z, y)) +
                             0.75 * 16 * np.asarray(soft), rtol=1e-6)


def test_hinton_scaling_keeps_the_gradient_scale_across_temperatures():
  """With T², the soft gradient tends to (z - t)/(V·…) independent of T; without it, it shrinks like 1/T²."""
  z, t = _pair(4, scale=0.5)
  grad = lambda temp, scale: jax.grad(lambda a: jnp.sum(jaxdiv.distillation_loss(
      a, t, temperature=temp, scale_by_temperature_squared=scale)))(z)
  ratio_scaled = float(jnp.linalg.norm(grad(20.0, True)) / jnp.linalg.norm(grad(40.0, True)))
  ratio_plain = float(jnp.linalg.norm(grad(20.0, False)) / jnp.linalg.norm(grad(40.0, False)))
  assert abs(ratio_scaled - 1) < 0.01 and abs(ratio_plain - 4) < 0.05


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_teacher_gradient_switch(divergence):
  z, t = _pair(5)
  t[:, 4] = z[:, 4] = -np.inf  # a class impossible for both: finite derivatives on both sides
  if divergence != "forward_kl":
    z[:, 1] = -np.inf  # the student may drop a teacher class in reverse KL and JSD (not in forward KL)
  f = lambda a, b, g: jnp.sum(jaxdiv.distillation_loss(a, b, divergence=divergence, temperature=2.0,
                                                       teacher_gradient=g))
  _, dt = jax.grad(f, argnums=(0, 1))(z, t, False)
  np.testing.assert_array_equal(np.asarray(dt), 0.0)
  dz, dt = jax.grad(f, argnums=(0, 1))(z, t, True)
  assert np.all(np.isfinite(np.asarray(dz))) and np.all(np.isfinite(np.asarray(dt)))
  assert np.any(np.asarray(dt) != 0)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_derivatives_match_float64_finite_differences(divergence):
  with jax.enable_x64(True):
    rng = np.random.default_rng(6)
    z, t = jnp.asarray(rng.normal(size=(2, 4))), jnp.asarray(rng.normal(size=(2, 4)))
    f = lambda a, b: jnp.sum(jaxdiv.distillation_loss(a, b, divergence=divergence, temperature=1.7, beta=0.3,
                                                      labels=jnp.array([1, 3]), alpha=0.4,
                                                      teacher_gradient=True, reduction="mean"))
    order = 2 if divergence == "forward_kl" else 1  # the divergences' own second order is in test_api
    jtu.check_grads(jax.jit(f), (z, t), order=order, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6, eps=1e-6)


def test_old_divergence_spelling_warns_and_means_forward_kl():
  z, t = jnp.array([[0.5, -1.0, 2.0]]), jnp.array([[1.0, 0.0, -1.0]])
  with pytest.warns(DeprecationWarning, match="divergence='kl' is deprecated; use divergence='forward_kl'"):
    old = jaxdiv.distillation_loss(z, t, divergence="kl")
  np.testing.assert_array_equal(old, jaxdiv.distillation_loss(z, t, divergence="forward_kl"))


def test_distillation_errors():
  z = jnp.zeros((2, 3))
  with pytest.raises(ValueError,
                     match=r"divergence must be one of \['forward_kl', 'reverse_kl', 'jsd'\]; got 'kld'"):
    jaxdiv.distillation_loss(z, z, divergence="kld")
  with pytest.raises(ValueError, match=r"temperature must lie in \(0, inf\); got 0.0"):
    jaxdiv.distillation_loss(z, z, temperature=0.0)
  with pytest.raises(ValueError, match=r"temperature must lie in \(0, inf\); got inf"):
    jaxdiv.distillation_loss(z, z, temperature=float("inf"))
  with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\]; got 1.5"):
    jaxdiv.distillation_loss(z, z, divergence="forward_kl", beta=1.5)
  with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]; got 2.0"):
    jaxdiv.distillation_loss(z, z, labels=jnp.zeros(2, jnp.int32), alpha=2.0)
  with pytest.raises(ValueError,
                     match=r"teacher_logits must have the same shape as student_logits, \[2, 3\]"):
    jaxdiv.distillation_loss(z, jnp.zeros((3, 3)))


# --------------------------------------------------------------------------- #
# top_k_kl_divergence
# --------------------------------------------------------------------------- #


def _teacher_top_k(rng, shape, k):
  lp = ref.log_softmax(rng.normal(size=shape) * 2)
  ids = np.argsort(-lp, axis=-1)[..., :k]
  return ids, np.take_along_axis(lp, ids, -1).astype(np.float32), lp


@PROPERTY
@given(st.integers(0, 2**31 - 1), st.sampled_from(["renormalize", "rest_bucket"]))
def test_top_k_with_k_equal_to_vocabulary_is_the_full_kl(seed, tail):
  rng = np.random.default_rng(seed)
  z = (rng.normal(size=SHAPE) * 2).astype(np.float32)
  lp = ref.log_softmax(rng.normal(size=SHAPE) * 2).astype(np.float32)
  ids = np.stack([rng.permutation(SHAPE[-1]) for _ in range(SHAPE[0])])  # any order
  got = jaxdiv.top_k_kl_divergence(z, ids, np.take_along_axis(lp, ids, -1), tail=tail)
  np.testing.assert_allclose(np.asarray(got), np.asarray(jaxdiv.kl_divergence_with_log_targets(z, lp)),
                             rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("tail", ["renormalize", "rest_bucket"])
def test_top_k_matches_reference(tail):
  rng = np.random.default_rng(7)
  z = (rng.normal(size=(4, 8)) * 2).astype(np.float32)
  ids, lp, _ = _teacher_top_k(rng, (4, 8), 3)
  where = np.ones((4, 8), bool)
  where[1, 7] = False
  where[3] = False
  z[1, 7] = np.nan
  ids[1] = np.where(ids[1] == 7, 0, ids[1]) if 0 not in ids[1] else ids[1]
  got = jaxdiv.top_k_kl_divergence(z, ids, lp, tail=tail, where=where)
  want = np.where(where.any(-1), ref.top_k_kl_divergence(z, ids, lp, tail, where=where), 0.0)
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=1e-6)
  mean = jaxdiv.top_k_kl_divergence(z, ids, lp, tail=tail, where=where, reduction="mean")
  np.testing.assert_allclose(float(mean), want[:3].mean(), rtol=2e-6)


@pytest.mark.parametrize("tail", ["renormalize", "rest_bucket"])
def test_top_k_under_transforms_and_float64_derivatives(tail):
  rng = np.random.default_rng(8)
  z = (rng.normal(size=(3, 7))).astype(np.float32)
  ids, lp, _ = _teacher_top_k(rng, (3, 7), 3)
  f = lambda a: jaxdiv.top_k_kl_divergence(a, ids, lp, tail=tail)
  want = ref.top_k_kl_divergence(z, ids, lp, tail)
  np.testing.assert_allclose(np.asarray(jax.jit(f)(z)), want, rtol=2e-6)
  vm = jax.vmap(lambda a, i, p: jaxdiv.top_k_kl_divergence(a, i, p, tail=tail))(z, ids, lp)
  np.testing.assert_allclose(np.asarray(vm), want, rtol=2e-6)
  np.testing.assert_allclose(jax.jit(jax.jacfwd(f))(z), jax.jit(jax.jacrev(f))(z), rtol=1e-5, atol=1e-7)
  h = np.asarray(jax.jit(jax.hessian(lambda a: jnp.sum(f(a))))(z)).reshape(z.size, z.size)
  assert np.all(np.isfinite(h))
  np.testing.assert_allclose(h, h.T, rtol=1e-5, atol=1e-7)
  with jax.enable_x64(True):
    z64, lp64 = jnp.asarray(z, jnp.float64), jnp.asarray(lp, jnp.float64)
    order = 2 if tail == "rest_bucket" else 1  # renormalize is the plain KL on gathered logits
    total = lambda a: jnp.sum(jaxdiv.top_k_kl_divergence(a, ids, lp64, tail=tail))
    jtu.check_grads(jax.jit(total), (z64,), order=order, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6, eps=1e-6)


def test_top_k_rest_bucket_is_accurate_when_the_top_k_hold_almost_all_mass():
  """The student's rest mass is a logsumexp over the tail, never 1 - Σ q (which would round to 0)."""
  z = np.array([[30.0, 0.0, 0.0, 0.0]], np.float32)
  ids = np.array([[0]])
  lp = np.array([[np.log1p(-3e-13)]], np.float32)
  got = jaxdiv.top_k_kl_divergence(z, ids, lp, tail="rest_bucket")
  want = ref.top_k_kl_divergence(z.astype(np.float64), ids, np.log1p(-np.array([[3e-13]])), "rest_bucket")
  assert float(got[0]) > 0
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-2)


def test_top_k_errors():
  z = jnp.zeros((2, 5))
  with pytest.raises(ValueError, match=r"tail must be one of \['renormalize', 'rest_bucket'\]; got 'drop'"):
    jaxdiv.top_k_kl_divergence(z, jnp.zeros((2, 2), jnp.int32), jnp.zeros((2, 2)), tail="drop")
  with pytest.raises(ValueError,
                     match=r"teacher_top_k_ids must have the shape of logits with axis 1 replaced by k"):
    jaxdiv.top_k_kl_divergence(z, jnp.zeros((3, 2), jnp.int32), jnp.zeros((3, 2)))
  with pytest.raises(ValueError, match="k = 6 top-k ids exceed num_classes = 5"):
    jaxdiv.top_k_kl_divergence(z, jnp.zeros((2, 6), jnp.int32), jnp.zeros((2, 6)))
  with pytest.raises(TypeError, match="teacher_top_k_ids must be an integer array"):
    jaxdiv.top_k_kl_divergence(z, jnp.zeros((2, 2)), jnp.zeros((2, 2)))
  with pytest.raises(ValueError,
                     match="teacher_top_k_log_probs must have the same shape as teacher_top_k_ids"):
    jaxdiv.top_k_kl_divergence(z, jnp.zeros((2, 2), jnp.int32), jnp.zeros((2, 3)))
