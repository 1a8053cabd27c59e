"""``jaxdiv.objective.Objective``: reductions, masks and aux, against direct jaxdiv calls.

The training loops with optax, Flax and Haiku are in ``test_integrations.py``.
"""

from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiv
from jaxdiv.objective import Aux, Objective


def _rng(*key) -> np.random.Generator:
  return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _linear(w, x):
  return x @ w


def _batch(key, n=8, d=5, k=4):
  rng = _rng(key)
  w = jnp.asarray(rng.normal(size=(d, k)), jnp.float32)
  x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  y = jnp.asarray(rng.integers(0, k, size=n), jnp.int32)
  return w, {"inputs": x, "labels": y}


def _close(a, b, rtol=1e-6, atol=1e-6):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def test_loss_and_aux_equal_direct_jaxdiv_calls():
  w, batch = _batch("plain")
  loss, aux = jax.jit(Objective(jaxdiv.cross_entropy, _linear))(w, batch)
  logits = batch["inputs"] @ w
  per = jaxdiv.cross_entropy(logits, batch["labels"])
  assert isinstance(aux, Aux)
  _close(loss, jnp.mean(per))
  _close(aux.per_example, per)
  _close(aux.accuracy, jnp.mean((jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)))
  assert float(aux.count) == 8.0


def test_value_and_grad_has_aux_and_value_fn_agree():
  w, batch = _batch("grad")
  objective = Objective(jaxdiv.cross_entropy, _linear, loss_kwargs={"label_smoothing": 0.1})
  (loss, _), grad = jax.value_and_grad(objective, has_aux=True)(w, batch)
  value_fn = objective.value_fn(batch)
  _close(value_fn(w), loss)
  _close(jax.grad(value_fn)(w), grad)
  expected = jax.grad(lambda w: jaxdiv.cross_entropy(
      batch["inputs"] @ w, batch["labels"], label_smoothing=0.1, reduction="mean"))(w)
  _close(grad, expected)


def test_mask_drops_examples_even_with_junk_inputs_and_out_of_range_labels():
  w, batch = _batch("mask")
  mask = jnp.array([True, True, False, True, False, True, True, True])
  padded = dict(batch, mask=mask,
                inputs=jnp.where(mask[:, None], batch["inputs"], 1e30),
                labels=jnp.where(mask, batch["labels"], -100))
  objective = Objective(jaxdiv.cross_entropy, _linear)
  (loss, aux), grad = jax.value_and_grad(objective, has_aux=True)(w, padded)
  kept = {k: v[np.asarray(mask)] for k, v in batch.items()}
  (loss_kept, aux_kept), grad_kept = jax.value_and_grad(objective, has_aux=True)(w, kept)
  _close(loss, loss_kept)
  _close(grad, grad_kept)
  _close(aux.accuracy, aux_kept.accuracy)
  assert float(aux.count) == 6.0
  _close(aux.per_example[~mask], [0.0, 0.0])


def test_masked_rows_with_nan_logits_give_zero_gradient():
  logits = jnp.asarray(_rng("nan").normal(size=(4, 3)), jnp.float32).at[1].set(jnp.nan)
  batch = {"inputs": None, "labels": jnp.array([0, -1, 2, 1]), "mask": jnp.array([True, False, True, True])}
  objective = Objective(jaxdiv.cross_entropy, lambda z, _: z)
  (loss, _), grad = jax.value_and_grad(objective, has_aux=True)(logits, batch)
  assert np.isfinite(float(loss))
  assert np.all(np.isfinite(np.asarray(grad))) and np.all(np.asarray(grad[1]) == 0.0)


def test_all_masked_batch_gives_zero_loss_and_zero_gradient():
  w, batch = _batch("all masked")
  batch = dict(batch, mask=jnp.zeros(8, bool))
  for loss in (jaxdiv.cross_entropy, lambda z, y, where=None: jaxdiv.cross_entropy(z, y, where=where)):
    (value, aux), grad = jax.value_and_grad(Objective(loss, _linear), has_aux=True)(w, batch)
    assert float(value) == 0.0 and float(aux.accuracy) == 0.0 and float(aux.count) == 0.0
    assert np.all(np.asarray(grad) == 0.0)


def test_class_mask_from_batch_reaches_the_loss_and_the_accuracy():
  w, batch = _batch("where")
  where = jnp.array([True, False, True, True])
  loss, aux = Objective(jaxdiv.cross_entropy, _linear)(w, dict(batch, where=where))
  logits = batch["inputs"] @ w
  full_where = jnp.broadcast_to(where, logits.shape)
  _close(loss, jnp.mean(jaxdiv.cross_entropy(logits, batch["labels"], where=full_where)))
  predicted = jnp.argmax(jnp.where(where, logits, -jnp.inf), -1)
  _close(aux.accuracy, jnp.mean((predicted == batch["labels"]).astype(jnp.float32)))


def test_a_custom_loss_without_reduction_is_averaged_over_unmasked_examples():
  w, batch = _batch("custom")
  mask = jnp.array([True] * 5 + [False] * 3)

  def squared_margin(logits, labels, where=None):
    del where
    return jnp.sum(logits**2, -1) - jnp.take_along_axis(logits, labels[:, None], -1)[:, 0]

  for reduction, expected in (("mean", np.mean), ("sum", np.sum)):
    loss, _ = Objective(squared_margin, _linear, reduction=reduction)(w, dict(batch, mask=mask))
    per = squared_margin(batch["inputs"] @ w, batch["labels"])
    _close(loss, expected(np.asarray(per)[:5]), rtol=1e-5)


def test_ignore_index_and_class_weights_keep_the_loss_semantics():
  w, batch = _batch("ignore")
  labels = batch["labels"].at[:2].set(-100)
  weights = jnp.array([1.0, 2.0, 0.5, 1.0])
  kwargs = {"ignore_index": -100, "class_weights": weights}
  loss, aux = Objective(jaxdiv.cross_entropy, _linear, loss_kwargs=kwargs)(w, dict(batch, labels=labels))
  logits = batch["inputs"] @ w
  _close(loss, jaxdiv.cross_entropy(logits, labels, reduction="mean", **kwargs))
  assert float(aux.count) == 6.0  # ignored labels are not counted by the accuracy


def test_return_aux_reports_the_z_loss_and_extra_metrics():
  w, batch = _batch("aux")
  kl = functools.partial(jaxdiv.kl_divergence_with_log_targets)
  objective = Objective(jaxdiv.cross_entropy, _linear, loss_kwargs={"z_loss": 1e-2}, return_aux=True,
                        metrics={"entropy": lambda z, y: jaxdiv.entropy(z)})
  _, aux = objective(w, batch)
  logits = batch["inputs"] @ w
  _, parts = jaxdiv.cross_entropy(logits, batch["labels"], z_loss=1e-2, reduction="mean", return_aux=True)
  _close(aux.metrics["z_loss"], parts["z_loss"])
  _close(aux.metrics["entropy"], jnp.mean(jaxdiv.entropy(logits)))
  assert callable(kl)


def test_distillation_with_labels_from_the_batch():
  w, batch = _batch("distill")
  teacher = jnp.asarray(_rng("teacher").normal(size=(8, 4)), jnp.float32)
  objective = Objective(jaxdiv.distillation_loss, _linear, target_key="teacher_logits", labels_key="labels",
                        loss_kwargs={"temperature": 2.0, "alpha": 0.3}, batch_kwargs={"labels": "labels"})
  loss, aux = objective(w, dict(batch, teacher_logits=teacher))
  logits = batch["inputs"] @ w
  expected = jaxdiv.distillation_loss(logits, teacher, temperature=2.0, alpha=0.3, labels=batch["labels"],
                                      reduction="mean")
  _close(loss, expected)
  _close(aux.accuracy, jnp.mean((jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)))


def test_soft_targets_accuracy_uses_the_target_argmax():
  w, batch = _batch("soft")
  probs = jax.nn.one_hot(batch["labels"], 4)
  _, soft = Objective(jaxdiv.soft_cross_entropy, _linear)(w, dict(batch, labels=probs))
  _, hard = Objective(jaxdiv.cross_entropy, _linear)(w, batch)
  _close(soft.accuracy, hard.accuracy)


def test_errors_are_clear():
  w, batch = _batch("errors")
  with pytest.raises(KeyError, match="batch has no 'inputs' entry"):
    Objective(jaxdiv.cross_entropy, _linear)(w, {"labels": batch["labels"]})
  with pytest.raises(ValueError, match=r"batch\['mask'\] must be a boolean per-example mask of shape \[8\]"):
    Objective(jaxdiv.cross_entropy, _linear)(w, dict(batch, mask=jnp.ones((8, 4), bool)))
  with pytest.raises(TypeError, match="takes no `where`"):
    Objective(lambda z, y: jnp.sum(z, -1), _linear)(w, dict(batch, mask=jnp.ones(8, bool)))
  with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
    Objective(jaxdiv.cross_entropy, _linear, reduction="none")
  with pytest.raises(ValueError,
                     match=r"batch\['where'\] must be broadcastable to the logits shape \[8, 4\]; got \[3\]"):
    Objective(jaxdiv.cross_entropy, _linear)(w, dict(batch, where=jnp.ones(3, bool)))


def test_ignore_index_from_a_partial_is_not_counted():
  # Regression (issue 13): ignore_index given through functools.partial was invisible to the
  # accuracy's count, so ignored rows counted as examples.
  w, batch = _batch("partial ignore")
  labels = batch["labels"].at[:3].set(-100)
  batch = dict(batch, labels=labels)
  partial = Objective(functools.partial(jaxdiv.cross_entropy, ignore_index=-100), _linear)
  direct = Objective(jaxdiv.cross_entropy, _linear, loss_kwargs={"ignore_index": -100})
  (loss_p, aux_p), (loss_d, aux_d) = partial(w, batch), direct(w, batch)
  assert float(aux_p.count) == float(aux_d.count) == 5.0
  _close(aux_p.accuracy, aux_d.accuracy)
  _close(loss_p, loss_d)
  # From the batch too, through batch_kwargs.
  from_batch = Objective(jaxdiv.cross_entropy, _linear, batch_kwargs={"ignore_index": "ignore"})
  assert float(from_batch(w, dict(batch, ignore=-100))[1].count) == 5.0


@pytest.mark.parametrize("normalizer, error, message", [
    ("2", TypeError, r"batch\['normalizer'\] must be an integer or floating scalar .*got '2' of type str"),
    (True, TypeError, r"batch\['normalizer'\] must be an integer or floating scalar .*got True of type bool"),
    (jnp.ones(2), ValueError, r"batch\['normalizer'\] must be .*; got shape \[2\]"),
    (jnp.array(True), TypeError, r"batch\['normalizer'\] must be .*; got bool\[\]"),
])
def test_bad_normalizer_errors_name_the_argument(normalizer, error, message):
  w, batch = _batch("normalizer")
  with pytest.raises(error, match=message):
    Objective(jaxdiv.cross_entropy, _linear)(w, dict(batch, normalizer=normalizer))
  with pytest.raises(error, match=message.replace(r"batch\['normalizer'\]", r"loss_kwargs\['normalizer'\]")):
    Objective(jaxdiv.cross_entropy, _linear, loss_kwargs={"normalizer": normalizer})


def test_a_numeric_normalizer_from_the_batch_divides_the_sum():
  w, batch = _batch("normalizer ok")
  loss, _ = jax.jit(Objective(jaxdiv.cross_entropy, _linear))(w, dict(batch, normalizer=jnp.float32(16.0)))
  _close(loss, jnp.sum(jaxdiv.cross_entropy(batch["inputs"] @ w, batch["labels"])) / 16.0)


# Model state and randomness: objective(params, batch, state=..., rng=...)


def _stateful(w, x, *, state, rng=None):
  """A linear model whose state counts its calls and tracks the inputs' running mean; dropout with ``rng``."""
  if rng is not None:
    x = jnp.where(jax.random.bernoulli(rng, 0.5, x.shape), 2.0 * x, 0.0)
  new_state = {"calls": state["calls"] + 1, "mean": 0.5 * state["mean"] + 0.5 * jnp.mean(x, axis=0)}
  return x @ w, new_state


def test_state_goes_in_and_the_new_state_comes_out_in_aux():
  w, batch = _batch("state")
  state = {"calls": jnp.int32(0), "mean": jnp.zeros(5, jnp.float32)}
  objective = Objective(jaxdiv.cross_entropy, _stateful)
  (loss, aux), grad = jax.jit(jax.value_and_grad(objective, has_aux=True))(w, batch, state=state)
  assert int(aux.state["calls"]) == 1
  _close(aux.state["mean"], 0.5 * jnp.mean(batch["inputs"], axis=0))
  plain = Objective(jaxdiv.cross_entropy, _linear)
  (loss_plain, aux_plain), grad_plain = jax.value_and_grad(plain, has_aux=True)(w, batch)
  _close(loss, loss_plain)
  _close(grad, grad_plain)
  assert aux_plain.state is None
  _, aux = objective(w, batch, state=aux.state)  # threads through a second step
  assert int(aux.state["calls"]) == 2
  _close(objective.value_fn(batch, state=state)(w), loss_plain)


def test_rng_reaches_apply_fn_and_each_key_gives_its_own_dropout_mask():
  w, batch = _batch("rng")
  state = {"calls": jnp.int32(0), "mean": jnp.zeros(5, jnp.float32)}
  objective = jax.jit(Objective(jaxdiv.cross_entropy, _stateful))
  key = jax.random.key(7)
  loss_a, _ = objective(w, batch, state=state, rng=key)
  loss_b, _ = objective(w, batch, state=state, rng=key)
  loss_c, _ = objective(w, batch, state=state, rng=jax.random.key(8))
  keep = jax.random.bernoulli(key, 0.5, batch["inputs"].shape)
  expected = jnp.mean(jaxdiv.cross_entropy(jnp.where(keep, 2.0 * batch["inputs"], 0.0) @ w, batch["labels"]))
  _close(loss_a, expected)
  assert float(loss_a) == float(loss_b) != float(loss_c)
  dropout = lambda w, x, *, rng: _stateful(w, x, state=state, rng=rng)[0]
  dropout_only = Objective(jaxdiv.cross_entropy, dropout)
  _close(dropout_only.value_fn(batch, rng=key)(w), expected)


# What apply_fn returned, and the message naming it.
_LOGITS = jnp.zeros((8, 4), jnp.float32)
_BAD_OUTPUTS = [
    # A linen apply with mutable=[...], called without state: the cryptic "entry not a 2- or 3- tuple" before.
    ((_LOGITS, {"batch_stats": {}}), None,
     r"apply_fn's output must be logits, a floating array of shape \[\.\.\., num_classes\]; got a tuple of 2 "
     r"\(float32\[8, 4\], a dict with keys \['batch_stats'\]\)\. If the model also returns its new state .*"
     r"objective\(params, batch, state=state\)"),
    ({"logits": _LOGITS}, None, r"apply_fn's output must be logits.*; got a dict with keys \['logits'\]\.$"),
    (jnp.zeros((8, 4), jnp.int32), None,
     r"apply_fn's output must be logits, a floating array.*; got int32\[8, 4\]"),
    (jnp.float32(0.0), None, r"apply_fn's output must be logits.*; got float32\[\]"),
    (_LOGITS, {},
     r"With state=\.\.\., apply_fn must return the pair \(logits, new_state\); got float32\[8, 4\]"),
    ((_LOGITS, {}, {}), {}, r"must return the pair \(logits, new_state\); got a tuple of 3"),
    (({"logits": _LOGITS}, {}), {},
     r"apply_fn's logits \(the first of \(logits, new_state\)\) must be logits.*"
     r"got a dict with keys \['logits'\]"),
]


@pytest.mark.parametrize("output, state, message", _BAD_OUTPUTS)
def test_apply_fn_output_that_is_not_logits_is_a_clear_error(output, state, message):
  _, batch = _batch("bad output")
  apply_fn = (lambda p, x: output) if state is None else (lambda p, x, *, state: output)
  with pytest.raises(TypeError, match=message):
    Objective(jaxdiv.cross_entropy, apply_fn)(None, batch, state=state)


def test_state_and_rng_keywords_are_checked_against_apply_fn():
  w, batch = _batch("keywords")
  with pytest.raises(TypeError, match=r"called with rng= but apply_fn .* takes no `rng` keyword; "
                                      r"define it as apply_fn\(params, inputs, \*, rng, \.\.\.\)"):
    Objective(jaxdiv.cross_entropy, _linear)(w, batch, rng=jax.random.key(0))
  with pytest.raises(TypeError, match=r"called with state= but apply_fn .* takes no `state` keyword"):
    Objective(jaxdiv.cross_entropy, _linear)(w, batch, state={})
  with pytest.raises(TypeError, match=r"requires `state`; call the objective with the model's state: "
                                      r"objective\(params, batch, state=state\)"):
    Objective(jaxdiv.cross_entropy, _stateful)(w, batch)
  with pytest.raises(TypeError, match=r"requires `rng`; call the objective with a new jax.random key"):
    Objective(jaxdiv.cross_entropy, lambda w, x, *, rng: x @ w)(w, batch)
  # Haiku's apply(params, state, rng, x) passed as it is: the inputs would land in `state`.
  with pytest.raises(TypeError, match=r"takes `state` as its second argument, where the objective passes the "
                                      r"inputs; wrap it .* transformed\.apply\(p, state, rng, x\)"):
    Objective(jaxdiv.cross_entropy, lambda p, state, rng, x: x @ p)(w, batch, state={})
  # **kwargs accepts both.
  loss, _ = Objective(jaxdiv.cross_entropy, lambda w, x, **kw: x @ w)(w, batch, rng=jax.random.key(0))
  _close(loss, Objective(jaxdiv.cross_entropy, _linear)(w, batch)[0])
