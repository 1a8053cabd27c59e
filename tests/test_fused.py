"""Fused linear losses against the materialised computation (``hidden @ weight + bias`` then the loss).

Values and gradients w.r.t. hidden, weight and bias must agree to 1e-6
relative in float32 in both schedules, with every training option; bf16
inputs must give the float32 result of the upcast inputs; the compiled
temporaries must stay below the size of the logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiv
import reference as ref
from jaxdiv import _fused

N, D, V = 48, 16, 384
MODES = ["fast", "low_memory"]


def _inputs(seed: int, n: int = N, d: int = D, vocab: int = V, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  h = jnp.asarray(rng.normal(size=(n, d)), dtype)
  w = jnp.asarray(rng.normal(size=(d, vocab)) * 0.5, dtype)
  b = jnp.asarray(rng.normal(size=(vocab,)), dtype)
  y = jnp.asarray(rng.integers(0, vocab, size=n), jnp.int32)
  return h, w, b, y


def _logits(h, w, b):
  return h.astype(jnp.float32) @ w.astype(jnp.float32) + b.astype(jnp.float32)[None, :]


def _assert_close(got, want, rtol=1e-6):
  """Normwise: every element within ``rtol`` times the largest magnitude of ``want``."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape
  scale = max(float(np.max(np.abs(want))), 1e-30) if want.size else 1.0
  np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


CE_OPTIONS = {
    "plain": {},
    "ignore_sum": {"ignore_index": -100, "reduction": "sum"},
    "all_options": {"ignore_index": -100, "label_smoothing": 0.1, "z_loss": 1e-3, "soft_cap": 4.0},
    "class_weights_batchmean": {"class_weights": "random", "reduction": "batchmean"},
    "normalizer": {"ignore_index": -100, "reduction": "mean", "normalizer": 100.0},
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("option", sorted(CE_OPTIONS))
def test_cross_entropy_value_and_gradients_match_materialised(mode, option):
  h, w, b, y = _inputs(1)
  kw = dict(CE_OPTIONS[option])
  if kw.get("class_weights") == "random":
    kw["class_weights"] = jnp.asarray(np.random.default_rng(2).uniform(0.5, 2.0, size=V), jnp.float32)
  kw.setdefault("reduction", "mean")
  if "ignore_index" in kw:
    y = y.at[::5].set(-100)

  def materialised(h, w, b):
    return jaxdiv.cross_entropy(_logits(h, w, b), y, **kw)

  def fused(h, w, b):
    return jaxdiv.fused_linear_cross_entropy(
        h, w, y, bias=b, mode=mode, token_block=20, vocab_block=100, **kw)

  want, want_grads = jax.value_and_grad(materialised, (0, 1, 2))(h, w, b)
  got, grads = jax.jit(jax.value_and_grad(fused, (0, 1, 2)))(h, w, b)
  assert got.dtype == jnp.float32
  _assert_close(got, want)
  for g, gw, x in zip(grads, want_grads, (h, w, b)):
    assert g.dtype == x.dtype
    _assert_close(g, gw)


def test_per_token_losses_lse_and_arbitrary_cotangents_match():
  h, w, b, y = _inputs(3)
  kw = {"label_smoothing": 0.2, "z_loss": 1e-2, "soft_cap": 3.0, "ignore_index": 7}
  y = y.at[:4].set(7)
  cot = jnp.asarray(np.random.default_rng(4).normal(size=N), jnp.float32)

  def materialised(h, w, b):
    return jaxdiv.cross_entropy(_logits(h, w, b), y, reduction="none", **kw)

  def fused(h, w, b):
    return jaxdiv.fused_linear_cross_entropy(
        h, w, y, bias=b, reduction="none", return_lse=True, vocab_block=64, **kw)

  want, want_vjp = jax.vjp(materialised, h, w, b)

  @jax.jit
  def fused_and_vjp(h, w, b):
    (got, lse), vjp = jax.vjp(fused, h, w, b)
    return got, lse, vjp((cot, jnp.zeros_like(lse)))

  got, lse, grads = fused_and_vjp(h, w, b)
  _assert_close(got, want)
  assert np.all(np.asarray(got)[:4] == 0)
  capped = 3.0 * jnp.tanh(_logits(h, w, b) / 3.0)
  _assert_close(lse, jax.nn.logsumexp(capped, axis=1))
  for g, gw in zip(grads, want_vjp(cot)):
    _assert_close(g, gw)


@pytest.mark.parametrize("mode", MODES)
def test_shift_labels_predicts_the_next_token_without_slicing_hidden(mode):
  rng = np.random.default_rng(5)
  h = jnp.asarray(rng.normal(size=(3, 10, D)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
  y = jnp.asarray(rng.integers(0, V, size=(3, 10)), jnp.int32)

  def materialised(h, w):
    return jaxdiv.cross_entropy(h[:, :-1] @ w, y[:, 1:], reduction="mean")

  def fused(h, w):
    return jaxdiv.fused_linear_cross_entropy(
        h, w, y, shift_labels=True, mode=mode, token_block=8, vocab_block=128)

  want, want_grads = jax.value_and_grad(materialised, (0, 1))(h, w)
  got, grads = jax.jit(jax.value_and_grad(fused, (0, 1)))(h, w)
  _assert_close(got, want)
  for g, gw in zip(grads, want_grads):
    _assert_close(g, gw)
  per_token = jaxdiv.fused_linear_cross_entropy(h, w, y, shift_labels=True, reduction="none")
  assert per_token.shape == (3, 10) and np.all(np.asarray(per_token)[:, -1] == 0)


@pytest.mark.parametrize("mode", MODES)
def test_bfloat16_inputs_give_the_float32_result_of_the_upcast_inputs(mode):
  h, w, b, y = _inputs(6, dtype=jnp.bfloat16)

  def fused(h, w, b):
    return jaxdiv.fused_linear_cross_entropy(h, w, y, bias=b, mode=mode, token_block=16, vocab_block=128)

  def reference(h, w, b):
    return jaxdiv.cross_entropy(_logits(h, w, b), y, reduction="mean")

  got, grads = jax.jit(jax.value_and_grad(fused, (0, 1, 2)))(h, w, b)
  f32 = [x.astype(jnp.float32) for x in (h, w, b)]
  want, want_grads = jax.value_and_grad(reference, (0, 1, 2))(*f32)
  assert got.dtype == jnp.float32
  _assert_close(got, want)
  for g, gw in zip(grads, want_grads):
    assert g.dtype == jnp.bfloat16
    # The float32 gradient, rounded once to bfloat16 (8 bits of mantissa).
    _assert_close(g.astype(jnp.float32), gw, rtol=2 ** -8)


def test_float64_matches_the_numpy_reference():
  with jax.enable_x64(True):
    h, w, b, y = _inputs(7, dtype=jnp.float64)
    want = ref.cross_entropy(np.asarray(h) @ np.asarray(w) + np.asarray(b), np.asarray(y))
    per_token = jax.jit(
        lambda h: jaxdiv.fused_linear_cross_entropy(h, w, y, bias=b, reduction="none", vocab_block=100))(h)
    assert per_token.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(per_token), want, rtol=1e-12)
    total = jax.jit(lambda h: jaxdiv.fused_linear_cross_entropy(
        h, w, y, bias=b, mode="fast", reduction="sum", token_block=20))(h)
    np.testing.assert_allclose(float(total), np.sum(want), rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_edge_cases_out_of_range_label_all_ignored_and_masked_class(mode):
  h, w, b, y = _inputs(8)
  # A bias of -inf masks class 3 (its logit is -inf in every row): finite loss, zero gradient there.
  b = b.at[3].set(-jnp.inf)
  y = jnp.where(y == 3, 4, y)
  loss, grads = jax.jit(jax.value_and_grad(
      lambda h, w, b: jaxdiv.fused_linear_cross_entropy(h, w, y, bias=b, mode=mode, vocab_block=64), (0, 1, 2)
  ))(h, w, b)
  want = jaxdiv.cross_entropy(_logits(h, w, b), y, reduction="mean")
  _assert_close(loss, want)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
  assert float(grads[2][3]) == 0.0
  # An out-of-range label: NaN loss, zero gradient (as jaxdiv.cross_entropy).
  bad = y.at[0].set(V + 5)
  per_token, vjp = jax.vjp(lambda h: jaxdiv.fused_linear_cross_entropy(h, w, bad, reduction="none"), h)
  assert np.isnan(per_token[0]) and np.all(np.isfinite(np.asarray(per_token[1:])))
  assert np.all(np.asarray(vjp(jnp.ones(N, jnp.float32))[0][0]) == 0)  # eager: jit is covered above
  # Every label ignored: 0 with zero gradient, never NaN.
  ignored = jnp.full((N,), -100, jnp.int32)
  value, g = jax.jit(jax.value_and_grad(
      lambda h: jaxdiv.fused_linear_cross_entropy(h, w, ignored, ignore_index=-100, mode=mode)
  ))(h)
  assert float(value) == 0.0 and np.all(np.asarray(g) == 0)


@pytest.mark.parametrize("mode", MODES)
def test_vmap_over_batches_with_a_shared_weight(mode):
  rng = np.random.default_rng(9)
  hs = jnp.asarray(rng.normal(size=(3, 32, D)), jnp.float32)
  ys = jnp.asarray(rng.integers(0, V, size=(3, 32)), jnp.int32)
  w = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
  f = lambda h, y, w: jaxdiv.fused_linear_cross_entropy(h, w, y, mode=mode, token_block=16, vocab_block=128)
  got, grads = jax.jit(jax.vmap(jax.value_and_grad(f, (0, 2)), in_axes=(0, 0, None)))(hs, ys, w)
  for i in range(3):
    materialised = lambda h, w, y=ys[i]: jaxdiv.cross_entropy(h @ w, y, reduction="mean")
    want, want_grads = jax.value_and_grad(materialised, (0, 1))(hs[i], w)
    _assert_close(got[i], want)
    _assert_close(grads[0][i], want_grads[0])
    _assert_close(grads[1][i], want_grads[1])


def test_forward_mode_raises_jax_custom_vjp_error():
  h, w, _, y = _inputs(10)
  with pytest.raises(TypeError, match="forward-mode"):
    jax.jacfwd(lambda h: jaxdiv.fused_linear_cross_entropy(h, w, y))(h)


def test_auto_mode_and_argument_errors():
  assert _fused.choose_mode("auto", "mean", 4096, 1024) == "fast"
  assert _fused.choose_mode("auto", "mean", 512, 1024) == "low_memory"
  assert _fused.choose_mode("auto", "none", 4096, 1024) == "low_memory"
  h, w, b, y = _inputs(11)
  with pytest.raises(ValueError, match="mode='fast' .* needs a scalar loss"):
    jaxdiv.fused_linear_cross_entropy(h, w, y, mode="fast", reduction="none")
  with pytest.raises(ValueError, match=r"weight must have shape \[D, V\] with D = hidden.shape\[-1\] = 16"):
    jaxdiv.fused_linear_cross_entropy(h, w.T, y)
  with pytest.raises(ValueError, match=r"bias must have shape \[V\] = \[384\]"):
    jaxdiv.fused_linear_cross_entropy(h, w, y, bias=b[:-1])
  for bad_labels in (lambda: jaxdiv.fused_linear_cross_entropy(h, w, y[:-1]),
                     lambda: jaxdiv.fused_linear_distillation(h, w, h @ w, labels=y[:-1])):
    with pytest.raises(ValueError, match="labels must have the shape of hidden without its last axis"):
      bad_labels()
  with pytest.raises(TypeError, match="labels must be an integer array"):
    jaxdiv.fused_linear_cross_entropy(h, w, y.astype(jnp.float32))
  with pytest.raises(ValueError, match="mode must be one of"):
    jaxdiv.fused_linear_cross_entropy(h, w, y, mode="quick")
  with pytest.raises(ValueError, match="vocab_block must be a positive int"):
    jaxdiv.fused_linear_cross_entropy(h, w, y, mode="low_memory", vocab_block=0)
  with pytest.raises(ValueError, match="label_smoothing must lie in"):
    jaxdiv.fused_linear_cross_entropy(h, w, y, label_smoothing=1.5)
  with pytest.raises(ValueError, match="divergence must be one of"):
    jaxdiv.fused_linear_distillation(h, w, _logits(h, w, b), divergence="tvd")
  with pytest.raises(ValueError, match=r"teacher logits must have shape \[48, 384\]"):
    jaxdiv.fused_linear_distillation(h, w, _logits(h, w, b)[:, :-1])


def test_compiled_temporaries_stay_below_the_logits():
  """Structural memory check: neither schedule allocates anything of the size of the [N, V] logits."""
  n, d, vocab = 256, 32, 8192
  h, w, _, y = _inputs(12, n, d, vocab)
  logits_bytes = n * vocab * 4

  def temp_bytes(f):
    return jax.jit(jax.value_and_grad(f, (0, 1))).lower(h, w).compile().memory_analysis().temp_size_in_bytes

  naive = temp_bytes(lambda h, w: jaxdiv.cross_entropy(h @ w, y, reduction="mean"))
  low = temp_bytes(
      lambda h, w: jaxdiv.fused_linear_cross_entropy(h, w, y, mode="low_memory", vocab_block=256))
  fast = temp_bytes(lambda h, w: jaxdiv.fused_linear_cross_entropy(h, w, y, mode="fast", token_block=16))
  assert naive >= logits_bytes
  assert low <= logits_bytes // 8, (low, logits_bytes)
  # fast: the [D, V] weight-gradient accumulator plus a few [16, V] blocks.
  assert fast <= d * vocab * 4 + 8 * 16 * vocab * 4, (fast, d * vocab * 4)


DIVERGENCES = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("divergence,beta", DIVERGENCES)
def test_distillation_from_teacher_logits_matches_materialised(mode, divergence, beta):
  h, w, b, _ = _inputs(13)
  t = jnp.asarray(np.random.default_rng(14).normal(size=(N, V)) * 1.5, jnp.float32)
  where = jnp.asarray(np.random.default_rng(15).uniform(size=N) > 0.2)
  temp = 2.0
  row = {
      "forward_kl": jaxdiv.kl_divergence_with_log_targets,
      "reverse_kl": jaxdiv.reverse_kl_divergence,
      "jsd": lambda z, t: jaxdiv.jensen_shannon_divergence(z, t, beta=beta),
  }[divergence]

  def materialised(h, w, b):
    per_token = row(_logits(h, w, b) / temp, t / temp)
    return jnp.sum(jnp.where(where, per_token, 0)) / jnp.sum(where.astype(jnp.float32))

  def fused(h, w, b):
    return jaxdiv.fused_linear_distillation(
        h, w, t, bias=b, divergence=divergence, beta=beta, temperature=temp, token_mask=where, mode=mode,
        token_block=20, vocab_block=100)

  want, want_grads = jax.value_and_grad(materialised, (0, 1, 2))(h, w, b)
  got, grads = jax.jit(jax.value_and_grad(fused, (0, 1, 2)))(h, w, b)
  _assert_close(got, want)
  # The vocabulary schedule sums the weight gradient block by block, in another order than the
  # materialised loss: a few float32 roundings of the largest entry.
  for g, gw in zip(grads, want_grads):
    _assert_close(g, gw, rtol=1e-6 if mode == "fast" else 3e-6)


@pytest.mark.parametrize("mode", MODES)
def test_distillation_from_teacher_hidden_states_gives_the_teacher_no_gradient(mode):
  h, w, b, _ = _inputs(16)
  th, tw, tb, _ = _inputs(17, d=8)

  def fused(h, w, th, tw):
    return jaxdiv.fused_linear_distillation(
        h, w, th, bias=b, teacher_weight=tw, teacher_bias=tb, divergence="forward_kl", mode=mode,
        reduction="sum", token_block=20, vocab_block=100)

  def materialised(h, w):
    return jnp.sum(jaxdiv.kl_divergence_with_log_targets(_logits(h, w, b), _logits(th, tw, tb)))

  got, grads = jax.jit(jax.value_and_grad(fused, (0, 1, 2, 3)))(h, w, th, tw)
  want, want_grads = jax.value_and_grad(materialised, (0, 1))(h, w)
  _assert_close(got, want)
  _assert_close(grads[0], want_grads[0])
  _assert_close(grads[1], want_grads[1])
  assert np.all(np.asarray(grads[2]) == 0) and np.all(np.asarray(grads[3]) == 0)
  per_token = jaxdiv.fused_linear_distillation(
      h, w, th, bias=b, teacher_weight=tw, teacher_bias=tb, reduction="none", mode="low_memory")
  _assert_close(per_token, jaxdiv.kl_divergence_with_log_targets(_logits(h, w, b), _logits(th, tw, tb)))


def test_distillation_under_vmap_and_its_forward_mode_error():
  rng = np.random.default_rng(18)
  hs = jnp.asarray(rng.normal(size=(2, 24, D)), jnp.float32)
  ts = jnp.asarray(rng.normal(size=(2, 24, V)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(D, V)) * 0.5, jnp.float32)
  f = lambda h, t: jaxdiv.fused_linear_distillation(
      h, w, t, divergence="reverse_kl", reduction="none", vocab_block=100)
  got = jax.jit(jax.vmap(f))(hs, ts)
  for i in range(2):
    _assert_close(got[i], jaxdiv.reverse_kl_divergence(hs[i] @ w, ts[i]))
  with pytest.raises(TypeError, match="forward-mode"):
    jax.jacfwd(lambda h: jaxdiv.fused_linear_distillation(h, w, ts[0]))(hs[0])


# --------------------------------------------------------------------------- #
# The options of the materialised losses, on the fused ones
# --------------------------------------------------------------------------- #


def _options_problem():
  rng = np.random.default_rng(7)
  n, d, vocab = 12, 6, 40
  h = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(d, vocab)), jnp.float32)
  t = jnp.asarray(rng.normal(size=(n, vocab)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 35, size=n), jnp.int32).at[::4].set(-100)
  classes = jnp.arange(vocab) < 35  # a class mask: the padded vocabulary
  tokens = jnp.arange(n) % 3 != 0
  weights = jnp.asarray(rng.uniform(0.5, 2.0, size=n), jnp.float32)
  return h, w, t, y, classes, tokens, weights


@pytest.mark.parametrize("mode", ["fast", "low_memory"])
def test_fused_cross_entropy_takes_a_class_mask_token_weights_a_token_mask_and_side_outputs(mode):
  h, w, _, y, classes, tokens, weights = _options_problem()
  kw = {"label_smoothing": 0.1, "z_loss": 1e-3, "ignore_index": -100}
  loss, aux = jaxdiv.fused_linear_cross_entropy(
      h, w, y, where=classes, weights=weights, token_mask=tokens, return_aux=True, mode=mode, **kw)
  class_mask = jnp.broadcast_to(classes, (12, 40))
  per_example = jaxdiv.cross_entropy(h @ w, y, where=class_mask, **kw)
  counted = tokens & (y != -100)
  counted_weight = jnp.sum(jnp.where(counted, weights, 0))
  want = jnp.sum(jnp.where(counted, weights * per_example, 0)) / counted_weight
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  _, want_aux = jaxdiv.cross_entropy(h @ w, y, where=class_mask, return_aux=True, **kw)
  del want_aux
  lse = jax.nn.logsumexp(jnp.where(classes, h @ w, -jnp.inf), axis=1)
  np.testing.assert_allclose(aux["logsumexp"], jnp.sum(jnp.where(counted, weights * lse, 0)) /
                             counted_weight, rtol=1e-6)
  np.testing.assert_allclose(aux["z_loss"], jnp.sum(jnp.where(counted, weights * 1e-3 * lse**2, 0)) /
                             counted_weight, rtol=1e-6)
  grad = jax.grad(lambda h: jaxdiv.fused_linear_cross_entropy(
      h, w, y, where=classes, weights=weights, token_mask=tokens, mode=mode, **kw))(h)
  want_grad = jax.grad(lambda h: jnp.sum(jnp.where(counted, weights * jaxdiv.cross_entropy(
      h @ w, y, where=class_mask, **kw), 0)) / counted_weight)(h)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode, reduction", [("fast", "mean"), ("fast", "sum"), ("low_memory", "mean"),
                                             ("low_memory", "sum"), ("low_memory", "none")])
def test_fused_distillation_has_the_hard_label_term_and_the_temperature_scale_of_distillation_loss(
    mode, reduction):
  h, w, t, y, classes, tokens, weights = _options_problem()
  kw = {"temperature": 2.0, "divergence": "jsd", "beta": 0.3}
  got = jaxdiv.fused_linear_distillation(
      h, w, t, labels=y, alpha=0.3, ignore_index=-100, scale_by_temperature_squared=True, where=classes,
      token_mask=tokens, weights=weights, mode=mode, reduction=reduction, **kw)
  per_example = jaxdiv.distillation_loss(
      h @ w, t, labels=y, alpha=0.3, ignore_index=-100,
      where=jnp.broadcast_to(classes, (12, 40)) & tokens[:, None], **kw)
  counted = tokens & (y != -100)
  if reduction == "none":
    want = jnp.where(counted, weights * per_example, 0)
  else:
    want = jnp.sum(weights * per_example)
    want = want / jnp.sum(jnp.where(counted, weights, 0)) if reduction == "mean" else want
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)


def test_a_token_shaped_where_in_fused_distillation_is_the_deprecated_token_mask():
  h, w, t, _, _, tokens, _ = _options_problem()
  with pytest.warns(DeprecationWarning, match="pass token_mask= instead"):
    old = jaxdiv.fused_linear_distillation(h, w, t, where=tokens)
  np.testing.assert_array_equal(old, jaxdiv.fused_linear_distillation(h, w, t, token_mask=tokens))


def test_fused_option_errors_name_the_argument():
  h, w, _, y, _, tokens, weights = _options_problem()
  with pytest.raises(ValueError, match=r"where masks classes and must be broadcastable to \[V\] = \[40\]"):
    jaxdiv.fused_linear_cross_entropy(h, w, y, where=jnp.ones((12, 40), bool))
  with pytest.raises(ValueError, match=r"weights must have the token shape \[12\]; got \[3\]"):
    jaxdiv.fused_linear_cross_entropy(h, w, y, weights=weights[:3])
  with pytest.raises(TypeError, match=r"token_mask must be a boolean mask; got float32\[12\]"):
    jaxdiv.fused_linear_cross_entropy(h, w, y, token_mask=weights)
  with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]; got 2.0\."):
    jaxdiv.fused_linear_distillation(h, w, h @ w, labels=y, alpha=2.0)
