"""distrax's own KL / cross-entropy / entropy test cases, ported as tables (issue 15).

Each case keeps the inputs of distrax's test (``distrax/_src/distributions/*_test.py``, v0.1.7:
``test_with_two_distributions``, ``mvn_kl_test.test_two_distributions``, the ``entropy`` rows of
``test_method``) and is adapted only in the call: ``jd.kl_divergence(p, q)`` for ``p.kl_divergence(q)``,
in all the modes distrax tests (distrax→distrax, distrax→TFP, TFP→distrax) plus TFP→TFP.

Expected values: distrax's tests compare with TFP's result at TFP's float32 precision (rtol 1e-3 to
3e-2). Here each case is checked twice: against TFP in float32 at distrax's own tolerance, and against
the 40-digit value of the same inputs in float64 (tests/reference.py), which is the expected value
wherever TFP's float32 number is less accurate (see ``test_where_tfp_float32_is_less_accurate_than_truth``).
Unseeded draws in distrax's Normal case (``np.random.randn``) are seeded here.
"""

from __future__ import annotations

import jax
import jax.interpreters.xla
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiv.distributions as jd
import reference as ref

if not hasattr(jax.interpreters.xla, "pytype_aval_mappings"):
  # TFP 0.25 (distrax's dependency) reads this alias at import; recent jax removed it (test-only shim).
  from jax._src import core

  jax.interpreters.xla.pytype_aval_mappings = core.pytype_aval_mappings

distrax = pytest.importorskip("distrax")
tfd = pytest.importorskip("tensorflow_probability.substrates.jax").distributions

TFP_NAMES = {"MultivariateNormalTri": "MultivariateNormalTriL"}


def _dplr(rng, loc_shape, diag_shape, u_shape, perturb_shape, u_scale):
  """distrax's DiagPlusLowRank parameters (V = U·diag(p)) and TFP's equivalent (U, p)."""
  loc, diag = rng.normal(size=loc_shape), rng.normal(size=diag_shape)
  u = u_scale * rng.normal(size=u_shape)
  perturb = rng.normal(size=perturb_shape)
  v = u * np.expand_dims(perturb, -2)
  return ({"loc": loc, "scale_diag": diag, "scale_u_matrix": u, "scale_v_matrix": v},
          {"loc": loc, "scale_diag": diag, "scale_perturb_factor": u, "scale_perturb_diag": perturb})


def _mvn_kl_params(kind, batch, rng, dim=5):
  """mvn_kl_test._get_dist_params: (distrax kwargs, TFP kwargs)."""
  if kind == "MultivariateNormalDiag":
    d = {"scale_diag": rng.normal(size=batch + (dim,))}
    t = dict(d)
  elif kind == "MultivariateNormalDiagPlusLowRank":
    scale_diag = rng.normal(size=batch + (dim,))
    u = 0.2 * rng.normal(size=batch + (dim, 2))
    perturb = rng.normal(size=batch + (2,))
    d = {"scale_diag": scale_diag, "scale_u_matrix": u, "scale_v_matrix": u * np.expand_dims(perturb, -2)}
    t = {"scale_diag": scale_diag, "scale_perturb_factor": u, "scale_perturb_diag": perturb}
  elif kind == "MultivariateNormalTri":
    tril = rng.normal(size=batch + (dim, dim))
    d, t = {"scale_tri": tril, "is_lower": True}, {"scale_tril": tril}
  else:
    m = rng.normal(size=batch + (dim, dim))
    d = {"covariance_matrix": m @ np.swapaxes(m, -1, -2)}
    t = dict(d)
  loc = rng.normal(size=batch + (dim,))
  d["loc"], t["loc"] = loc, loc
  return d, t


def _triu_to_tril(u):
  u = np.triu(u)
  return np.linalg.cholesky(u @ np.swapaxes(u, -1, -2))


def _two_distribution_cases():
  """name -> (class1, distrax kwargs1, TFP kwargs1, class2, distrax kwargs2, TFP kwargs2, distrax's rtol)."""
  cases = {}
  same = lambda cls, k1, k2, rtol: (cls, k1, k1, cls, k2, k2, rtol)
  cases["categorical"] = same("Categorical", {"probs": [[0.1, 0.5, 0.4], [0.2, 0.4, 0.4]]},
                              {"logits": [0.0, 0.1, 0.1]}, 2e-3)
  cases["categorical_extreme"] = same(
      "Categorical", {"probs": [[0.1, 0.5, 0.4], [0.4, 0.0, 0.6], [0.4, 0.6, 0.0]]},
      {"logits": [0.0, 0.1, -np.inf]}, 5e-5)
  cases["bernoulli"] = same("Bernoulli", {"probs": [[0.1, 0.5, 0.4], [0.2, 0.4, 0.8]]},
                            {"logits": [0.0, -0.1, 0.1]}, 1e-2)
  rng = np.random.default_rng(0)  # distrax: np.random.randn, unseeded
  cases["normal"] = same(
      "Normal",
      {"loc": rng.normal(size=(4, 1, 2)), "scale": np.asarray([[0.8, 0.2], [0.1, 1.2], [1.4, 3.1]])},
      {"loc": rng.normal(size=(3, 2)), "scale": 0.1 + rng.uniform(size=(4, 1, 2))}, 3e-2)
  rng = np.random.default_rng(42)
  cases["mvn_diag"] = same(
      "MultivariateNormalDiag",
      {"loc": rng.normal(size=(4, 1, 5)).astype(np.float32),
       "scale_diag": 0.1 + rng.uniform(size=(3, 5)).astype(np.float32)},
      {"loc": np.asarray([-2.4, -1.0, 0.0, 1.2, 6.5], np.float32), "scale_diag": None}, 1e-3)
  rng = np.random.default_rng(2022)
  loc1, tri1, loc2, tri2 = (rng.normal(size=s) for s in [(5, 1, 4), (3, 4, 4), (3, 4), (4, 4)])
  cases["mvn_tri_lower"] = ("MultivariateNormalTri", {"loc": loc1, "scale_tri": tri1, "is_lower": True},
                            {"loc": loc1, "scale_tril": tri1}, "MultivariateNormalTri",
                            {"loc": loc2, "scale_tri": tri2, "is_lower": True},
                            {"loc": loc2, "scale_tril": tri2}, 1e-3)
  cases["mvn_tri_upper"] = ("MultivariateNormalTri", {"loc": loc1, "scale_tri": tri1, "is_lower": False},
                            {"loc": loc1, "scale_tril": _triu_to_tril(tri1)}, "MultivariateNormalTri",
                            {"loc": loc2, "scale_tri": tri2, "is_lower": False},
                            {"loc": loc2, "scale_tril": _triu_to_tril(tri2)}, 1e-3)
  rng = np.random.default_rng(2022)
  d1, t1 = _dplr(rng, (5, 1, 4), (3, 4), (5, 1, 4, 2), (5, 1, 2), 0.1)
  d2, t2 = _dplr(rng, (3, 4), (3, 4), (4, 2), (2,), 0.1)
  # distrax builds both from one draw order: loc1, diag1, u1, p1, loc2, diag2, u2, p2.
  cases["mvn_diag_plus_low_rank"] = ("MultivariateNormalDiagPlusLowRank", d1, t1,
                                     "MultivariateNormalDiagPlusLowRank", d2, t2, 3e-3)
  rng = np.random.default_rng(2022)
  cov = lambda shape: (lambda m: m @ np.swapaxes(m, -1, -2))(rng.normal(size=shape))
  k1 = {"loc": rng.normal(size=(5, 1, 4)), "covariance_matrix": cov((3, 4, 4))}
  k2 = {"loc": rng.normal(size=(3, 4)), "covariance_matrix": cov((4, 4))}
  cases["mvn_full_covariance"] = same("MultivariateNormalFullCovariance", k1, k2, 1e-3)
  for first, second in [("MultivariateNormalDiag", "MultivariateNormalDiagPlusLowRank"),
                        ("MultivariateNormalDiag", "MultivariateNormalFullCovariance"),
                        ("MultivariateNormalDiag", "MultivariateNormalTri"),
                        ("MultivariateNormalDiagPlusLowRank", "MultivariateNormalFullCovariance"),
                        ("MultivariateNormalDiagPlusLowRank", "MultivariateNormalTri"),
                        ("MultivariateNormalTri", "MultivariateNormalFullCovariance")]:
    rng = np.random.default_rng(42)
    d1, t1 = _mvn_kl_params(first, (8, 1), rng)
    d2, t2 = _mvn_kl_params(second, (6,), rng)
    short = lambda n: n.replace("MultivariateNormal", "").lower()
    cases[f"mvn_kl_{short(first)}_vs_{short(second)}"] = (first, d1, t1, second, d2, t2, 0.03)
  return cases


CASES = _two_distribution_cases()
MODES = ["distrax_to_distrax", "distrax_to_tfp", "tfp_to_distrax", "tfp_to_tfp"]


def _peer():
  """distrax's and TFP's own code assumes jax's default promotion; the suite's conftest makes it strict."""
  return _Both(jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"))


class _Both:
  def __init__(self, *contexts):
    self.contexts = contexts

  def __enter__(self):
    for c in self.contexts:
      c.__enter__()

  def __exit__(self, *exc):
    for c in reversed(self.contexts):
      c.__exit__(*exc)


def _make(library, cls, kwargs, dtype):
  kwargs = {k: (v if v is None or isinstance(v, bool) else jnp.asarray(np.asarray(v, np.float64), dtype))
            for k, v in kwargs.items()}
  with _peer():
    if library == "distrax":
      return getattr(distrax, cls)(**kwargs)
    return getattr(tfd, TFP_NAMES.get(cls, cls))(**kwargs)


def _pair(name, mode, dtype):
  c1, d1, t1, c2, d2, t2, _ = CASES[name]
  lib1, lib2 = {"distrax_to_distrax": ("distrax", "distrax"), "distrax_to_tfp": ("distrax", "tfp"),
                "tfp_to_distrax": ("tfp", "distrax"), "tfp_to_tfp": ("tfp", "tfp")}[mode]
  first = _make(lib1, c1, d1 if lib1 == "distrax" else t1, dtype)
  second = _make(lib2, c2, d2 if lib2 == "distrax" else t2, dtype)
  # distrax's test evaluates D(dist1‖dist2) and D(dist2‖dist1) in the same mode.
  first_r = _make(lib1, c2, d2 if lib1 == "distrax" else t2, dtype)
  second_r = _make(lib2, c1, d1 if lib2 == "distrax" else t1, dtype)
  return (first, second), (first_r, second_r)


# --------------------------------------------------------------------------- #
# 40-digit truth from the distrax-side parameters
# --------------------------------------------------------------------------- #


def _f64(x):
  return np.asarray(x, np.float64)


def _canonical(cls, kw):
  """(family, parameters) in float64, exactly as the distrax distribution defines them."""
  if cls == "Categorical":
    if "logits" in kw:
      return "categorical", _f64(kw["logits"])
    p = _f64(kw["probs"])
    with np.errstate(divide="ignore"):
      return "categorical", np.log(p / p.sum(-1, keepdims=True))
  if cls == "Bernoulli":
    if "logits" in kw:
      return "bernoulli", _f64(kw["logits"])
    p = _f64(kw["probs"])
    return "bernoulli", np.log(p) - np.log1p(-p)
  if cls == "Normal":
    return "normal", (_f64(kw["loc"]), _f64(kw["scale"]))
  loc = kw.get("loc")
  if cls == "MultivariateNormalDiag":
    diag = kw.get("scale_diag")
    k = np.shape(loc if diag is None else diag)[-1]
    diag = np.ones(k) if diag is None else _f64(diag)
    loc = np.zeros(k) if loc is None else _f64(loc)
    return "mvn", (loc, diag[..., None] * np.eye(k), "scale")
  if cls == "MultivariateNormalTri":
    tri = (np.tril if kw["is_lower"] else np.triu)(_f64(kw["scale_tri"]))
    return "mvn", (_f64(loc), tri, "scale")
  if cls == "MultivariateNormalFullCovariance":
    return "mvn", (_f64(loc), _f64(kw["covariance_matrix"]), "covariance")
  d, u, v = _f64(kw["scale_diag"]), _f64(kw["scale_u_matrix"]), _f64(kw["scale_v_matrix"])
  k = d.shape[-1]
  return "mvn", (_f64(loc), d[..., None] * np.eye(k) + u @ np.swapaxes(v, -1, -2), "scale")


def _truth(kind, first, second=None):
  family, a = first
  b = a if second is None else second[1]
  if family == "categorical":
    return ref.categorical_exact(kind, a, b)
  if family == "bernoulli":
    return ref.bernoulli_exact(kind, *np.broadcast_arrays(a, b))
  if family == "normal":
    (m1, s1), (m2, s2) = a, b
    shape = np.broadcast_shapes(m1.shape, s1.shape, m2.shape, s2.shape)
    args = [np.broadcast_to(x, shape) for x in (m1, np.log(np.abs(s1)), m2, np.log(np.abs(s2)))]
    if kind == "entropy":
      return ref.gaussian_entropy_exact(args[1], parameterization="log_scale", axis=None)
    fn = ref.gaussian_kl_exact if kind == "kl" else ref.gaussian_cross_entropy_exact
    return fn(*args, parameterization="log_scale", axis=None)
  (m1, a1, g1), (m2, a2, g2) = a, b
  return ref.mvn_exact_general(kind, m1, a1, m2, a2, given=(g1, g2))


_TRUTH_CACHE: dict = {}


def _case_truth(name, kind):
  if (name, kind) not in _TRUTH_CACHE:
    c1, d1, _, c2, d2, _, _ = CASES[name]
    p, q = _canonical(c1, d1), _canonical(c2, d2)
    _TRUTH_CACHE[(name, kind)] = (_truth(kind, p, q), _truth(kind, q, p))
  return _TRUTH_CACHE[(name, kind)]


METHODS = {"kl": jd.kl_divergence, "cross_entropy": jd.cross_entropy}
# float64 agreement with 40 digits: 1e-13 relative; the random 5x5 scale and covariance matrices of
# mvn_kl_test (condition numbers up to ~1e3) cost up to ~1e2 ulp in the triangular solves. Bernoulli and
# Categorical go through jaxdiv._binary/_categorical, whose shared kernel (_kernels._phi) still uses the
# float32 series in float64 (~1e-11): tighten to 1e-13 once it calls jaxdiv._series.phi.
F64_RTOL = {"mvn": 1e-12, "bernoulli": 1e-10, "categorical": 1e-10}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", sorted(METHODS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_ported_case_matches_40_digit_truth_in_float64(name, kind, mode):
  want12, want21 = _case_truth(name, kind)
  family = _canonical(CASES[name][0], CASES[name][1])[0]
  with jax.enable_x64(True):
    (p, q), (q_, p_) = _pair(name, mode, jnp.float64)
    got12, got21 = METHODS[kind](p, q), METHODS[kind](q_, p_)
  for got, want in [(got12, want12), (got21, want21)]:
    assert got.dtype == jnp.float64 and got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=F64_RTOL.get(family, 1e-13), atol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", sorted(METHODS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_ported_case_matches_tfp_at_distrax_tolerance_in_float32(name, kind, mode):
  # distrax's assertion, adapted only in the call: jaxdiv's value against TFP's, at distrax's rtol.
  (p, q), (q_, p_) = _pair(name, mode, jnp.float32)
  (tp, tq), (tq_, tp_) = _pair(name, "tfp_to_tfp", jnp.float32)
  tfp_method = {"kl": "kl_divergence", "cross_entropy": "cross_entropy"}[kind]
  rtol = CASES[name][-1]
  with _peer():
    want12, want21 = getattr(tp, tfp_method)(tq), getattr(tq_, tfp_method)(tp_)
  for got, want in [(METHODS[kind](p, q), want12), (METHODS[kind](q_, p_), want21)]:
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=rtol,
                               atol=5e-5 if name == "categorical_extreme" else 0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_is_as_accurate_as_its_inputs_allow(name):
  # Against the truth of the float32-rounded inputs: jaxdiv's float32 result is within ~1e-5 (random
  # MVN matrices: their conditioning), mostly tighter than distrax's tolerances against TFP.
  c1, d1, _, c2, d2, _, _ = CASES[name]
  rounded = lambda kw: {k: (v if v is None or isinstance(v, bool) else np.asarray(v, np.float32))
                        for k, v in kw.items()}
  p, q = _canonical(c1, rounded(d1)), _canonical(c2, rounded(d2))
  (pd, qd), _ = _pair(name, "distrax_to_distrax", jnp.float32)
  for kind, fn in METHODS.items():
    want = _truth(kind, p, q)
    got = np.asarray(fn(pd, qd), np.float64)
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite], want[~finite])
    # A float32 covariance is factored by distrax's own Cholesky (cond(Σ) up to ~1e6 in mvn_kl_test's
    # draws): that rounding, not jaxdiv, bounds these to ~3e-4.
    tol = 1e-3 if "full" in name else 3e-5 if p[0] == "mvn" else 2e-6
    np.testing.assert_allclose(got[finite], want[finite], rtol=tol, atol=1e-6)


def test_where_tfp_float32_is_less_accurate_than_truth():
  """The ported expected values (TFP, float32) that differ from the float64 truth by more than 1e-6.

  Recorded here so the report states which cases use the truth instead: for these jaxdiv's float32
  result is compared with the 40-digit value (``test_float32_is_as_accurate_as_its_inputs_allow``).
  """
  worse = {}
  for name in sorted(CASES):
    c1, d1, _, c2, d2, _, _ = CASES[name]
    rounded = lambda kw: {k: (v if v is None or isinstance(v, bool) else np.asarray(v, np.float32))
                          for k, v in kw.items()}
    p, q = _canonical(c1, rounded(d1)), _canonical(c2, rounded(d2))
    (tp, tq), _ = _pair(name, "tfp_to_tfp", jnp.float32)
    want = _truth("kl", p, q)
    with _peer():
      tfp = np.asarray(tp.kl_divergence(tq), np.float64)
    finite = np.isfinite(want) & (want != 0)
    rel = np.max(np.abs(tfp[finite] - want[finite]) / np.abs(want[finite]), initial=0)
    if rel > 1e-6:
      worse[name] = rel
  # At the time of writing: bernoulli 1.0e-5 (jaxdiv 3e-7), categorical 1.5e-6 (jaxdiv 2e-7), and the
  # full-covariance MVN cases up to 3e-4 (float32 Cholesky of an ill-conditioned Σ, which jaxdiv shares).
  assert {"bernoulli", "categorical"} <= set(worse), worse
  assert any("fullcovariance" in n for n in worse), worse


# --------------------------------------------------------------------------- #
# Entropy rows of distrax's test_method tables
# --------------------------------------------------------------------------- #


def _entropy_cases():
  cases = {
      "normal_0_1": ("Normal", {"loc": 0.0, "scale": 1.0}),
      "mvn_diag_one": ("MultivariateNormalDiag", {"loc": [0.1, -0.1], "scale_diag": [0.8, 0.5]}),
      "mvn_diag_broadcast_loc": ("MultivariateNormalDiag",
                                 {"loc": [0.0, 0.1, -0.1], "scale_diag": [[1.5, 0.8, 0.5], [0.8, 0.1, 0.4]]}),
      "mvn_diag_broadcast_scale": ("MultivariateNormalDiag",
                                   {"loc": [[0.0, 0.1, -0.1], [0.2, 0.0, 0.5]],
                                    "scale_diag": [1.5, 0.8, 0.5]}),
      "mvn_diag_no_loc": ("MultivariateNormalDiag", {"scale_diag": [0.8, 0.5]}),
      "mvn_diag_no_scale": ("MultivariateNormalDiag", {"loc": [0.1, -0.1]}),
      "bernoulli_logits": ("Bernoulli", {"logits": [[0.0, 0.5, -0.5], [-0.2, 0.3, 0.5]]}),
      "bernoulli_probs": ("Bernoulli", {"probs": [[0.1, 0.5, 0.4], [0.2, 0.4, 0.4]]}),
  }
  rng = np.random.default_rng(42)
  probs = rng.uniform(size=(4, 3))
  probs /= probs.sum(-1, keepdims=True)
  cases["categorical_probs"] = ("Categorical", {"probs": probs})
  cases["categorical_logits"] = ("Categorical", {"logits": np.log(probs)})
  for loc_shape, tri_shape in [((4,), (4, 4)), ((7, 4), (4, 4)), ((4,), (7, 4, 4))]:
    rng = np.random.default_rng(2022)
    loc, tri = rng.normal(size=loc_shape), rng.normal(size=tri_shape)
    for lower in (True, False):
      cases[f"mvn_tri_{len(loc_shape)}_{len(tri_shape)}_{'lower' if lower else 'upper'}"] = (
          "MultivariateNormalTri", {"loc": loc, "scale_tri": tri, "is_lower": lower})
    rng = np.random.default_rng(2022)
    loc, m = rng.normal(size=loc_shape), rng.normal(size=tri_shape)
    cases[f"mvn_full_covariance_{len(loc_shape)}_{len(tri_shape)}"] = (
        "MultivariateNormalFullCovariance", {"loc": loc, "covariance_matrix": m @ np.swapaxes(m, -1, -2)})
  rng = np.random.default_rng(2022)
  cases["mvn_diag_plus_low_rank"] = ("MultivariateNormalDiagPlusLowRank",
                                     {"loc": rng.normal(size=(4,)), "scale_diag": rng.normal(size=(4,)),
                                      "scale_u_matrix": 0.1 * rng.normal(size=(4, 2)),
                                      "scale_v_matrix": 0.1 * rng.normal(size=(7, 4, 2))})
  return cases


ENTROPY_CASES = _entropy_cases()


@pytest.mark.parametrize("name", sorted(ENTROPY_CASES))
def test_ported_entropy_matches_40_digit_truth_and_distrax(name):
  cls, kw = ENTROPY_CASES[name]
  want = _truth("entropy", _canonical(cls, kw))
  with jax.enable_x64(True):
    dist = _make("distrax", cls, kw, jnp.float64)
    got = jd.entropy(dist)
    assert got.dtype == jnp.float64
    with _peer():
      batch_shape = tuple(dist.batch_shape)
    assert got.shape == batch_shape, (got.shape, batch_shape)
    np.testing.assert_allclose(np.asarray(got), np.broadcast_to(want, got.shape), rtol=1e-13)
    # distrax's own value (its tests: rtol 1e-3 against TFP).
    with _peer():
      theirs = dist.entropy()
    np.testing.assert_allclose(np.asarray(got), np.asarray(theirs), rtol=1e-3)
