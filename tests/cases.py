"""One table describing every public loss: how to call it and its float64 reference.

``test_api.py`` iterates over ``jaxdiv.__all__`` and fails for a public
function that has no entry here, so a new loss cannot skip the contract tests.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

import jaxdiv
import reference as ref

NEG_INF = -np.inf


@dataclasses.dataclass(frozen=True)
class Case:
  """How to exercise one loss.

  Attributes:
    fn: the jaxdiv function.
    reference: float64 reference with the same positional arguments.
    target: "labels" (integer), "probs" (on the simplex along the last axis),
      "binary_probs" (elementwise in [0, 1]), "logits" or None (no target).
    kwargs: extra keyword arguments for both.
  """

  fn: Callable[..., Any]
  reference: Callable[..., Any]
  target: str | None
  kwargs: dict = dataclasses.field(default_factory=dict)

  @property
  def differentiable_args(self) -> tuple[int, ...]:
    return (0,) if self.target in (None, "labels") else (0, 1)


CASES: dict[str, Case] = {
    "cross_entropy": Case(jaxdiv.cross_entropy, ref.cross_entropy, "labels"),
    "soft_cross_entropy": Case(jaxdiv.soft_cross_entropy, ref.soft_cross_entropy, "probs"),
    "soft_cross_entropy_with_log_targets": Case(
        jaxdiv.soft_cross_entropy_with_log_targets,
        lambda z, t, **kw: ref.soft_cross_entropy(z, np.exp(ref.log_softmax(t, **kw)), **kw),
        "logits",
    ),
    "kl_divergence": Case(jaxdiv.kl_divergence, ref.kl_divergence, "probs"),
    "kl_divergence_with_log_targets": Case(
        jaxdiv.kl_divergence_with_log_targets, ref.kl_divergence_with_log_targets, "logits"
    ),
    "reverse_kl_divergence": Case(jaxdiv.reverse_kl_divergence, ref.reverse_kl_divergence, "logits"),
    "jensen_shannon_divergence": Case(
        jaxdiv.jensen_shannon_divergence, ref.jensen_shannon_divergence, "logits"
    ),
    "jensen_shannon_divergence_beta_0.1": Case(
        jaxdiv.jensen_shannon_divergence, ref.jensen_shannon_divergence, "logits", {"beta": 0.1}
    ),
    "entropy": Case(jaxdiv.entropy, ref.entropy, None),
    "binary_cross_entropy": Case(jaxdiv.binary_cross_entropy, ref.binary_cross_entropy, "binary_probs"),
    "binary_kl_divergence": Case(jaxdiv.binary_kl_divergence, ref.binary_kl_divergence, "logits"),
    "binary_entropy": Case(jaxdiv.binary_entropy, ref.binary_entropy, None),
    # Binary options and forms (issue 13). label_smoothing is tested in tests/test_binary.py: it puts
    # mass ε/2 on the impossible side of an infinite logit, so the edge matrix's true values are +inf.
    "binary_cross_entropy_pos_weight_2.5": Case(
        jaxdiv.binary_cross_entropy, ref.binary_cross_entropy_options, "binary_probs", {"pos_weight": 2.5}),
    "sigmoid_focal_loss": Case(jaxdiv.sigmoid_focal_loss, ref.sigmoid_focal_loss, "binary_probs"),
    "sigmoid_focal_loss_alpha_0.25_gamma_1.5": Case(
        jaxdiv.sigmoid_focal_loss, ref.sigmoid_focal_loss, "binary_probs", {"alpha": 0.25, "gamma": 1.5}),
    "binary_poly_loss": Case(jaxdiv.binary_poly_loss, ref.binary_poly_loss, "binary_probs"),
    "binary_poly_loss_epsilon_-1": Case(jaxdiv.binary_poly_loss, ref.binary_poly_loss, "binary_probs",
                                        {"epsilon": -1.0}),
}

# Training options (issue 3): each option keeps the whole contract, on the same matrix.
CASES.update({
    "cross_entropy_t5x_normalized": Case(
        jaxdiv.cross_entropy, ref.cross_entropy_options, "labels",
        {"label_smoothing": 0.2, "smoothing": "t5x", "t5x_normalize": True}),
    "cross_entropy_smoothing_soft_cap_z_loss_ignore_index": Case(
        jaxdiv.cross_entropy, ref.cross_entropy_options, "labels",
        {"label_smoothing": 0.1, "soft_cap": 30.0, "z_loss": 1e-3, "ignore_index": 2}),
    # teacher_gradient=True: the contract's derivatives w.r.t. the target are the teacher's.
    "distillation_loss_temperature_0.5": Case(
        jaxdiv.distillation_loss, ref.distillation_loss, "logits", {"temperature": 0.5, "teacher_gradient": True}),
})

# Public names that are not losses of (logits, target); each is tested in its own module.
NOT_LOSSES = {
    "check_labels",
    # (log_probs, ref_log_probs) of sampled tokens, and (logits, ids, log_probs): tests/test_rl.py and
    # tests/test_distill.py cover jit, vmap, grad, jacfwd, hessian and the float64 references.
    "kl_estimator",
    "top_k_kl_divergence",
    # Gaussians take (mean, log-variance) pairs or Cholesky factors: tests/test_gaussian.py covers
    # jit, vmap, grad, jacfwd, hessian and the float64 references.
    "gaussian_cross_entropy",
    "gaussian_entropy",
    "gaussian_kl_divergence",
    "multivariate_normal_cross_entropy",
    "multivariate_normal_entropy",
    "multivariate_normal_kl_divergence",
    "standard_normal_kl_divergence",
    # Fused and vocab-parallel losses take (hidden, weight, labels) or a mesh: tests/test_fused.py and
    # tests/test_sharded.py compare them with the materialised losses under jit, vmap and grad.
    "fused_linear_cross_entropy",
    "fused_linear_distillation",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_fused_linear_cross_entropy",
    "vocab_parallel_jensen_shannon_divergence",
    "vocab_parallel_kl_divergence",
}


def make_inputs(case: Case, rng: np.random.Generator, shape=(3, 5), scale=2.0):
  """Random float64 inputs for ``case``: (logits, target) or (logits,)."""
  logits = rng.normal(size=shape) * scale
  if case.target is None:
    return (logits,)
  if case.target == "labels":
    return logits, rng.integers(0, shape[-1], size=shape[:-1])
  if case.target == "probs":
    return logits, _softmax(rng.normal(size=shape) * scale)
  if case.target == "binary_probs":
    return logits, rng.uniform(size=shape)
  return logits, rng.normal(size=shape) * scale


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def call(case: Case, *args, **kwargs):
  return case.fn(*args, **case.kwargs, **kwargs)


def call_reference(case: Case, *args, **kwargs):
  return np.asarray(case.reference(*args, **case.kwargs, **kwargs))
