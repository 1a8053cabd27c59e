"""optax 0.2.8's own tests of the losses ``jaxdiv.optax`` replaces, run against the drop-ins.

The tests are imported from the installed optax (its wheel ships
``optax/losses/_classification_test.py`` and ``_smoothing_test.py``; optax is
Apache-2.0, nothing is copied here). Each test module calls the losses through
a module global (``_classification``, ``_smoothing``); a fixture swaps that
global for a namespace in which every name ``jaxdiv.optax`` exports is the
drop-in and every other name (CTC, hinge, ...) stays optax's. Only the test
classes of replaced losses are collected: 96 tests. Their unseeded draws are
seeded per test here; the all-False random mask they hit one time in 32 (an
empty class axis) is pinned by ``test_empty_class_axis_gives_optax_empty_sum``.

The suite's strict JAX configuration (``tests/conftest.py``) is relaxed to
optax's defaults for these tests only: optax's test code itself mixes float64
NumPy arrays with float32 results and relies on rank promotion.
"""

from __future__ import annotations

import types
import zlib

import jax
import numpy as np
import pytest

from jaxdiv import optax as dropin

_classification_test = pytest.importorskip("optax.losses._classification_test")
_smoothing_test = pytest.importorskip("optax.losses._smoothing_test")


def _with_dropins(module: types.ModuleType) -> types.SimpleNamespace:
  """``module``'s names, with the ones jaxdiv.optax exports replaced by the drop-ins."""
  names = {k: v for k, v in vars(module).items() if not k.startswith("__")}
  names.update({k: getattr(dropin, k) for k in dropin.__all__ if k in names})
  return types.SimpleNamespace(**names)


@pytest.fixture(autouse=True)
def _optax_tests_call_the_dropins(monkeypatch, request):
  # optax's tests draw from the global NumPy generator unseeded: seed it per test, so a failure reproduces.
  # It is the legacy global generator, which a np.random.default_rng Generator cannot seed.
  np.random.seed(zlib.crc32(request.node.nodeid.encode()))  # noqa: NPY002  optax's tests draw from it
  monkeypatch.setattr(_classification_test, "_classification",
                      _with_dropins(_classification_test._classification))
  monkeypatch.setattr(_smoothing_test, "_smoothing", _with_dropins(_smoothing_test._smoothing))
  with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
    yield


# The test classes of the losses jaxdiv.optax replaces (not CTC, hinge, perceptron, sparsemax).
SoftmaxCrossEntropyTest = _classification_test.SoftmaxCrossEntropyTest
SafeSoftmaxCrossEntropyTest = _classification_test.SafeSoftmaxCrossEntropyTest
SoftmaxCrossEntropyWithIntegerLabelsTest = _classification_test.SoftmaxCrossEntropyWithIntegerLabelsTest
SigmoidCrossEntropyTest = _classification_test.SigmoidCrossEntropyTest
PolyLossTest = _classification_test.PolyLossTest
GeneralizedKLDivergenceTest = _classification_test.GeneralizedKLDivergenceTest
KLDivergenceTest = _classification_test.KLDivergenceTest
KLDivergenceWithLogTargetsTest = _classification_test.KLDivergenceWithLogTargetsTest
SigmoidFocalLossTest = _classification_test.SigmoidFocalLossTest
SmoothLabelsTest = _smoothing_test.SmoothLabelsTest


def test_every_dropin_is_exercised_by_an_optax_test_class():
  covered = {"softmax_cross_entropy", "safe_softmax_cross_entropy",
             "softmax_cross_entropy_with_integer_labels",
             "sigmoid_binary_cross_entropy", "poly_loss_cross_entropy", "generalized_kl_divergence",
             "convex_kl_divergence", "kl_divergence", "kl_divergence_with_log_targets", "sigmoid_focal_loss",
             "smooth_labels"}
  assert set(dropin.__all__) <= covered
