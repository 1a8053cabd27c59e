"""``jaxdiv.optax``: optax's classification losses, same names, same results, no NaN.

* signatures (names, kinds, defaults) equal optax 0.2.8's;
* values and gradients equal optax's on random inputs wherever optax is finite
  and correct, over int, negative, tuple and None axes and both kinds of ``where``;
* float64 values equal optax run in float64 (the reference where it is correct);
* jit, vmap, jacfwd/jacrev and Hessians agree and are finite;
* optax's formula for unnormalised inputs, its ``where`` broadcasting per
  function, negative labels and labels on masked classes, its deprecation warning;
* each documented difference has a test named after it: the NaN cases (with
  the float64 truth), the rounded-wrong-in-optax case, the float32 return dtype.
"""

from __future__ import annotations

import inspect
import math
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import test_util  # noqa: F401  (jax.test_util.check_grads)

import jaxdiv
import reference as ref
from jaxdiv import optax as dropin

NEG_INF = -np.inf
RTOL, ATOL = 2e-6, 2e-6


def _rng(*key) -> np.random.Generator:
  return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _softmax(x, axis=-1):
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def _log(x):
  """np.log with log 0 = -inf and no warning (zero probabilities are the point here)."""
  with np.errstate(divide="ignore"):
    return np.log(np.asarray(x, np.float64))


def _log_softmax(x, axis=-1):
  return _log(_softmax(x, axis))


def _axis_tuple(axis, ndim):
  return tuple(range(ndim)) if axis is None else axis


def _softmax_over(x, axes):
  axes = (axes,) if isinstance(axes, int) else axes
  m = x.max(axes, keepdims=True)
  e = np.exp(x - m)
  return e / e.sum(axes, keepdims=True)


def _inputs(name, rng, shape, axis):
  ax = _axis_tuple(axis, len(shape))
  z = rng.normal(size=shape) * 2
  other = rng.normal(size=shape) * 2
  if name in ("softmax_cross_entropy", "safe_softmax_cross_entropy", "poly_loss_cross_entropy"):
    return z, _softmax_over(other, ax)
  if name == "softmax_cross_entropy_with_integer_labels":
    axes = (ax,) if isinstance(ax, int) else ax
    batch = tuple(s for i, s in enumerate(shape) if i not in [a % len(shape) for a in axes])
    k = math.prod(shape[a] for a in axes)
    return z, rng.integers(0, k, size=batch)
  if name == "kl_divergence":
    return np.log(_softmax_over(z, ax)), _softmax_over(other, ax)
  if name in ("generalized_kl_divergence", "convex_kl_divergence"):  # unnormalised measures
    return z / 2, np.exp(other / 2)
  if name == "kl_divergence_with_log_targets":
    return np.log(_softmax_over(z, ax)), np.log(_softmax_over(other, ax))
  if name in ("sigmoid_binary_cross_entropy", "sigmoid_focal_loss"):
    return z, rng.uniform(size=shape)
  if name == "smooth_labels":
    return (_softmax_over(other, ax),)
  raise KeyError(name)


NAMES = sorted(dropin.__all__)
DISTINCT = [n for n in NAMES if n != "convex_kl_divergence"]  # an alias: the same function object
AXIS_NAMES = [n for n in DISTINCT if "axis" in inspect.signature(getattr(dropin, n)).parameters]
EXTRA = {"poly_loss_cross_entropy": {"epsilon": 1.5}, "sigmoid_focal_loss": {"gamma": 1.5, "alpha": 0.3},
         "smooth_labels": {"alpha": 0.1}}


def _call(module, name, *args, **kwargs):
  fn = getattr(module.losses if module is optax else module, name)
  return fn(*args, **EXTRA.get(name, {}), **kwargs)


def _optax(name, *args, **kwargs):
  if name == "convex_kl_divergence":  # optax's copy warns that it is deprecated
    name = "generalized_kl_divergence"
  return _call(optax, name, *args, **kwargs)


def _f32(args):
  return [jnp.asarray(a) if np.issubdtype(np.asarray(a).dtype, np.integer) else jnp.asarray(a, jnp.float32)
          for a in args]


def _close(a, b, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


def _float_argnums(args):
  return tuple(i for i, a in enumerate(args) if jnp.issubdtype(a.dtype, jnp.floating))


# --------------------------------------------------------------------------- #
# The drop-in contract
# --------------------------------------------------------------------------- #


def test_signatures_equal_optax():
  for name in NAMES:
    ours = inspect.signature(getattr(dropin, name)).parameters.values()
    theirs = inspect.signature(getattr(optax.losses, name)).parameters.values()
    assert [(p.name, p.kind, p.default) for p in ours] == [(p.name, p.kind, p.default) for p in theirs], name


def test_module_exports_exactly_the_dropins_and_optax_stays_optax():
  assert sorted(dropin.__all__) == dropin.__all__
  assert dropin.__name__ == "jaxdiv.optax"
  assert sys.modules["optax"] is optax and optax is not dropin
  from jaxdiv.cli import demo as _demo  # a module inside jaxdiv that does `import optax`

  assert _demo.optax is optax
  assert optax.losses.softmax_cross_entropy is not dropin.softmax_cross_entropy


def test_deprecated_alias_warns_as_optax_and_gives_the_same_values():
  log_q, p = jnp.log(jnp.array([0.2, 0.3, 0.5])), jnp.array([0.1, 0.6, 0.3])
  with pytest.warns(DeprecationWarning,
                    match="convex_kl_divergence is deprecated. Please use generalized_kl"):
    got = dropin.convex_kl_divergence(log_q, p)
  with pytest.warns(DeprecationWarning):
    want = optax.losses.convex_kl_divergence(log_q, p)
  _close(got, want)
  _close(got, dropin.generalized_kl_divergence(log_q, p), rtol=0, atol=0)


@pytest.mark.parametrize("name", DISTINCT)
def test_values_and_gradients_equal_optax_on_random_inputs(name):
  args = _f32(_inputs(name, _rng(name, "random"), (5, 7), -1))
  ours = jax.jit(lambda *a: _call(dropin, name, *a))
  theirs = jax.jit(lambda *a: _optax(name, *a))
  assert ours(*args).shape == theirs(*args).shape
  _close(ours(*args), theirs(*args))
  if name == "smooth_labels":
    return
  argnums = _float_argnums(args)
  g_ours = jax.jit(jax.grad(lambda *a: jnp.sum(ours(*a)), argnums))(*args)
  g_theirs = jax.jit(jax.grad(lambda *a: jnp.sum(theirs(*a)), argnums))(*args)
  for a, b in zip(g_ours, g_theirs):
    _close(a, b, atol=1e-5)


@pytest.mark.parametrize("axis", [0, 1, (1, 2), (2, 0), None], ids=str)
@pytest.mark.parametrize("name", AXIS_NAMES)
def test_axis_conventions_equal_optax(name, axis):
  if name == "softmax_cross_entropy_with_integer_labels" and axis is None:
    with pytest.raises(TypeError, match="axis"):
      dropin.softmax_cross_entropy_with_integer_labels(
          jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32), axis=None)
    return
  args = _f32(_inputs(name, _rng(name, axis), (3, 4, 5), axis))
  ours = jax.jit(lambda *a: _call(dropin, name, *a, axis=axis))(*args)
  theirs = jax.jit(lambda *a: _optax(name, *a, axis=axis))(*args)
  assert ours.shape == theirs.shape
  _close(ours, theirs)


@pytest.mark.parametrize(
    ("name", "where_kind"),
    [("softmax_cross_entropy", "rows"), ("softmax_cross_entropy_with_integer_labels", "rows"),
     ("softmax_cross_entropy", "classes"), ("softmax_cross_entropy_with_integer_labels", "classes"),
     ("poly_loss_cross_entropy", "classes")],  # optax's poly loss fails on a [batch] where
)
def test_where_equals_optax(name, where_kind):
  rng = _rng(name, where_kind)
  args = _f32(_inputs(name, rng, (6, 5), -1))
  if where_kind == "rows":
    where = jnp.asarray(rng.uniform(size=6) < 0.6)
  else:  # masked classes: optax's softmax takes the mask too; labels put no mass there
    where = jnp.asarray(rng.uniform(size=(6, 5)) < 0.7).at[:, 0].set(True)
    if name == "softmax_cross_entropy_with_integer_labels":
      args[1] = jnp.zeros(6, jnp.int32)
    else:
      args[1] = jnp.where(where, args[1], 0)
      args[1] = args[1] / jnp.sum(args[1], -1, keepdims=True)
  _close(_call(dropin, name, *args, where=where), _optax(name, *args, where=where))


@pytest.mark.parametrize(
    "name", ["kl_divergence", "kl_divergence_with_log_targets", "generalized_kl_divergence"])
def test_kl_where_equals_optax_when_kept_classes_hold_all_mass(name):
  rng = _rng(name, "where")
  where = jnp.asarray(rng.uniform(size=(4, 6)) < 0.7).at[:, 0].set(True)
  z = np.where(where, rng.normal(size=(4, 6)), -30.0)  # masked classes: any finite junk
  t = np.where(where, rng.normal(size=(4, 6)), NEG_INF)
  log_q = np.where(where, _log_softmax(np.where(where, z, NEG_INF)), z)
  log_p = _log_softmax(t)
  target = log_p if name == "kl_divergence_with_log_targets" else np.exp(log_p)
  if name == "kl_divergence_with_log_targets":  # optax gives NaN at -inf log-targets, even masked
    target = np.where(where, target, -30.0)
  args = _f32((log_q, target))
  _close(_call(dropin, name, *args, where=where), _optax(name, *args, where=where))


@pytest.mark.parametrize("name", DISTINCT)
def test_float64_equals_optax_in_float64(name):
  with jax.enable_x64(True):
    args = [jnp.asarray(a) for a in _inputs(name, _rng(name, "f64"), (4, 6), -1)]
    ours = jax.jit(lambda *a: _call(dropin, name, *a))(*args)
    theirs = jax.jit(lambda *a: _optax(name, *a))(*args)
    assert ours.dtype == jnp.float64
    _close(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in DISTINCT if n != "smooth_labels"])
def test_jit_vmap_and_forward_mode_agree(name):
  args = _f32(_inputs(name, _rng(name, "transforms"), (3, 4), -1))
  eager = _call(dropin, name, *args)
  _close(jax.jit(lambda *a: _call(dropin, name, *a))(*args), eager)
  _close(jax.jit(jax.vmap(lambda *a: _call(dropin, name, *a)))(*args), eager)
  total = lambda x: jnp.sum(_call(dropin, name, x, *args[1:]))
  _close(jax.jit(jax.jacfwd(total))(args[0]), jax.jit(jax.grad(total))(args[0]), rtol=1e-5, atol=1e-6)


# The other drop-ins call a jaxdiv loss whose Hessian tests/test_api.py checks;
# these three add math of their own around it.
@pytest.mark.parametrize(
    "name", ["generalized_kl_divergence", "poly_loss_cross_entropy", "sigmoid_focal_loss"])
def test_hessian_is_finite_symmetric_and_matches_float64_finite_differences(name):
  args = _f32(_inputs(name, _rng(name, "hessian"), (2, 3), -1))
  total = lambda x: jnp.sum(_call(dropin, name, x, *args[1:]))
  h = np.asarray(jax.jit(jax.hessian(total))(args[0])).reshape(args[0].size, -1)
  assert np.all(np.isfinite(h))
  _close(h, h.T, rtol=1e-4, atol=1e-6)
  with jax.enable_x64(True):
    args64 = [jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in args]
    total64 = lambda x: jnp.sum(_call(dropin, name, x, *args64[1:]))
    jax.test_util.check_grads(jax.jit(total64), (args64[0],), order=2, modes=("fwd", "rev"), eps=1e-4)


def test_errors_name_optax_arguments():
  with pytest.raises(TypeError, match="log_predictions"):
    dropin.kl_divergence(jnp.zeros(3, jnp.int32), jnp.ones(3) / 3)
  with pytest.raises(ValueError, match="targets must have the same shape as log_predictions"):
    dropin.kl_divergence(jnp.zeros(3), jnp.ones(4) / 4)
  with pytest.raises(TypeError, match="labels must be an integer array"):
    dropin.softmax_cross_entropy_with_integer_labels(jnp.zeros((2, 3)), jnp.zeros(2))
  with pytest.raises(ValueError, match="labels must be broadcastable to the logits shape"):
    dropin.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match=r"where must have the logits' shape \[2, 3, 4\] "
                                       r".* batch shape \[2, 3\]; got \[5\]"):
    dropin.softmax_cross_entropy(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4)), where=jnp.ones(5, bool))
  with pytest.raises(ValueError, match=r"where must be broadcastable to the logits shape \[2, 3\]"):
    dropin.kl_divergence(jnp.zeros((2, 3)), jnp.zeros((2, 3)), where=jnp.ones(2, bool))


# --------------------------------------------------------------------------- #
# Documented differences: NaN in optax, the finite truth here
# --------------------------------------------------------------------------- #


def _value_and_grads(fn, *args):
  args = _f32(args)
  argnums = _float_argnums(args)
  value = fn(*args)
  grads = jax.grad(lambda *a: jnp.sum(fn(*a)), argnums)(*args)
  return value, grads


def _assert_finite(*trees):
  for leaf in jax.tree.leaves(trees):
    assert np.all(np.isfinite(np.asarray(leaf))), leaf


def _has_nan(*trees):
  return any(np.isnan(np.asarray(leaf)).any() for leaf in jax.tree.leaves(trees))


def test_softmax_cross_entropy_masked_class_with_zero_label_is_finite():
  z, y = np.array([[0.0, NEG_INF, 1.0]]), np.array([[0.5, 0.0, 0.5]])
  assert _has_nan(optax.losses.softmax_cross_entropy(*_f32((z, y))))
  value, (gz, gy) = _value_and_grads(dropin.softmax_cross_entropy, z, y)
  _close(value, ref.soft_cross_entropy(z, y))
  q = np.exp(ref.log_softmax(z))
  _close(gz, q - y)  # ∂/∂z = q - p (0 at the -inf logit)
  _assert_finite(value, gz, gy)


def test_poly_loss_cross_entropy_masked_class_with_zero_label_is_finite():
  z, y = np.array([[0.0, NEG_INF, 1.0]]), np.array([[0.5, 0.0, 0.5]])
  assert _has_nan(optax.losses.poly_loss_cross_entropy(*_f32((z, y))))
  value, grads = _value_and_grads(dropin.poly_loss_cross_entropy, z, y)
  q = np.exp(ref.log_softmax(z))
  _close(value, ref.soft_cross_entropy(z, y) + 2.0 * np.sum(y * (1 - q), -1))
  _assert_finite(value, grads)


def test_safe_softmax_cross_entropy_all_neg_inf_row_has_finite_gradient():
  z, y = np.full((1, 3), NEG_INF), np.zeros((1, 3))
  optax_grad = jax.grad(lambda x: jnp.sum(optax.losses.safe_softmax_cross_entropy(x, jnp.zeros((1, 3)))))
  assert _has_nan(optax_grad(jnp.asarray(z, jnp.float32)))
  value, grads = _value_and_grads(dropin.safe_softmax_cross_entropy, z, y)
  _close(value, [0.0])
  _assert_finite(value, grads)


def test_kl_divergence_zero_target_on_neg_inf_prediction_is_finite():
  log_q, p = _log(np.array([[0.5, 0.0, 0.5]])), np.array([[0.5, 0.0, 0.5]])
  assert _has_nan(optax.losses.kl_divergence(*_f32((log_q, p))))
  value, grads = _value_and_grads(dropin.kl_divergence, log_q, p)
  _close(value, [0.0])
  _assert_finite(value, grads)


def test_kl_divergence_gradient_at_zero_target_is_finite():
  log_q, p = _log(np.array([[0.5, 0.25, 0.25]])), np.array([[0.5, 0.0, 0.5]])
  optax_grad = jax.grad(lambda t: jnp.sum(optax.losses.kl_divergence(jnp.asarray(log_q, jnp.float32), t)))
  assert _has_nan(optax_grad(jnp.asarray(p, jnp.float32)))
  value, (g_log_q, g_p) = _value_and_grads(dropin.kl_divergence, log_q, p)
  _close(value, ref.optax_kl_divergence(log_q, p))
  # ∂/∂p of Σ p (log p - x) is log p + 1 - x, taken as 0 where p = 0; ∂/∂x = -p.
  _close(g_p, [[np.log(0.5 / 0.5) + 1, 0.0, np.log(0.5 / 0.25) + 1]])
  _close(g_log_q, -p)
  _assert_finite(value, g_log_q, g_p)


@pytest.mark.parametrize("name", ["kl_divergence", "kl_divergence_with_log_targets",
                                  "generalized_kl_divergence"])
def test_kl_nan_in_an_unmasked_entry_gives_nan_and_a_masked_one_never_leaks(name):
  log_q = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
  p = jnp.array([[0.5, 0.0, 0.5]])
  target = jnp.log(p) if name == "kl_divergence_with_log_targets" else p
  fn = getattr(dropin, name)
  for bad in (log_q.at[0, 1].set(jnp.nan),):  # NaN prediction on a zero target: still NaN
    assert np.isnan(fn(bad, target)[0])
  assert np.isnan(fn(log_q, target.at[0, 0].set(jnp.nan))[0])
  where = jnp.array([True, False, True])
  junk_q, junk_t = log_q.at[0, 1].set(jnp.nan), target.at[0, 1].set(jnp.nan)
  value, grads = jax.value_and_grad(lambda a, b: jnp.sum(fn(a, b, where=where)), (0, 1))(junk_q, junk_t)
  _close(value, fn(log_q[:, where], target[:, where]))
  _assert_finite(value, grads)
  assert np.all(np.asarray(grads[0])[0, 1] == 0) and np.all(np.asarray(grads[1])[0, 1] == 0)


def test_kl_divergence_with_log_targets_neg_inf_log_target_is_finite():
  log_q, log_p = _log(np.array([[0.5, 0.25, 0.25]])), _log(np.array([[0.5, 0.0, 0.5]]))
  assert _has_nan(optax.losses.kl_divergence_with_log_targets(*_f32((log_q, log_p))))
  value, grads = _value_and_grads(dropin.kl_divergence_with_log_targets, log_q, log_p)
  _close(value, ref.kl_divergence_with_log_targets(log_q, log_p))
  _close(value, [0.5 * np.log(2.0)])
  _assert_finite(value, grads)


def test_generalized_kl_divergence_zero_target_and_zero_prediction_is_finite():
  log_q, p = _log(np.array([[2.0, 0.0, 0.5]])), np.array([[1.0, 0.0, 0.5]])
  assert _has_nan(optax.losses.generalized_kl_divergence(*_f32((log_q, p))))
  value, grads = _value_and_grads(dropin.generalized_kl_divergence, log_q, p)
  _close(value, [1.0 * np.log(1.0 / 2.0) - 1.0 + 2.0])
  _assert_finite(value, grads)


@pytest.mark.parametrize("name", ["sigmoid_binary_cross_entropy", "sigmoid_focal_loss"])
def test_sigmoid_losses_at_infinite_logits_with_agreeing_labels_are_zero(name):
  z, y = np.array([np.inf, NEG_INF, 1e30, -1e30]), np.array([1.0, 0.0, 1.0, 0.0])
  assert _has_nan(getattr(optax.losses, name)(*_f32((z[:2], y[:2]))))
  value, (gz, gy) = _value_and_grads(getattr(dropin, name), z, y)
  _close(value, np.zeros(4))
  _close(gz, np.zeros(4))
  _assert_finite(gy)


def test_sigmoid_focal_loss_gamma_zero_is_the_cross_entropy():
  z, y = _f32((np.array([NEG_INF, -3.0, 0.0, 2.0, np.inf]), np.array([0.0, 1.0, 0.3, 1.0, 1.0])))
  _close(dropin.sigmoid_focal_loss(z, y, gamma=0.0), jaxdiv.binary_cross_entropy(z, y))


# --------------------------------------------------------------------------- #
# Documented differences: wrong in optax, right here
# --------------------------------------------------------------------------- #


def test_integer_label_cross_entropy_ties_at_1e30_give_log_2():
  z, y = np.array([[1e30, 1e30]], np.float32), np.array([0])
  truth = ref.cross_entropy(z, y)  # float64: log 2 (optax 0.2.8's float32 sum rounds it to 0)
  _close(truth, [np.log(2.0)], rtol=1e-15)
  _close(dropin.softmax_cross_entropy_with_integer_labels(jnp.asarray(z), jnp.asarray(y)), truth, rtol=1e-7)


def test_generalized_kl_of_nearly_equal_measures_keeps_relative_accuracy():
  rng = _rng("tiny generalized kl")
  p = np.exp(rng.normal(size=(1, 4096))).astype(np.float32)
  x = (np.log(p) + 1e-4 * rng.normal(size=p.shape)).astype(np.float32)
  d = x.astype(np.float64) - np.log(p.astype(np.float64))
  truth = np.sum(p * (np.expm1(d) - d), -1)  # float64, on the float32 inputs
  ours = dropin.generalized_kl_divergence(x, p)
  theirs = optax.losses.generalized_kl_divergence(x, p)
  assert abs(float(ours[0]) / truth[0] - 1) < 1e-3
  assert abs(float(theirs[0]) / truth[0] - 1) > 1e-1  # optax's Σ p log(p/q) + Σ (q - p) cancels


def test_kl_of_nearly_equal_log_probabilities_is_optax_formula_not_the_normalised_kl():
  # Float32 log_softmax outputs are normalised only to rounding, and optax's
  # formula sums that rounding: on these inputs its exact value is -2.8e-7,
  # while the KL of the distributions they stand for is 4.9e-9. The drop-in
  # gives the former (as optax); jaxdiv's own KL, which normalises, the latter.
  rng = _rng("tiny kl")
  t = rng.normal(size=(1, 4096)).astype(np.float32)
  z = (t + 1e-4 * rng.normal(size=t.shape)).astype(np.float32)
  log_p, log_q = jax.nn.log_softmax(t), jax.nn.log_softmax(z)
  formula = ref.optax_kl_divergence_with_log_targets(np.asarray(log_q), np.asarray(log_p))
  _close(dropin.kl_divergence_with_log_targets(log_q, log_p), formula, rtol=1e-4, atol=0)
  _close(dropin.kl_divergence_with_log_targets(log_q, log_p),
         optax.losses.kl_divergence_with_log_targets(log_q, log_p), rtol=1e-5, atol=0)
  normalised = ref.kl_divergence_with_log_targets(np.asarray(log_q), np.asarray(log_p))
  assert abs(float(jaxdiv.kl_divergence_with_log_targets(log_q, log_p)[0]) / normalised[0] - 1) < 1e-3


def test_unnormalised_inputs_give_optax_formula():
  # optax 0.2.8's own KLDivergenceTest.test_batched: the second target row sums to 0.9.
  log_q = np.array([[-2.9957, -3.5066, -3.9120, -1.2040, -0.6931, -2.3026],
                    [-1.6094, -1.6094, -1.6094, -2.3026, -1.8971, -1.8971]])
  p = np.array([[0.2, 0.2, 0.2, 0.1, 0.15, 0.15], [0.05, 0.03, 0.02, 0.3, 0.5, 0.0]])
  got = dropin.kl_divergence(*_f32((log_q, p)))
  _close(got, ref.optax_kl_divergence(log_q, p), rtol=1e-6)
  _close(got, [0.8875577, 0.7592807], rtol=1e-6)  # optax's recorded values
  # Raw logits as log_predictions and log-targets: optax's sums, not a divergence.
  rng = _rng("unnormalised")
  z, t = rng.normal(size=(3, 5)) + 4.0, rng.normal(size=(3, 5))
  _close(dropin.kl_divergence(*_f32((z, _softmax(t)))), ref.optax_kl_divergence(z, _softmax(t)), rtol=1e-5)
  _close(dropin.kl_divergence_with_log_targets(*_f32((z, t))), ref.optax_kl_divergence_with_log_targets(z, t),
         rtol=1e-5)
  _close(dropin.kl_divergence_with_log_targets(*_f32((z, t))),
         optax.losses.kl_divergence_with_log_targets(*_f32((z, t))), rtol=1e-5)


@pytest.mark.parametrize("batch", [4, 6], ids=["B!=V", "B==V"])
@pytest.mark.parametrize("name", ["kl_divergence", "kl_divergence_with_log_targets",
                                  "generalized_kl_divergence"])
def test_kl_class_mask_of_shape_num_classes_drops_classes_as_in_optax(name, batch):
  # optax sums with jnp.sum(..., where=where): a [V] mask broadcasts over rows.
  rng = _rng(name, "class mask", batch)
  log_q = np.log(_softmax(rng.normal(size=(batch, 6))))
  p = _softmax(rng.normal(size=(batch, 6)))
  target = np.log(p) if name == "kl_divergence_with_log_targets" else p
  where = jnp.array([True, False, True, True, False, True])
  args = _f32((log_q, target))
  got = _call(dropin, name, *args, where=where)
  assert got.shape == (batch,)
  _close(got, _optax(name, *args, where=where))
  _close(got, _call(dropin, name, args[0][:, where], args[1][:, where]))


def test_integer_labels_negative_and_on_masked_classes_equal_optax():
  z = jnp.array([[0.3, -1.2, 2.0, 0.5], [1.0, 0.0, -1.0, 3.0]])
  for labels in ([-1, -4], [-5, 4], [3, -2]):  # -5 and 4 are out of range: NaN in both
    y = jnp.array(labels)
    _close(dropin.softmax_cross_entropy_with_integer_labels(z, y),
           optax.losses.softmax_cross_entropy_with_integer_labels(z, y))
  y8 = jnp.array([-1, 2], jnp.int8)  # y + num_classes must not wrap in the label dtype
  _close(dropin.softmax_cross_entropy_with_integer_labels(z, y8),
         optax.losses.softmax_cross_entropy_with_integer_labels(z, y8))
  # where restricts the normaliser only: a label on a masked class reads its logit anyway.
  where = jnp.array([[True, False, True, True], [False, True, True, False]])
  y = jnp.array([1, 3])
  ours = lambda z: dropin.softmax_cross_entropy_with_integer_labels(z, y, where=where)
  theirs = lambda z: optax.losses.softmax_cross_entropy_with_integer_labels(z, y, where=where)
  _close(ours(z), theirs(z))
  _close(jax.jacrev(ours)(z), jax.jacrev(theirs)(z))
  assert np.all(np.isfinite(np.asarray(ours(z))))


@pytest.mark.parametrize("name", [n for n in DISTINCT
                                  if n not in ("smooth_labels", "sigmoid_binary_cross_entropy",
                                               "sigmoid_focal_loss",
                                               "softmax_cross_entropy_with_integer_labels")])
def test_empty_class_axis_gives_optax_empty_sum(name):
  # optax's own test_mask draws a random mask that is all False one time in 32.
  empty = jnp.zeros((2, 0))
  got = _call(dropin, name, empty, empty)
  assert got.shape == (2,)
  _close(got, _optax(name, empty, empty))
  _close(got, [0.0, 0.0], rtol=0, atol=0)


# --------------------------------------------------------------------------- #
# Documented differences: dtypes, smoothing with where
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=lambda d: jnp.dtype(d).name)
def test_low_precision_inputs_return_float32(dtype):
  z = jnp.asarray(_rng("low").normal(size=(4, 8)), dtype)
  p = jax.nn.softmax(z.astype(jnp.float32)).astype(dtype)
  assert optax.losses.softmax_cross_entropy(z, p).dtype == dtype
  ours = dropin.softmax_cross_entropy(z, p)
  assert ours.dtype == jnp.float32
  _close(ours, ref.soft_cross_entropy(z, p), rtol=1e-6)
  assert dropin.smooth_labels(p, 0.1).dtype == dtype  # labels keep their dtype, as in optax


def test_smooth_labels_with_where_counts_kept_classes_as_optax():
  y = jnp.array([[0.0, 1.0, 0.0, 0.0]])
  where = jnp.array([[True, True, False, True]])
  out = dropin.smooth_labels(y, 0.3, where=where)
  _close(out, [[0.1, 0.8, 0.1, 0.1]])  # K = 3 kept classes; every entry gets α/K, as in optax
  _close(jnp.sum(jnp.where(where, out, 0), -1), [1.0])  # the kept classes sum to one
  with jax.numpy_dtype_promotion("standard"):  # optax's own code needs implicit promotion here
    theirs = optax.losses.smooth_labels(y, 0.3, where=where)
  _close(out, theirs)
