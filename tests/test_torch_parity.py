"""torch parity of :func:`jaxdiv.cross_entropy`: class weights × ignore_index × reduction × label smoothing.

The expected values come from ``reference.torch_cross_entropy``, a float64
port of ``torch.nn.functional.cross_entropy`` (torch is not a dependency: its
PyPI wheels are CUDA builds of several hundred MB plus the nvidia-* packages).

Where jaxdiv's documented formula and torch's agree (no class weights, or no
smoothing) the default call must give torch's numbers. With both, they differ
by design: jaxdiv weights the whole smoothed example by ``w[y]``; torch weights
each class's smoothing term by its own ``w_c`` and still divides the mean by
``Σ w[y_n]``. Those cases call ``weighting="torch"``, which must give torch's
numbers.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiv
import reference as ref

NUM_CLASSES = 5
REDUCTIONS = ["none", "sum", "mean"]
WEIGHTS = {"unweighted": None, "weighted": np.array([0.3, 2.0, 1.0, 0.7, 4.0])}
IGNORE = {"no_ignore": None, "ignore_-100": -100}
SMOOTHING = [0.0, 0.1, 1.0]


def _batch(seed: int):
  rng = np.random.default_rng(seed)
  z = (rng.normal(size=(7, NUM_CLASSES)) * 2).astype(np.float32)
  y = rng.integers(0, NUM_CLASSES, size=7)
  return z, y


def _torch(z, y, weights, ignore_index, reduction, smoothing):
  return ref.torch_cross_entropy(z, y, weight=weights,
                                 ignore_index=-100 if ignore_index is None else ignore_index,
                                 reduction=reduction, label_smoothing=smoothing)


def _jaxdiv(z, y, weights, ignore_index, reduction, smoothing, **extra):
  return jaxdiv.cross_entropy(
      jnp.asarray(z), jnp.asarray(y),
      class_weights=None if weights is None else jnp.asarray(weights, jnp.float32),
      ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing, **extra)


GRID = list(itertools.product(WEIGHTS, IGNORE, REDUCTIONS, SMOOTHING))
AGREE = [c for c in GRID if c[0] == "unweighted" or c[3] == 0.0]
DIFFER = [c for c in GRID if c not in AGREE]


def _labels(y, ignore):
  y = y.copy()
  if ignore is not None:
    y[[1, 4]] = ignore
  return y


@pytest.mark.parametrize("weights, ignore, reduction, smoothing", AGREE, ids=str)
def test_default_semantics_equal_torch_where_the_formulas_agree(weights, ignore, reduction, smoothing):
  z, y = _batch(1)
  y = _labels(y, IGNORE[ignore])
  want = _torch(z, y, WEIGHTS[weights], IGNORE[ignore], reduction, smoothing)
  got = _jaxdiv(z, y, WEIGHTS[weights], IGNORE[ignore], reduction, smoothing)
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("weights, ignore, reduction, smoothing", DIFFER, ids=str)
def test_default_semantics_weight_the_whole_smoothed_example_by_the_label_weight(weights, ignore, reduction,
                                                                                    smoothing):
  # jaxdiv's documented choice, and a check that these cells really differ from torch.
  z, y = _batch(2)
  y = _labels(y, IGNORE[ignore])
  w = WEIGHTS[weights]
  got = np.asarray(_jaxdiv(z, y, w, IGNORE[ignore], reduction, smoothing))
  documented = ref.cross_entropy_options(z, y, ignore_index=IGNORE[ignore], class_weights=w,
                                         label_smoothing=smoothing, reduction=reduction)
  np.testing.assert_allclose(got, documented, rtol=2e-6, atol=1e-6)
  assert not np.allclose(got, _torch(z, y, w, IGNORE[ignore], reduction, smoothing), rtol=1e-3)


@pytest.mark.parametrize("weights, ignore, reduction, smoothing", DIFFER, ids=str)
def test_weighting_torch_equals_torch(weights, ignore, reduction, smoothing):
  z, y = _batch(3)
  y = _labels(y, IGNORE[ignore])
  want = _torch(z, y, WEIGHTS[weights], IGNORE[ignore], reduction, smoothing)
  got = _jaxdiv(z, y, WEIGHTS[weights], IGNORE[ignore], reduction, smoothing, weighting="torch")
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=1e-6)


def test_torch_port_reproduces_torchs_documented_special_cases():
  # The port itself, on cases with a closed form: no smoothing is the weighted NLL mean
  # Σ w[y] nll / Σ w[y]; ε = 1 with uniform weights is the mean of -Σ_c log q_c / C.
  z, y = _batch(4)
  w = WEIGHTS["weighted"]
  lq = ref.log_softmax(z)
  nll = -lq[np.arange(len(y)), y]
  np.testing.assert_allclose(ref.torch_cross_entropy(z, y, weight=w), np.sum(w[y] * nll) / np.sum(w[y]),
                             rtol=1e-12)
  np.testing.assert_allclose(ref.torch_cross_entropy(z, y, label_smoothing=1.0), np.mean(-lq.mean(-1)),
                             rtol=1e-12)
  # With weights and smoothing the smoothing term is weighted per class, divided by Σ w[y].
  eps = 0.1
  per = (1 - eps) * w[y] * nll + eps * -(lq * w).sum(-1) / NUM_CLASSES
  np.testing.assert_allclose(ref.torch_cross_entropy(z, y, weight=w, label_smoothing=eps),
                             per.sum() / w[y].sum(), rtol=1e-12)
