"""The contract every public jaxdiv loss keeps, checked for each entry of ``jaxdiv.__all__``.

* values equal the float64 reference (eager, jit, vmap);
* derivatives equal float64 finite differences to second order, forward and reverse;
* ``jacfwd == jacrev`` and a finite, symmetric Hessian;
* the edge-case matrix (zeros in targets, one-hot, -inf logits, fully masked
  rows, |logits| = 1e4 and 1e30) in float32, bfloat16 and float16: values equal
  the reference on the same quantised inputs to float32 accuracy, returned in
  float32, and value, gradient, JVP and Hessian are finite wherever the true
  value is;
* bad dtypes and shapes raise at trace time, naming the argument.
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu

import jaxdiv
from cases import CASES, NOT_LOSSES, Case, call, call_reference, make_inputs

CASE_IDS = sorted(CASES)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Relative accuracy promised in float32 (the docstrings' figure is 1e-6).
RTOL, ATOL = 1e-6, 1e-6


def _rng(*key) -> np.random.Generator:
  """A generator seeded from ``key`` the same way in every process (``hash`` is salted)."""
  return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _cast(case: Case, args, dtype):
  out = [jnp.asarray(args[0], dtype)]
  if len(args) > 1:
    out.append(jnp.asarray(args[1]) if case.target == "labels" else jnp.asarray(args[1], dtype))
  return out


def _total(case: Case, **kwargs):
  return lambda *a: jnp.sum(call(case, *a, **kwargs))


def test_all_is_sorted_and_every_loss_has_a_case():
  assert list(jaxdiv.__all__) == sorted(jaxdiv.__all__)
  covered = {c.fn.__name__ for c in CASES.values()} | NOT_LOSSES
  missing = [name for name in jaxdiv.__all__ if name not in covered]
  assert not missing, f"public functions without a contract case in tests/cases.py: {missing}"


@pytest.mark.parametrize("name", CASE_IDS)
@pytest.mark.parametrize("transform", ["eager", "jit", "vmap"])
def test_value_matches_float64_reference(name, transform):
  case = CASES[name]
  args = make_inputs(case, _rng(name, "value"), shape=(4, 7))
  want = call_reference(case, *args)
  inputs = _cast(case, args, jnp.float32)
  quantised = [np.asarray(a) for a in inputs]
  want = call_reference(case, *quantised)
  fn = lambda *a: call(case, *a)
  if transform == "jit":
    fn = jax.jit(fn)
  elif transform == "vmap":
    fn = jax.vmap(fn)
  got = fn(*inputs)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", CASE_IDS)
def test_derivatives_match_float64_finite_differences(name):
  case = CASES[name]
  with jax.enable_x64(True):
    args = make_inputs(case, _rng(name, "grad"), shape=(2, 4), scale=1.0)
    args = [jnp.asarray(a) for a in args]
    diff = case.differentiable_args
    fixed = {i: a for i, a in enumerate(args) if i not in diff}

    def f(*d):
      full = [fixed[i] if i in fixed else d[diff.index(i)] for i in range(len(args))]
      return _total(case)(*full)

    # jit: the same derivatives, compiled once instead of dispatched op by op (eager calls are tested above).
    # A custom_vjp loss (the fused ones) is checked in reverse mode only, to second order.
    jtu.check_grads(jax.jit(f), [args[i] for i in diff], order=2, modes=case.modes, atol=1e-6, rtol=1e-6,
                    eps=1e-6)


@pytest.mark.parametrize("name", CASE_IDS)
def test_jacfwd_equals_jacrev_and_hessian_is_symmetric(name):
  case = CASES[name]
  args = [jnp.asarray(a, jnp.float32) if i == 0 or case.target != "labels" else jnp.asarray(a)
          for i, a in enumerate(make_inputs(case, _rng(name, "jac"), shape=(2, 4)))]
  f = lambda x: call(case, x, *args[1:])
  if "fwd" not in case.modes:  # custom_vjp: forward mode is refused by JAX, as the docstrings say
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
      jax.jacfwd(f)(args[0])
    assert np.all(np.isfinite(np.asarray(jax.jit(jax.jacrev(f))(args[0]))))
    return
  np.testing.assert_allclose(jax.jit(jax.jacfwd(f))(args[0]), jax.jit(jax.jacrev(f))(args[0]),
                             rtol=1e-5, atol=1e-6)
  h = jax.jit(jax.hessian(_total(case)))(*args)
  h2 = np.asarray(h).reshape(args[0].size, args[0].size)
  assert np.all(np.isfinite(h2))
  np.testing.assert_allclose(h2, h2.T, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- #
# The edge-case matrix
# --------------------------------------------------------------------------- #

EDGES = [
    "baseline",
    "zero_targets",
    "one_hot",
    "neg_inf_logit_zero_target",
    "neg_inf_logit_positive_target",
    "fully_masked_row",
    "logits_1e4",
    "logits_1e30",
]


def _edge_inputs(case: Case, edge: str, dtype_name: str):
  """(args, where, expect_inf) for one cell of the matrix, in float64."""
  rng = _rng(case.fn.__name__, edge, dtype_name)
  shape = (3, 6)
  scale = {"logits_1e4": 1e4, "logits_1e30": 1e30}.get(edge, 2.0)
  if dtype_name == "float16" and scale > 1:
    # float16 tops out at 65504: keep logits *and* their gradients (log-ratios,
    # up to twice the logit range) representable.
    scale = min(scale, 3e3)
  args = list(make_inputs(case, rng, shape))
  z = np.clip(rng.normal(size=shape), -3, 3) * scale
  args[0] = z
  if len(args) > 1 and case.target == "logits" and scale > 2:
    args[1] = np.clip(rng.normal(size=shape), -3, 3) * scale
  where, expect_inf = None, False
  t = case.target
  # Column 1 is the "zero target" column in every edge below.
  if edge in ("zero_targets", "one_hot", "neg_inf_logit_zero_target", "neg_inf_logit_positive_target"):
    if t == "labels":
      args[1] = np.full(shape[:-1], 0)
    elif t == "probs":
      p = np.array(args[1])
      if edge == "one_hot" or edge == "neg_inf_logit_positive_target":
        p = np.zeros(shape)
        p[:, 0] = 1.0
      else:
        p[:, 1] = 0.0
        p /= p.sum(-1, keepdims=True)
      args[1] = p
    elif t == "binary_probs":
      y = np.array(args[1])
      y[:, 1] = 0.0
      if edge == "one_hot" or edge == "neg_inf_logit_positive_target":
        y = (rng.uniform(size=shape) > 0.5).astype(float)
        y[:, 1] = 0.0
        y[:, 0] = 1.0
      args[1] = y
    elif t == "logits":
      tl = np.array(args[1])
      if edge == "one_hot" or edge == "neg_inf_logit_positive_target":
        tl = np.full(shape, -np.inf)
        tl[:, 0] = 0.0
      else:
        tl[:, 1] = -np.inf
      args[1] = tl
    elif t is None:
      args[0][:, 1] = -np.inf
  if case.fn is jaxdiv.reverse_kl_divergence and edge in ("zero_targets", "one_hot"):
    expect_inf = True  # KL(q‖p) with q > 0 = p is infinite
  if edge == "neg_inf_logit_zero_target":
    args[0][:, 1] = -np.inf
    if case.fn is jaxdiv.reverse_kl_divergence:
      args[1][:, 1] = -np.inf  # reverse KL's "target" side is the model: both zero
    if case.fn is jaxdiv.jensen_shannon_divergence or case.fn is jaxdiv.binary_kl_divergence:
      args[1][:, 1] = -np.inf
  if edge == "neg_inf_logit_positive_target":
    args[0][:, 0] = -np.inf
    expect_inf = case.target is not None
    if case.fn is jaxdiv.reverse_kl_divergence:
      expect_inf = False  # q = 0 where p > 0 is fine for KL(q‖p): model mass moves
      args[0][:, 1:] = np.where(np.isinf(args[1][:, 1:]), -np.inf, args[0][:, 1:])
      args[0][:, 2] = 0.0
      args[1][:, 2] = 0.0
    if case.fn is jaxdiv.jensen_shannon_divergence:
      expect_inf = case.kwargs.get("beta", 0.5) in (0.0, 1.0)
  if edge == "fully_masked_row":
    where = np.ones(shape, bool)
    where[0] = False
    args[0][0] = np.nan  # masked entries may hold anything
  return args, where, expect_inf


# The adapters (fused and vocab-parallel losses through hidden @ identity or a mesh) run the matrix in
# float32: their bf16 inputs are hidden states and weights, covered in tests/test_fused.py, and each
# compiles a shard_map or block loop per cell, which the CI time budget pays for once, not three times.
MATRIX = [(n, e, d) for n in CASE_IDS for e in EDGES for d in DTYPES
          if d == "float32" or not CASES[n].adapter]


@pytest.mark.parametrize("name, edge, dtype_name", MATRIX)
def test_edge_case_matrix(name, edge, dtype_name):
  case = CASES[name]
  args, where, expect_inf = _edge_inputs(case, edge, dtype_name)
  inputs = _cast(case, args, DTYPES[dtype_name])
  kw = {} if where is None else {"where": jnp.asarray(where)}
  got = call(case, *inputs, **kw)
  assert got.dtype == jnp.float32, "low-precision inputs are accumulated and returned in float32"
  want = call_reference(case, *[np.asarray(a.astype(jnp.float32)) if a.dtype != jnp.int32 and
                                a.dtype != jnp.int64 else np.asarray(a) for a in inputs], **kw)
  if expect_inf:
    assert np.all(np.isinf(want) | ~np.isnan(want))
  np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL)
  assert not np.any(np.isnan(np.asarray(got)))
  if where is not None:
    assert np.all(np.asarray(got)[0] == 0)
  if expect_inf:
    return  # the answer is truly infinite: derivatives are not promised
  diff = case.differentiable_args
  grads = jax.grad(_total(case, **kw), argnums=diff)(*inputs)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g, np.float32))), f"non-finite gradient: {g}"
  if where is not None:
    assert np.all(np.asarray(grads[0], np.float32)[0] == 0)
  if "fwd" not in case.modes:
    return  # custom_vjp: no JVP or Hessian (tested to raise above)
  tangents = [jnp.ones_like(inputs[i]) for i in diff]
  fixed = {i: a for i, a in enumerate(inputs) if i not in diff}

  def f(*d):
    full = [fixed[i] if i in fixed else d[diff.index(i)] for i in range(len(inputs))]
    return call(case, *full, **kw)

  _, jvp = jax.jvp(f, [inputs[i] for i in diff], tangents)
  assert np.all(np.isfinite(np.asarray(jvp)))
  if dtype_name == "float32" and not case.adapter:  # (compiled; the adapters' Hessians: jacfwd test above)
    hess = jax.jit(jax.hessian(lambda *d: jnp.sum(f(*d)), argnums=tuple(range(len(diff)))))(
        *[inputs[i] for i in diff])
    for block in jax.tree.leaves(hess):
      assert np.all(np.isfinite(np.asarray(block))), "non-finite Hessian"


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #


DIRECT_IDS = [n for n in CASE_IDS if not CASES[n].adapter]


@pytest.mark.parametrize("name", DIRECT_IDS)
def test_integer_logits_raise_type_error_naming_logits(name):
  case = CASES[name]
  args = make_inputs(case, _rng(name, "bad"), shape=(2, 3))
  bad = [jnp.asarray(args[0]).astype(jnp.int32), *args[1:]]
  with pytest.raises(TypeError, match="logits must be a floating-point array; got int32"):
    jax.jit(lambda *a: call(case, *a))(*bad)


@pytest.mark.parametrize("name", [n for n in DIRECT_IDS if CASES[n].target is not None])
def test_mismatched_target_shape_raises_value_error_with_expected_shape(name):
  case = CASES[name]
  args = make_inputs(case, _rng(name, "shape"), shape=(2, 3))
  target = np.asarray(args[1])
  bad_target = np.concatenate([target, target[:1]], axis=0)  # [3, ...] instead of [2, ...]
  with pytest.raises(ValueError, match=r"must have .*shape.*\[2(, 3)?\]; got \[3"):
    call(case, jnp.asarray(args[0], jnp.float32), bad_target if case.target == "labels" else
         jnp.asarray(bad_target, jnp.float32))


@pytest.mark.parametrize("name", [n for n in DIRECT_IDS if CASES[n].target in ("probs", "logits")])
def test_integer_target_raises_type_error_pointing_to_the_label_function(name):
  case = CASES[name]
  args = make_inputs(case, _rng(name, "int"), shape=(2, 3))
  with pytest.raises(TypeError, match="must be a floating-point array; got int32.*cross_entropy"):
    call(case, jnp.asarray(args[0], jnp.float32), jnp.zeros((2, 3), jnp.int32))


@pytest.mark.parametrize("name", [
    n for n in CASE_IDS if CASES[n].fn.__module__ in ("jaxdiv._categorical", "jaxdiv._divergences")])
@pytest.mark.parametrize("axis", [2, -3])
def test_bad_axis_raises_value_error(name, axis):
  case = CASES[name]
  args = make_inputs(case, _rng(name, "axis"), shape=(2, 3))
  with pytest.raises(ValueError, match=rf"axis={axis} is out of range for logits of rank 2"):
    call(case, *args, axis=axis)


@pytest.mark.parametrize("name", DIRECT_IDS)
def test_bad_where_raises(name):
  case = CASES[name]
  args = make_inputs(case, _rng(name, "where"), shape=(2, 3))
  with pytest.raises(TypeError, match="where must be a boolean mask; got float32"):
    call(case, *args, where=jnp.ones((2, 3)))
  with pytest.raises(ValueError, match=r"where must be broadcastable to the logits shape \[2, 3\]"):
    call(case, *args, where=jnp.ones((2,), bool))
