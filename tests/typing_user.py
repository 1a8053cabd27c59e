"""A user's common calls, with the types a type checker must infer for them (``typing.assert_type``).

Not a test module (pytest collects ``test_*.py``); ``.ci/run`` type-checks it with pyright, together
with the ``jaxdiv`` package, so a public signature that types these calls wrongly (a union return
where the caller gets one type, an ``Objective[Unknown]``) fails CI. The calls sit inside functions
that nothing calls: importing this module (``--doctest-modules`` does) runs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, assert_type

import jax
import jax.numpy as jnp
import numpy as np

import jaxdiv
from jaxdiv import optax as losses
from jaxdiv.objective import Aux, Objective


def categorical(logits: jax.Array, labels: jax.Array, probs: np.ndarray) -> None:
  assert_type(jaxdiv.cross_entropy(logits, labels), jax.Array)
  assert_type(jaxdiv.cross_entropy(logits, labels).mean(), jax.Array)
  assert_type(jaxdiv.cross_entropy(logits, labels, label_smoothing=0.1, reduction="mean"), jax.Array)
  assert_type(jaxdiv.cross_entropy(logits, labels, return_aux=False), jax.Array)
  loss, aux = jaxdiv.cross_entropy(logits, labels, z_loss=1e-4, return_aux=True)
  assert_type(loss, jax.Array)
  assert_type(aux, dict[str, jax.Array])
  assert_type(aux["z_loss"], jax.Array)
  # NumPy and Python inputs (ArrayLike) give jax.Array too.
  assert_type(jaxdiv.soft_cross_entropy(logits, probs), jax.Array)
  assert_type(jaxdiv.kl_divergence(np.zeros((2, 3)), probs).sum(), jax.Array)
  assert_type(jaxdiv.binary_entropy(0.3), jax.Array)
  assert_type(jaxdiv.distillation_loss(logits, logits, temperature=2.0, labels=labels, alpha=0.5), jax.Array)
  assert_type(jaxdiv.binary_cross_entropy(logits, jnp.ones_like(logits)), jax.Array)
  assert_type(losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), jax.Array)


def fused(hidden: jax.Array, weight: jax.Array, labels: jax.Array, mesh: jax.sharding.Mesh) -> None:
  assert_type(jaxdiv.fused_linear_cross_entropy(hidden, weight, labels), jax.Array)
  assert_type(jaxdiv.fused_linear_cross_entropy(hidden, weight, labels, return_lse=False), jax.Array)
  loss, lse = jaxdiv.fused_linear_cross_entropy(hidden, weight, labels, reduction="none", return_lse=True)
  assert_type(loss, jax.Array)
  assert_type(lse, jax.Array)
  logits = hidden @ weight
  assert_type(jaxdiv.vocab_parallel_cross_entropy(logits, labels, mesh=mesh, vocab_axis="v"), jax.Array)
  sharded = jaxdiv.vocab_parallel_fused_linear_cross_entropy(
      hidden, weight, labels, mesh=mesh, vocab_axis="v", reduction="mean")
  assert_type(sharded, jax.Array)
  loss, lse = jaxdiv.vocab_parallel_fused_linear_cross_entropy(
      hidden, weight, labels, mesh=mesh, vocab_axis="v", reduction="none", return_lse=True)
  assert_type(loss, jax.Array)
  assert_type(lse, jax.Array)


def linear(params: dict[str, jax.Array], inputs: jax.Array) -> jax.Array:
  return inputs @ params["w"] + params["b"]


def objective(params: dict[str, jax.Array], batch: dict[str, jax.Array], key: jax.Array) -> None:
  # Params comes from an annotated apply_fn; an unannotated lambda gives Objective[Any], not Unknown
  # (and not `object`, which would make `p["w"]` an error).
  typed = Objective(jaxdiv.cross_entropy, linear, loss_kwargs={"label_smoothing": 0.1})
  assert_type(typed, Objective[dict[str, jax.Array]])
  assert_type(Objective(jaxdiv.cross_entropy, lambda p, x: x @ p["w"]), Objective[Any])
  loss, aux = typed(params, batch)
  assert_type(loss, jax.Array)
  assert_type(aux, Aux)
  assert_type(aux.accuracy, jax.Array)
  assert_type(aux.metrics, dict[str, jax.Array])
  assert_type(typed.value_fn(batch), Callable[[dict[str, jax.Array]], jax.Array])
  # State and randomness (Flax linen batch_stats, Haiku transform_with_state, dropout).
  stateful = Objective[dict[str, jax.Array]](
      jaxdiv.cross_entropy, lambda p, x, *, state, rng: (linear(p, x), state))
  _, aux = stateful(params, batch, state={"mean": jnp.zeros(3)}, rng=key)
  assert_type(aux.state, Any)
  (value, aux), grads = jax.value_and_grad(typed, has_aux=True)(params, batch)
