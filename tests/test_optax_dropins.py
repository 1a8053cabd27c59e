"""``jaxdiv.optax``: optax's classification losses, same names, same results, no NaN.

* signatures (names, kinds, defaults) equal optax 0.2.8's;
* values and gradients equal optax's on random inputs wherever optax is finite
  and correct, over int, negative, tuple and None axes and both kinds of ``where``;
* float64 values equal optax run in float64 (the reference where it is correct);
* jit, vmap, jacfwd/jacrev and Hessians agree and are finite;
* each documented difference has a test named after it: the NaN cases (with
  the float64 truth), the wrong-in-optax cases, the float32 return dtype.
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
import reference as ref
from jax import test_util  # noqa: F401  (jax.test_util.check_grads)

import jaxdiv
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
  from jaxdiv import _demo  # a module inside jaxdiv that does `import optax`

  assert _demo.optax is optax
  assert optax.losses.softmax_cross_entropy is not dropin.softmax_cross_entropy
  assert dropin.convex_kl_divergence is dropin.generalized_kl_divergence


# The KL drop-ins normalise their log-space arguments, so their gradients w.r.t.
# them differ from optax's by a component along the normalisation, which
# vanishes through the log_softmax/softmax that produced them: compare there.
UPSTREAM = {
    "kl_divergence": lambda z, t: (jax.nn.log_softmax(z), jax.nn.softmax(t)),
    "kl_divergence_with_log_targets": lambda z, t: (jax.nn.log_softmax(z), jax.nn.log_softmax(t)),
}


@pytest.mark.parametrize("name", DISTINCT)
def test_values_and_gradients_equal_optax_on_random_inputs(name):
  args = _f32(_inputs(name, _rng(name, "random"), (5, 7), -1))
  if name in UPSTREAM:
    args = _f32(_rng(name, "upstream").normal(size=(2, 5, 7)))
  prep = UPSTREAM.get(name, lambda *a: a)
  ours = jax.jit(lambda *a: _call(dropin, name, *prep(*a)))
  theirs = jax.jit(lambda *a: _optax(name, *prep(*a)))
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
  _close(value, ref.kl_divergence(log_q, p))
  _close(g_p, [[np.log(0.5 / 0.5), 0.0, np.log(0.5 / 0.25)]])  # log p - log q, 0 where p = 0
  _close(g_log_q, np.exp(log_q) - p)
  _assert_finite(value, g_log_q, g_p)


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
  z, y = jnp.array([[1e30, 1e30]], jnp.float32), jnp.array([0])
  assert float(optax.losses.softmax_cross_entropy_with_integer_labels(z, y)[0]) == 0.0
  _close(dropin.softmax_cross_entropy_with_integer_labels(z, y), [np.log(2.0)], rtol=1e-7)


def test_tiny_kl_keeps_relative_accuracy():
  rng = _rng("tiny kl")
  t = rng.normal(size=(1, 4096)).astype(np.float32)
  z = (t + 1e-4 * rng.normal(size=t.shape)).astype(np.float32)
  log_p, log_q = jax.nn.log_softmax(t), jax.nn.log_softmax(z)
  truth = ref.kl_divergence_with_log_targets(np.asarray(log_q), np.asarray(log_p))
  ours = dropin.kl_divergence_with_log_targets(log_q, log_p)
  theirs = optax.losses.kl_divergence_with_log_targets(log_q, log_p)
  assert abs(float(ours[0]) / truth[0] - 1) < 1e-3
  assert abs(float(theirs[0]) / truth[0] - 1) > 1e-1  # optax's Σ p (log p - log q) cancels


def test_unnormalised_log_predictions_give_the_kl_of_the_softmax():
  rng = _rng("unnormalised")
  z, p = rng.normal(size=(3, 5)) + 4.0, _softmax(rng.normal(size=(3, 5)))
  _close(dropin.kl_divergence(*_f32((z, p))), ref.kl_divergence(z, p), rtol=1e-5)


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


def test_smooth_labels_with_where_gives_masked_classes_zero():
  y = jnp.array([[0.0, 1.0, 0.0, 0.0]])
  where = jnp.array([[True, True, False, True]])
  out = dropin.smooth_labels(y, 0.3, where=where)
  _close(out, [[0.1, 0.8, 0.0, 0.1]])
  _close(jnp.sum(out, -1), [1.0])
  with jax.numpy_dtype_promotion("standard"):  # optax's own code needs implicit promotion here
    theirs = optax.losses.smooth_labels(y, 0.3, where=where)
  _close(jnp.where(where, theirs, 0), out)
