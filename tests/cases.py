"""One table describing every public loss: how to call it and its float64 reference.

``test_api.py`` iterates over ``jaxdiv.__all__`` and fails for a public
function that has no entry here, so a new loss cannot skip the contract tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
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
  # Differentiation modes: ("rev",) for a custom_vjp loss (the fused ones), whose jvp/jacfwd/hessian
  # raise JAX's documented TypeError instead.
  modes: tuple[str, ...] = ("fwd", "rev")
  # The target is a constant of the loss (the fused distillation's teacher): not differentiated.
  constant_target: bool = False
  # Called through an adapter from (hidden, weight) or a mesh: the bad-input tests, which check the
  # wording of the materialised losses' errors, are in tests/test_fused.py and tests/test_paths.py.
  adapter: bool = False

  @property
  def differentiable_args(self) -> tuple[int, ...]:
    return (0,) if self.target in (None, "labels") or self.constant_target else (0, 1)


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
        jaxdiv.distillation_loss, ref.distillation_loss, "logits",
        {"temperature": 0.5, "teacher_gradient": True}),
})

# --------------------------------------------------------------------------- #
# Call adapters: the fused and vocab-parallel losses on the same (logits, target) matrix
# --------------------------------------------------------------------------- #


def _named(name: str):
  def wrap(fn):
    fn.__name__ = name
    return fn
  return wrap


def _rows(x):
  """``[..., V]`` as ``[N, V]`` and the function restoring the leading shape."""
  x = jnp.asarray(x)
  lead = x.shape[:-1]
  return x.reshape(-1, x.shape[-1]), lambda out: out.reshape(lead)


def _vocab_mesh(vocab: int):
  """A 1-D vocabulary mesh over as many of the 8 simulated devices as divide V."""
  size = next(k for k in (8, 4, 3, 2, 1) if vocab % k == 0 and k <= len(jax.devices()))
  return jax.sharding.Mesh(np.array(jax.devices()[:size]), ("vocab",))


def _fused_inputs(logits, where):
  """``(hidden, weight, bias, class mask, token mask)`` with ``hidden @ weight + bias`` equal to ``logits``.

  ``weight`` is the identity, so the fused loss sees the logits exactly; ``-inf`` logits are whole
  columns of ``-inf`` bias (a padded vocabulary), a ``where`` that masks whole classes is the class mask
  and one that masks whole rows the token mask: the ways a fused loss masks. (A lone ``-inf`` inside one
  token's row has no ``hidden @ weight + bias`` form.)
  """
  z, restore = _rows(logits)
  vocab = z.shape[-1]
  neg = z == -jnp.inf
  columns = jnp.all(neg, axis=0)
  bias = jnp.where(columns, -jnp.inf, 0.0).astype(z.dtype)
  classes = tokens = None
  if where is not None:
    w, _ = _rows(jnp.broadcast_to(jnp.asarray(where), jnp.shape(logits)))
    tokens = jnp.any(w, axis=1)
    classes = jnp.any(w, axis=0)
  hidden = jnp.where(neg, 0, z)
  return hidden, jnp.eye(vocab, dtype=hidden.dtype), bias, classes, tokens, restore


@_named("fused_linear_cross_entropy")
def _fused_ce(logits, labels, where=None, **kw):
  h, w, b, classes, tokens, restore = _fused_inputs(logits, where)
  y, _ = _rows(labels[..., None])
  out = jaxdiv.fused_linear_cross_entropy(h, w, y[:, 0], bias=b, where=classes, token_mask=tokens,
                                          mode="low_memory", reduction="none", vocab_block=4, **kw)
  return restore(out)


def _fused_distillation(divergence, **fixed):
  @_named("fused_linear_distillation")
  def fn(logits, target_logits, where=None, **kw):
    h, w, b, classes, tokens, restore = _fused_inputs(logits, where)
    t, _ = _rows(target_logits)
    out = jaxdiv.fused_linear_distillation(h, w, t, bias=b, divergence=divergence, where=classes,
                                           token_mask=tokens, mode="low_memory", reduction="none",
                                           vocab_block=4, **fixed, **kw)
    return restore(out)
  return fn


@_named("vocab_parallel_fused_linear_cross_entropy")
def _vocab_parallel_fused_ce(logits, labels, where=None, **kw):
  h, w, b, classes, tokens, restore = _fused_inputs(logits, where)
  y, _ = _rows(labels[..., None])
  out = jaxdiv.vocab_parallel_fused_linear_cross_entropy(
      h, w, y[:, 0], bias=b, mesh=_vocab_mesh(w.shape[1]), vocab_axis="vocab", where=classes,
      token_mask=tokens, reduction="none", vocab_block=1, **kw)
  return restore(out)


@_named("vocab_parallel_cross_entropy")
def _vocab_parallel_ce(logits, labels, where=None, **kw):
  z, restore = _rows(logits)
  y, _ = _rows(jnp.asarray(labels)[..., None])
  mask = None if where is None else _rows(jnp.broadcast_to(jnp.asarray(where), jnp.shape(logits)))[0]
  out = jaxdiv.vocab_parallel_cross_entropy(z, y[:, 0], mesh=_vocab_mesh(z.shape[1]), vocab_axis="vocab",
                                            where=mask, **kw)
  return restore(out)


def _vocab_parallel_divergence(fn_name, **fixed):
  @_named(fn_name)
  def fn(logits, target_logits, where=None, **kw):
    z, restore = _rows(logits)
    t, _ = _rows(target_logits)
    mask = None if where is None else _rows(jnp.broadcast_to(jnp.asarray(where), jnp.shape(logits)))[0]
    out = getattr(jaxdiv, fn_name)(z, t, mesh=_vocab_mesh(z.shape[1]), vocab_axis="vocab", where=mask,
                                   **fixed, **kw)
    return restore(out)
  return fn


CASES.update({
    "fused_linear_cross_entropy_smoothing_z_loss_soft_cap": Case(
        _fused_ce, ref.cross_entropy_options, "labels",
        {"label_smoothing": 0.1, "z_loss": 1e-3, "soft_cap": 30.0, "ignore_index": 2},
        modes=("rev",), adapter=True),
    "fused_linear_distillation_forward_kl": Case(
        _fused_distillation("forward_kl"), ref.kl_divergence_with_log_targets, "logits", modes=("rev",),
        constant_target=True, adapter=True),
    "fused_linear_distillation_reverse_kl": Case(
        _fused_distillation("reverse_kl"), ref.reverse_kl_divergence, "logits", modes=("rev",),
        constant_target=True, adapter=True),
    "fused_linear_distillation_jsd_0.3": Case(
        _fused_distillation("jsd", beta=0.3),
        lambda z, t, **kw: ref.jensen_shannon_divergence(z, t, 0.3, **kw),
        "logits", modes=("rev",), constant_target=True, adapter=True),
    "vocab_parallel_fused_linear_cross_entropy": Case(
        _vocab_parallel_fused_ce, ref.cross_entropy_options, "labels", {"label_smoothing": 0.1},
        modes=("rev",), adapter=True),
    "vocab_parallel_cross_entropy": Case(
        _vocab_parallel_ce, ref.cross_entropy_options, "labels",
        {"label_smoothing": 0.1, "z_loss": 1e-3, "soft_cap": 30.0, "ignore_index": 2},
        adapter=True),
    "vocab_parallel_kl_divergence": Case(
        _vocab_parallel_divergence("vocab_parallel_kl_divergence"), ref.kl_divergence_with_log_targets,
        "logits", adapter=True),
    "vocab_parallel_jensen_shannon_divergence": Case(
        _vocab_parallel_divergence("vocab_parallel_jensen_shannon_divergence"), ref.jensen_shannon_divergence,
        "logits", adapter=True),
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
