"""Fidelity: derivatives that are the derivative of the value, NaN that stays NaN, labels of every type.

* Every public loss of ``tests/cases.py`` (the fused and vocab-parallel ones through their adapters) is
  differentiated against float64 central finite differences of its own value — first and second order,
  both arguments — over targets that are not a normalised distribution: partial (mass 0.9), multi-hot
  (mass 2), all-zero, and normalised but with mass dropped by a ``where`` mask. A hand-written tangent
  that drifts from the value (the soft-CE gradient divided by the target mass; the KL gradient ignored
  it) fails here.
* A NaN in an unmasked logit or target comes out as a NaN value, in every loss and path.
* Integer labels of every dtype select the same class: range checks and one-hot indices are computed in
  a wide type (int8 labels with 128 classes, uint16 labels with 70000 classes, int64 under x64).
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu

import jaxdiv
from cases import CASES, call

TARGETS = ["partial", "multi_hot", "all_zero", "where_drops_mass"]
SOFT = sorted(n for n, c in CASES.items() if c.target in ("probs", "logits", "binary_probs"))
# The finite-difference test runs on the losses with their own derivative rules; the fused and
# vocab-parallel adapters compute the same definition and are held equal to these, value and gradient,
# by tests/test_paths.py and the contract test (whose finite differences cover them on normalised targets).
DIRECT_SOFT = [n for n in SOFT if not CASES[n].adapter]


def _rng(*key) -> np.random.Generator:
  return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _unusual(case, kind: str, rng, shape=(2, 5)):
  """(logits, target, where) in float64 with a target that is not a normalised distribution."""
  z = rng.normal(size=shape)
  where = None
  if case.target == "logits":
    t = rng.normal(size=shape)
    if kind in ("partial", "all_zero", "multi_hot"):
      t[:, 1] = -np.inf if kind != "all_zero" else t[:, 1]  # logits targets are always normalised
    if kind == "where_drops_mass":
      where = np.ones(shape, bool)
      where[:, 2] = False
    return z, t, where
  p = rng.uniform(0.1, 1.0, size=shape)
  if case.target == "binary_probs":
    p = {"partial": p * 0.9, "multi_hot": (p > 0.5).astype(float), "all_zero": np.zeros(shape)}.get(kind, p)
    if kind == "where_drops_mass":
      where = np.ones(shape, bool)
      where[:, 2] = False
    return z, p, where
  p = p / p.sum(-1, keepdims=True)
  if kind == "partial":
    p = 0.9 * p
  elif kind == "multi_hot":
    p = np.zeros(shape)
    p[:, [0, 3]] = 1.0
  elif kind == "all_zero":
    p = np.zeros(shape)
  else:
    where = np.ones(shape, bool)
    where[:, 2] = False  # the mask drops the target mass on class 2: the value sums over the rest
  return z, p, where


@pytest.mark.parametrize("kind", TARGETS)
@pytest.mark.parametrize("name", DIRECT_SOFT)
def test_derivatives_are_the_derivatives_of_the_value_for_unusual_targets(name, kind):
  case = CASES[name]
  with jax.enable_x64(True):
    z, t, where = _unusual(case, kind, _rng(name, kind))
    kw = {} if where is None else {"where": jnp.asarray(where)}
    value = np.asarray(call(case, jnp.asarray(z), jnp.asarray(t), **kw))
    if not np.all(np.isfinite(value)):
      assert np.all(~np.isnan(value)), "an infinite value may be +inf, never NaN"
      return  # truly infinite (target mass on a -inf logit): derivatives are not promised
    diff = case.differentiable_args
    args = [jnp.asarray(z), jnp.asarray(t)]

    def total(*d):
      full = [d[diff.index(i)] if i in diff else args[i] for i in range(2)]
      return jnp.sum(call(case, *full, **kw))

    # Central differences need room on both sides: all-zero and multi-hot probability targets sit on the
    # boundary p = 0 only where the derivative w.r.t. p is one-sided; perturb the logits only there.
    d_args = diff if kind not in ("all_zero", "multi_hot") or case.target == "logits" else (0,)
    f = lambda *d: total(*[d[d_args.index(i)] if i in d_args else args[i] for i in diff])
    jtu.check_grads(jax.jit(f), [args[i] for i in d_args], order=2, modes=case.modes, atol=1e-6, rtol=1e-6,
                    eps=1e-6)


def test_soft_cross_entropy_gradient_is_the_target_mass_times_softmax_minus_the_target():
  """Regression (issue 13): the gradient was softmax / Σp - p: +inf for an all-zero (padding) row, and
  [1.061, 0.159, 1.814] for p = 0.1·ones(3)."""
  z = jnp.array([[0.5, -1.0, 2.0], [0.1, 0.2, 0.3]])
  p = jnp.array([[0.1, 0.1, 0.1], [0.0, 0.0, 0.0]])
  g = jax.grad(lambda z: jnp.sum(jaxdiv.soft_cross_entropy(z, p)))(z)
  want = np.asarray(p.sum(-1, keepdims=True)) * np.asarray(jax.nn.softmax(z)) - np.asarray(p)
  np.testing.assert_allclose(g, want, atol=1e-7)
  np.testing.assert_array_equal(g[1], 0.0)


def test_kl_gradient_and_value_follow_the_target_mass():
  """Regression (issue 13): with Σp ≠ 1 the KL gradient was q - p (not Σp·q - p), and zero targets gave
  a value of 1.0 with a non-zero gradient although the value does not move."""
  z = jnp.array([[0.5, -1.0, 2.0], [0.1, 0.2, 0.3]])
  p = jnp.array([[0.3, 0.3, 0.3], [0.0, 0.0, 0.0]])
  value, g = jax.value_and_grad(lambda z: jnp.sum(jaxdiv.kl_divergence(z, p)))(z)
  q = np.asarray(jax.nn.softmax(z))
  np.testing.assert_allclose(g, np.asarray(p.sum(-1, keepdims=True)) * q - np.asarray(p), atol=1e-7)
  np.testing.assert_array_equal(jaxdiv.kl_divergence(z, p)[1], 0.0)
  del value


# --------------------------------------------------------------------------- #
# NaN in, NaN out
# --------------------------------------------------------------------------- #


def _nan_inputs(case, rng, where_nan: str):
  z = rng.normal(size=(3, 6))
  if case.target == "labels":
    t = rng.integers(0, 6, size=(3,))
  elif case.target == "probs":
    t = rng.uniform(0.1, 1.0, size=(3, 6))
    t /= t.sum(-1, keepdims=True)
  elif case.target == "binary_probs":
    t = rng.uniform(size=(3, 6))
  elif case.target == "logits":
    t = rng.normal(size=(3, 6))
  else:
    t = None
  if where_nan == "logits":
    z[1, 3] = np.nan
  else:
    t[1, 3] = np.nan
  return z, t


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_nan_in_an_unmasked_logit_gives_a_nan_value(name):
  case = CASES[name]
  z, t = _nan_inputs(case, _rng(name, "nan"), "logits")
  args = [jnp.asarray(z, jnp.float32)] + ([] if t is None else [jnp.asarray(t) if case.target == "labels" else
                                                                 jnp.asarray(t, jnp.float32)])
  out = np.asarray(call(case, *args))
  _assert_nan_only_there(name, out, z.shape)


def _assert_nan_only_there(name, out, shape):
  """NaN in the value of the poisoned row (or element, for the elementwise binary losses), nowhere else."""
  nan = np.zeros(out.shape, bool)
  if out.shape == shape:
    nan[1, 3] = True
  else:
    nan[1] = True
  assert np.all(np.isnan(out[nan])), f"{name}: a NaN input came out as {out[nan]}"
  assert np.all(~np.isnan(out[~nan])), f"{name}: the NaN leaked into other rows"


@pytest.mark.parametrize("name", [n for n in sorted(CASES) if CASES[n].target in ("probs", "logits",
                                                                                   "binary_probs")])
def test_a_nan_in_an_unmasked_target_gives_a_nan_value(name):
  case = CASES[name]
  z, t = _nan_inputs(case, _rng(name, "nan-target"), "target")
  out = np.asarray(call(case, jnp.asarray(z, jnp.float32), jnp.asarray(t, jnp.float32)))
  _assert_nan_only_there(name, out, z.shape)


def test_cross_entropy_with_a_nan_logit_is_nan_not_a_negative_number():
  """Regression (issue 13): cross_entropy([[0.3, nan, 2.0, 0.5, -0.7]], [2]) returned -2.0."""
  out = jaxdiv.cross_entropy(jnp.array([[0.3, jnp.nan, 2.0, 0.5, -0.7]]), jnp.array([2]))
  assert np.isnan(out[0])


# --------------------------------------------------------------------------- #
# Labels of every integer dtype
# --------------------------------------------------------------------------- #

LABEL_DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32"]


@pytest.mark.parametrize("dtype", LABEL_DTYPES)
def test_labels_of_every_integer_dtype_select_the_same_class(dtype):
  rng = np.random.default_rng(0)
  vocab = 128
  z = jnp.asarray(rng.normal(size=(6, vocab)), jnp.float32)
  y32 = np.array([0, 5, 127, 64, 100, 127])
  y = jnp.asarray(y32.astype(dtype))
  want = jaxdiv.cross_entropy(z, jnp.asarray(y32, jnp.int32))
  np.testing.assert_array_equal(jaxdiv.cross_entropy(z, y), want)
  np.testing.assert_array_equal(jaxdiv.check_labels(y, vocab), y)
  g = jax.grad(lambda z: jnp.sum(jaxdiv.cross_entropy(z, y)))(z)
  np.testing.assert_allclose(g, jax.grad(lambda z: jnp.sum(jaxdiv.cross_entropy(z, jnp.asarray(y32))))(z))
  h, w = z[:, :8], jnp.asarray(rng.normal(size=(8, vocab)), jnp.float32)
  np.testing.assert_allclose(jaxdiv.fused_linear_cross_entropy(h, w, y, reduction="sum"),
                             jnp.sum(jaxdiv.cross_entropy(h @ w, jnp.asarray(y32))), rtol=1e-6)


def test_uint16_labels_over_65536_classes_put_the_gradient_on_one_class():
  """Regression (issue 13): the one-hot's iota was built in the label dtype, so label 5 also hit 65541."""
  vocab = 70000
  z = jnp.zeros((1, vocab), jnp.float32)
  g = jax.grad(lambda z: jnp.sum(jaxdiv.cross_entropy(z, jnp.array([5], jnp.uint16))))(z)
  assert float(g[0, 5]) < -0.99 and float(g[0, 65541]) > 0


def test_int8_labels_with_128_classes_are_in_range():
  """Regression (issue 13): `y < 128` in int8 wrapped, so every valid label gave NaN."""
  z = jnp.zeros((2, 128), jnp.float32)
  out = jaxdiv.cross_entropy(z, jnp.array([3, 127], jnp.int8))
  np.testing.assert_allclose(out, np.log(128.0), rtol=1e-6)


def test_int64_labels_under_x64_are_not_narrowed():
  """Regression (issue 13): 2**32 + 1 was cast to int32 in the fused loss and trained class 1."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
    y = jnp.array([2**32 + 1, 3], jnp.int64)
    for loss in (jaxdiv.fused_linear_cross_entropy(h, w, y, reduction="none", mode="low_memory"),
                 jaxdiv.cross_entropy(h @ w, y)):
      assert np.isnan(loss[0]) and np.isfinite(loss[1])
    g = jax.grad(lambda h: jnp.nansum(jaxdiv.fused_linear_cross_entropy(h, w, y, reduction="none")))(h)
    np.testing.assert_array_equal(g[0], 0.0)


def test_top_k_ids_follow_the_label_contract():
  """Regression (issue 13): id V read class V - 1 (clipped) and int8 ids wrapped."""
  logits = jnp.zeros((2, 130), jnp.float32)
  log_probs = jnp.log(jnp.array([[0.5, 0.3], [0.5, 0.3]]))
  ids = jnp.array([[0, 130], [1, 129]])
  out = jaxdiv.top_k_kl_divergence(logits, ids, log_probs)
  assert np.isnan(out[0]) and np.isfinite(out[1])
  g = jax.grad(lambda z: jnp.nansum(jaxdiv.top_k_kl_divergence(z, ids, log_probs)))(logits)
  np.testing.assert_array_equal(g[0], 0.0)
  small = jaxdiv.top_k_kl_divergence(logits, jnp.array([[0, 127], [1, 120]], jnp.int8), log_probs)
  assert np.all(np.isfinite(small))


# --------------------------------------------------------------------------- #
# The listed edges (issue 13, item 5), each at the point it is about
# --------------------------------------------------------------------------- #


def test_return_aux_keeps_the_1e30_tie_at_log_2():
  """Regression: return_aux added a 0·lse² z-loss term, and lse² = inf at |z| = 1e30 made it NaN."""
  z = jnp.array([[1e30, 1e30, 0.0]])
  loss, aux = jaxdiv.cross_entropy(z, jnp.array([0]), return_aux=True)
  np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)
  assert aux["z_loss"][0] == 0.0


def test_vocab_parallel_divergences_of_a_fully_masked_row_are_zero_as_on_one_device():
  mesh = jax.make_mesh((8,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(2, 16)), jnp.float32).at[0].set(-jnp.inf)
  t = jnp.asarray(rng.normal(size=(2, 16)), jnp.float32).at[0].set(-jnp.inf)
  for divergence in ("forward_kl", "reverse_kl", "jsd"):
    got = jaxdiv.vocab_parallel_kl_divergence(z, t, mesh=mesh, vocab_axis="vocab", divergence=divergence)
    assert got[0] == 0.0 and np.isfinite(got[1]), divergence


def test_an_infinite_reverse_kl_has_a_zero_gradient_not_nan():
  """Student mass where the teacher has none: KL(q‖p) = +inf, whose gradient was [-inf, nan, -inf]."""
  t = jnp.array([0.0, -jnp.inf, 1.0])
  z = jnp.array([0.0, 1.0, 2.0])
  assert jaxdiv.reverse_kl_divergence(z, t) == np.inf
  np.testing.assert_array_equal(jax.grad(lambda z: jaxdiv.reverse_kl_divergence(z, t))(z), 0.0)


def test_alpha_zero_with_a_label_on_a_masked_class_is_the_soft_term_not_nan():
  z = jnp.array([[0.5, -1.0, 2.0]])
  where = jnp.array([[True, False, True]])
  got = jaxdiv.distillation_loss(z, z[:, ::-1], labels=jnp.array([1]), alpha=0.0, where=where)
  want = jaxdiv.distillation_loss(z, z[:, ::-1], where=where)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_string_normalizer_is_refused_by_name():
  with pytest.raises(TypeError, match="normalizer must be an integer or floating scalar; got '2'"):
    jaxdiv.cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 1]), reduction="mean", normalizer="2")


@pytest.mark.parametrize("option, value", [("soft_cap", float("inf")), ("temperature", float("inf")),
                                           ("beta", 1.5), ("beta", -0.1)])
def test_options_that_make_no_sense_are_refused_by_name(option, value):
  z = jnp.zeros((2, 3))
  call_ = {"soft_cap": lambda: jaxdiv.cross_entropy(z, jnp.array([0, 1]), soft_cap=value),
           "temperature": lambda: jaxdiv.distillation_loss(z, z, temperature=value),
           "beta": lambda: jaxdiv.distillation_loss(z, z, divergence="reverse_kl", beta=value)}[option]
  with pytest.raises(ValueError, match=rf"{option} must lie in "):
    call_()


@pytest.mark.parametrize("dtype", ["int64", "uint64", "uint32", "int8"])
def test_labels_of_every_integer_dtype_under_x64_select_the_same_class(dtype):
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.normal(size=(4, 100)), jnp.float32)
    y32 = np.array([0, 99, 50, 7])
    y = jnp.asarray(y32.astype(dtype))
    assert y.dtype == np.dtype(dtype)
    want = jaxdiv.cross_entropy(z, jnp.asarray(y32, jnp.int32))
    np.testing.assert_array_equal(jaxdiv.cross_entropy(z, y), want)
    np.testing.assert_array_equal(jaxdiv.check_labels(y, 100), y)
    big = jnp.asarray(np.array([2**40 + 3], dtype=np.uint64 if dtype.startswith("u") else np.int64))
    if dtype in ("int64", "uint64"):  # beyond int32: out of range, never narrowed onto class 3
      assert np.isnan(jaxdiv.cross_entropy(z[:1], big)[0])
