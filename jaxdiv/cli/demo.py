"""``python -m jaxdiv demo``: train, distil and measure on bundled data, no downloads.

1. A teacher MLP learns scikit-learn's bundled 8x8 handwritten digits with
   :func:`jaxdiv.cross_entropy` (without label smoothing, which would erase
   the class similarities the student learns from; Müller et al., 2019).
2. A small student learns from only 128 labelled images twice: from the hard
   labels alone, and distilled from the teacher with
   :func:`jaxdiv.distillation_loss` (temperature, Hinton's T² scaling, a
   hard-label term); the same student trained on every label, with label smoothing, is the
   reference.
3. A table of test accuracies, then jaxdiv vs optax vs the float64 truth on
   the cases where optax fails (the ``selfcheck`` table).

Every model is plain JAX trained with optax through
:class:`jaxdiv.objective.Objective`. Needs the ``demo`` extra
(scikit-learn; tqdm for the progress bar).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxdiv
from jaxdiv.objective import Objective

_EXTRA_HINT = "The demo needs scikit-learn (for its bundled digits data): pip install 'jaxdiv[demo]'"

Params = list[dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Settings:
  teacher_epochs: int = 40
  student_epochs: int = 40  # on all the training images
  few_labels: int = 128  # the distillation comparison's labelled images
  few_label_epochs: int = 500  # 2 mini-batches each: soft targets need ~1000 steps to pay off
  batch_size: int = 64
  temperature: float = 4.0
  alpha: float = 0.3  # weight of the hard-label term in the distillation loss
  label_smoothing: float = 0.1
  vocab: int = 32768  # for the numerics table

  @classmethod
  def quick(cls) -> Settings:
    return cls(teacher_epochs=8, student_epochs=20, few_label_epochs=400, vocab=4096)


TEACHER, STUDENT = (64, 256, 256, 10), (64, 32, 10)


def load_digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Digits scaled to [0, 1], split 75/25 with a fixed permutation: (x_train, y_train, x_test, y_test)."""
  from sklearn.datasets import load_digits as sklearn_digits

  x, y = sklearn_digits(return_X_y=True)
  order = np.random.default_rng(seed).permutation(len(y))
  x, y = (x[order] / 16.0).astype(np.float32), y[order].astype(np.int32)
  n_train = int(0.75 * len(y))
  return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def init_mlp(key: jax.Array, sizes: tuple[int, ...]) -> Params:
  keys = jax.random.split(key, len(sizes) - 1)
  return [
      {"w": jax.random.normal(k, (m, n), jnp.float32) * np.float32(np.sqrt(2.0 / m)),
       "b": jnp.zeros(n, jnp.float32)}
      for k, m, n in zip(keys, sizes[:-1], sizes[1:])
  ]


def mlp(params: Params, x: jax.Array) -> jax.Array:
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"][None])
  return x @ params[-1]["w"] + params[-1]["b"][None]


def num_params(params: Params) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


def _progress(total: int, desc: str):
  try:
    from tqdm.auto import tqdm
  except ImportError:
    return _TextProgress(total, desc)
  return tqdm(total=total, desc=desc, unit="epoch", leave=True, file=sys.stderr, dynamic_ncols=True)


class _TextProgress:
  """Fallback progress bar when tqdm is not installed."""

  def __init__(self, total: int, desc: str):
    self.total, self.desc, self.n = total, desc, 0

  def update(self, n: int = 1) -> None:
    self.n += n
    filled = int(30 * self.n / self.total)
    sys.stderr.write(f"\r{self.desc}: [{'#' * filled}{'.' * (30 - filled)}] {self.n}/{self.total}")
    if self.n >= self.total:
      sys.stderr.write("\n")
    sys.stderr.flush()

  def set_postfix_str(self, text: str) -> None:
    del text

  def close(self) -> None:
    pass


def _batches(data: dict[str, np.ndarray], batch_size: int, rng: np.random.Generator) -> Iterator[dict]:
  n = len(data["labels"])
  order = rng.permutation(n)
  for start in range(0, n - batch_size + 1, batch_size):
    idx = order[start : start + batch_size]
    yield {k: jnp.asarray(v[idx]) for k, v in data.items()}


def train(
    objective: Objective,
    params: Params,
    data: dict[str, np.ndarray],
    *,
    epochs: int,
    batch_size: int,
    desc: str,
    seed: int = 0,
) -> Params:
  """Adam with cosine decay over ``epochs`` of shuffled mini-batches, with a progress bar."""
  steps = epochs * (len(data["labels"]) // batch_size)
  tx = optax.adamw(optax.cosine_decay_schedule(3e-3, steps), weight_decay=1e-4)

  @jax.jit
  def step(params, opt_state, batch):
    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux.accuracy

  opt_state = tx.init(params)
  rng = np.random.default_rng(seed)
  bar = _progress(epochs, desc)
  for _ in range(epochs):
    losses, accs = [], []
    for batch in _batches(data, batch_size, rng):
      params, opt_state, loss, acc = step(params, opt_state, batch)
      losses.append(loss)
      accs.append(acc)
    bar.set_postfix_str(f"loss {float(np.mean(losses)):.3f} train acc {float(np.mean(accs)):.1%}")
    bar.update(1)
  bar.close()
  return params


def accuracy(params: Params, x: np.ndarray, y: np.ndarray) -> float:
  return float(np.mean(np.asarray(jnp.argmax(mlp(params, jnp.asarray(x)), -1)) == y))


@dataclasses.dataclass
class Result:
  name: str
  recipe: str
  params: int
  test_accuracy: float


def run(settings: Settings, seed: int = 0) -> list[Result]:
  """Trains the teacher and both students; returns their test accuracies."""
  x_train, y_train, x_test, y_test = load_digits(seed)
  train_data = {"inputs": x_train, "labels": y_train}
  keys = jax.random.split(jax.random.key(seed), 3)

  teacher = train(Objective(jaxdiv.cross_entropy, mlp), init_mlp(keys[0], TEACHER), train_data,
                  epochs=settings.teacher_epochs,
                  batch_size=settings.batch_size, desc="teacher             ", seed=seed)

  smoothed = Objective(jaxdiv.cross_entropy, mlp, loss_kwargs={"label_smoothing": settings.label_smoothing})
  full = train(smoothed, init_mlp(keys[1], STUDENT), train_data,
               epochs=settings.student_epochs, batch_size=settings.batch_size, desc="student, all labels",
               seed=seed)

  few = {k: v[: settings.few_labels] for k, v in train_data.items()}
  hard = train(Objective(jaxdiv.cross_entropy, mlp), init_mlp(keys[2], STUDENT), few,
               epochs=settings.few_label_epochs, batch_size=settings.batch_size, desc="student, hard labels",
               seed=seed)
  distil_objective = Objective(
      jaxdiv.distillation_loss, mlp, target_key="teacher_logits", labels_key="labels",
      batch_kwargs={"labels": "labels"},
      loss_kwargs={"temperature": settings.temperature, "alpha": settings.alpha},
  )
  few["teacher_logits"] = np.asarray(mlp(teacher, jnp.asarray(few["inputs"])))
  distilled = train(distil_objective, init_mlp(keys[2], STUDENT), few, epochs=settings.few_label_epochs,
                    batch_size=settings.batch_size, desc="student, distilled  ", seed=seed)

  arch = "MLP " + "-".join(map(str, STUDENT))
  n_all, n_few = len(y_train), settings.few_labels
  return [
      Result("teacher", f"MLP {'-'.join(map(str, TEACHER))}, {n_all} labels, CE", num_params(teacher),
             accuracy(teacher, x_test, y_test)),
      Result("student", f"{arch}, {n_all} labels, CE + label smoothing {settings.label_smoothing:g}",
             num_params(full), accuracy(full, x_test, y_test)),
      Result("student", f"{arch}, {n_few} labels, CE on the hard labels only", num_params(hard),
             accuracy(hard, x_test, y_test)),
      Result("student", f"{arch}, {n_few} labels, distilled from the teacher (T={settings.temperature:g}, "
             f"T² scaling, α={settings.alpha:g})", num_params(distilled),
             accuracy(distilled, x_test, y_test)),
  ]


def accuracy_table(results: list[Result], n_train: int, n_test: int) -> str:
  width = max(len(r.recipe) for r in results)
  lines = [f"{'model':<8} {'recipe':<{width}} {'params':>8} {'test accuracy':>14}"]
  lines.append("-" * len(lines[0]))
  for r in results:
    lines.append(f"{r.name:<8} {r.recipe:<{width}} {r.params:>8,} {r.test_accuracy:>14.1%}")
  lines.append(f"(test accuracy on {n_test} held-out images of scikit-learn's bundled 8x8 digits; "
               f"{n_train} training images)")
  return "\n".join(lines)


def numerics_table(vocab: int) -> str:
  """jaxdiv vs optax vs the float64 truth, from ``python -m jaxdiv selfcheck``."""
  from jaxdiv.cli import report

  return report.table(report._rows(vocab))


def main(quick: bool = False, seed: int = 0, out: Callable[[str], Any] = print) -> int:
  """Runs the demo; returns 0, or 2 if the ``demo`` extra is missing."""
  try:
    import sklearn  # noqa: F401
  except ImportError:
    print(_EXTRA_HINT, file=sys.stderr)
    return 2
  settings = Settings.quick() if quick else Settings()
  start = time.perf_counter()
  out(f"jaxdiv {jaxdiv.__version__} demo (jax {jax.__version__}, optax {optax.__version__}, "
      f"{jax.default_backend()}){' --quick' if quick else ''}\n")
  results = run(settings, seed)
  x_train, _, x_test, _ = load_digits(seed)
  out("\nAccuracy\n")
  out(accuracy_table(results, len(x_train), len(x_test)))
  out(f"\nNumerics: jaxdiv vs optax vs the float64 truth (vocabulary {settings.vocab})\n")
  out(numerics_table(settings.vocab))
  out(f"\ndone in {time.perf_counter() - start:.0f} s")
  return 0
