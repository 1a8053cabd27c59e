"""jaxdiv's sharded losses on a multi-process JAX cluster, checked against one device.

Every process of a ``jax.distributed`` cluster runs this same program. It
builds one global mesh over the devices of all processes, feeds *its own*
rows of the batch (data parallelism: the tokens are split over the ``data``
mesh axis, one row of the mesh per process), and, under ``jax.jit``, computes
the value and the gradient of

* ``jaxdiv.vocab_parallel_fused_linear_cross_entropy`` (mesh ``data × vocab``:
  tokens over the processes, the unembedding's vocabulary over each process's
  devices),
* ``jaxdiv.vocab_parallel_kl_divergence`` (the same mesh, logits split along
  the vocabulary),
* ``jaxdiv.fused_linear_cross_entropy`` (a 1-D ``data`` mesh over all devices,
  hidden states sharded ``P("data", None)``; both fused schedules).

Each process then compares the global results with the materialised loss on
one of its own devices (``jaxdiv.cross_entropy(hidden @ weight, labels)``,
``jaxdiv.kl_divergence_with_log_targets``) to 1e-6 of the largest value, prints
one line per check and exits with status 0 only if all of them pass.

Run it on one machine (the script starts the processes itself, on 127.0.0.1,
each with 4 CPU devices and gloo collectives, and stops them after
``--timeout`` seconds)::

  python examples/multiprocess.py --num-processes 2

Run it on a cluster: start the same command on every machine, with the
address of process 0 and each machine's own index::

  python examples/multiprocess.py --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0
  python examples/multiprocess.py --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 1

``--cpu-devices 0`` leaves the platform to JAX (GPUs or TPUs on an accelerator
cluster) instead of simulating CPU devices.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

# Token count, hidden size and vocabulary: small, so that two processes compile and run in seconds on
# two CPU cores. N and V must be divisible by the devices of the axes that split them.
N, D, V = 64, 16, 256
RTOL = 1e-6
IGNORE = -100


# --------------------------------------------------------------------------- #
# One process of the cluster
# --------------------------------------------------------------------------- #


def _pin_gloo_to_loopback():
  """Make gloo bind to 127.0.0.1 rather than the address this machine's hostname resolves to.

  JAX has no public option for gloo's address, so this replaces the CPU
  backend factory with one whose gloo collectives are created for
  ``hostname="127.0.0.1"`` (private JAX API; used only by the local launcher).
  If that API has moved, it falls back to JAX's default when the hostname
  resolves to a loopback address, and refuses to run otherwise.
  """
  try:
    import functools

    from jax._src import distributed, xla_bridge
    from jax._src.lib import _jax

    collectives = _jax.make_gloo_tcp_collectives(
        distributed_client=distributed.global_state.client, hostname="127.0.0.1")
    factory = functools.partial(xla_bridge.make_cpu_client, collectives=collectives)
    xla_bridge.register_backend_factory("cpu", factory, priority=0, fail_quietly=False)
  except (ImportError, AttributeError, TypeError) as e:
    addresses = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    if not all(a.startswith("127.") or a == "::1" for a in addresses):
      raise RuntimeError(
          f"cannot pin gloo to 127.0.0.1 with this JAX ({e}); the hostname resolves to {sorted(addresses)}, "
          "so gloo would listen on another interface. Run on a cluster with --coordinator instead."
      ) from e


def _data(seed: int = 0):
  """The global batch, the same on every process (float32 NumPy; a few labels ignored)."""
  import numpy as np

  rng = np.random.default_rng(seed)
  hidden = rng.normal(size=(N, D)).astype(np.float32)
  weight = (rng.normal(size=(D, V)) / np.sqrt(D)).astype(np.float32)
  labels = rng.integers(0, V, size=N).astype(np.int32)
  labels[rng.choice(N, size=N // 8, replace=False)] = IGNORE
  logits = (2 * rng.normal(size=(N, V))).astype(np.float32)
  target_logits = (2 * rng.normal(size=(N, V))).astype(np.float32)
  # Per-token weights of the KL's gradient check, so that every token's gradient is distinct.
  token_weights = np.linspace(0.5, 1.5, N, dtype=np.float32)
  return hidden, weight, labels, logits, target_logits, token_weights


def _max_relative_error(got, want) -> float:
  """``max |got - want|`` over ``max |want|`` (the tests' criterion: relative to the largest value)."""
  import numpy as np

  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  if got.shape != want.shape:
    return float("inf")
  return float(np.max(np.abs(got - want), initial=0.0) / max(float(np.max(np.abs(want))), 1e-30))


def worker(process_id: int, num_processes: int, coordinator: str, cpu_devices: int, loopback: bool) -> int:
  """Run the checks on this process; return 0 if all pass."""
  import jax

  if cpu_devices:
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", cpu_devices)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=coordinator,
      num_processes=num_processes,
      process_id=process_id,
      # The local launcher's coordinator listens on 127.0.0.1 only (JAX's default is every interface).
      coordinator_bind_address=coordinator if loopback else None,
      initialization_timeout=60,
  )
  if loopback and cpu_devices:
    _pin_gloo_to_loopback()

  import jax.numpy as jnp
  import numpy as np
  from jax.experimental import multihost_utils
  from jax.sharding import AxisType, Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  import jaxdiv

  # The global mesh: one row per process, so the data axis splits the batch between processes and the
  # vocab axis splits the vocabulary between each process's own devices.
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  grid = np.array(devices).reshape(num_processes, -1)
  mesh = Mesh(grid, ("data", "vocab"), axis_types=(AxisType.Auto,) * 2)
  data_mesh = Mesh(grid.reshape(-1), ("data",), axis_types=(AxisType.Auto,))
  me = jax.process_index()
  print(f"process {me}: {jax.process_count()} processes, {len(jax.local_devices())} local devices, "
        f"global mesh {dict(mesh.shape)}", flush=True)

  hidden, weight, labels, logits, target_logits, token_weights = _data()
  rows = slice(me * N // num_processes, (me + 1) * N // num_processes)  # this process's tokens

  def tokens(m, spec, x):
    """A global array from this process's rows of ``x`` (its global shape is inferred from the sharding)."""
    return jax.make_array_from_process_local_data(NamedSharding(m, spec), x[rows])

  def global_array(m, spec, x):
    """A global array from the full ``x`` that every process holds (e.g. loaded parameters)."""
    return jax.make_array_from_callback(x.shape, NamedSharding(m, spec), lambda index: x[index])

  def gathered(tree):
    """The global values of a pytree of sharded arrays, as NumPy on every process."""
    return jax.tree.map(lambda a: np.asarray(multihost_utils.process_allgather(a, tiled=True)), tree)

  # One-device references, on this process's first device.
  local = jax.local_devices()[0]
  h1, w1, y1 = (jax.device_put(x, local) for x in (hidden, weight, labels))
  z1, t1, c1 = (jax.device_put(x, local) for x in (logits, target_logits, token_weights))

  def ce_reference(h, w):
    return jaxdiv.cross_entropy(h @ w, y1, ignore_index=IGNORE, reduction="mean")

  def kl_reference(z, t):
    return jnp.sum(c1 * jaxdiv.kl_divergence_with_log_targets(z, t))

  checks = []

  # 1. Vocab-parallel fused CE: hidden and labels per process, the unembedding split along V.
  h, y = tokens(mesh, P("data", None), hidden), tokens(mesh, P("data"), labels)
  w = global_array(mesh, P(None, "vocab"), weight)

  # Global arrays are arguments of the jitted function, never closed over (JAX refuses to embed an array
  # that spans other processes' devices as a constant).
  def vp_ce(h, w, y):
    return jaxdiv.vocab_parallel_fused_linear_cross_entropy(
        h, w, y, mesh=mesh, vocab_axis="vocab", token_axis="data", ignore_index=IGNORE, vocab_block=16)

  got = jax.jit(jax.value_and_grad(vp_ce, argnums=(0, 1)))(h, w, y)
  want = jax.jit(jax.value_and_grad(ce_reference, argnums=(0, 1)))(h1, w1)
  checks.append(("vocab_parallel_fused_linear_cross_entropy", gathered(got), want))

  # 2. Vocab-parallel KL: per-token values [N] and the gradient w.r.t. both logits.
  z, t = tokens(mesh, P("data", "vocab"), logits), tokens(mesh, P("data", "vocab"), target_logits)
  c = tokens(mesh, P("data"), token_weights)

  def vp_kl_values(z, t):
    return jaxdiv.vocab_parallel_kl_divergence(z, t, mesh=mesh, vocab_axis="vocab", token_axis="data")

  def vp_kl(z, t, c):
    return jnp.sum(c * vp_kl_values(z, t))

  got = (jax.jit(vp_kl_values)(z, t), jax.jit(jax.grad(vp_kl, argnums=(0, 1)))(z, t, c))
  want = (jax.jit(jaxdiv.kl_divergence_with_log_targets)(z1, t1),
          jax.jit(jax.grad(kl_reference, argnums=(0, 1)))(z1, t1))
  checks.append(("vocab_parallel_kl_divergence", gathered(got), want))

  # 3. Fused CE under plain data parallelism: hidden P("data", None) over all devices, weight replicated.
  h, y = tokens(data_mesh, P("data", None), hidden), tokens(data_mesh, P("data"), labels)
  w = global_array(data_mesh, P(), weight)
  want = jax.jit(jax.value_and_grad(ce_reference, argnums=(0, 1)))(h1, w1)
  for mode in ("fast", "low_memory"):

    def fused_ce(h, w, y, mode=mode):
      return jaxdiv.fused_linear_cross_entropy(h, w, y, ignore_index=IGNORE, mode=mode)

    got = jax.jit(jax.value_and_grad(fused_ce, argnums=(0, 1)))(h, w, y)
    checks.append((f"fused_linear_cross_entropy(mode={mode!r})", gathered(got), want))

  failed = 0
  for name, got, want in checks:
    got, want = jax.tree.leaves(got), jax.tree.leaves(want)
    errors = [_max_relative_error(a, b) for a, b in zip(got, want)] if len(got) == len(want) else [np.inf]
    ok = max(errors) <= RTOL
    failed += not ok
    print(f"process {me}: {'PASS' if ok else 'FAIL'} {name}: value and gradient within "
          f"{max(errors):.1e} of one device (tolerance {RTOL:.0e})", flush=True)
  print(f"process {me}: {len(checks) - failed} of {len(checks)} checks passed", flush=True)
  multihost_utils.sync_global_devices("jaxdiv multiprocess example: done")
  return 1 if failed else 0


# --------------------------------------------------------------------------- #
# The local launcher: a cluster of processes on 127.0.0.1
# --------------------------------------------------------------------------- #


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(num_processes: int, cpu_devices: int, timeout: float) -> int:
  """Start ``num_processes`` workers on 127.0.0.1 and wait for them; kill them all on failure or timeout."""
  coordinator = f"127.0.0.1:{_free_port()}"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  with contextlib.ExitStack() as stack:
    children = []
    for i in range(num_processes):
      log = stack.enter_context(tempfile.TemporaryFile(mode="w+"))
      command = [sys.executable, os.path.abspath(__file__), "--process-id", str(i),
                 "--num-processes", str(num_processes), "--coordinator", coordinator,
                 "--cpu-devices", str(cpu_devices), "--timeout", str(timeout), "--loopback"]
      children.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    status = 0
    try:
      deadline = time.monotonic() + timeout
      pending = [p for p, _ in children]
      while pending and not status and time.monotonic() < deadline:
        time.sleep(0.1)
        for p in [p for p in pending if p.poll() is not None]:
          pending.remove(p)
          status = status or p.returncode  # one failed: the others would wait for it until their timeout
      if pending and not status:
        print(f"launcher: timed out after {timeout:.0f} s", flush=True)
        status = 1
    finally:
      for p, _ in children:
        if p.poll() is None:
          p.kill()
        p.wait()
      for i, (p, log) in enumerate(children):
        log.seek(0)
        print(f"----- process {i} (exit status {p.returncode}) -----")
        print(log.read(), end="", flush=True)
  print(f"launcher: {'all processes passed' if status == 0 else 'FAILED'}", flush=True)
  return 0 if status == 0 else 1


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--num-processes", type=int, default=2, help="processes in the cluster (default 2)")
  parser.add_argument("--process-id", type=int, default=None,
                      help="this process's index; without it, start all processes locally on 127.0.0.1")
  parser.add_argument("--coordinator", default=None, help="host:port of process 0 (with --process-id)")
  parser.add_argument("--cpu-devices", type=int, default=4,
                      help="CPU devices per process, with gloo collectives (0: JAX's default platform)")
  parser.add_argument("--timeout", type=float, default=100.0, help="seconds before every process gives up")
  parser.add_argument("--loopback", action="store_true", help=argparse.SUPPRESS)  # set by the launcher
  args = parser.parse_args(argv)
  if args.num_processes < 1 or N % args.num_processes:
    parser.error(f"--num-processes must divide N = {N}")
  if args.process_id is None:
    return launch(args.num_processes, args.cpu_devices, args.timeout)
  if args.coordinator is None:
    parser.error("--process-id needs --coordinator host:port (the address of process 0)")
  # A hard stop: a worker whose peer died must not wait forever in a collective.
  signal.alarm(max(1, int(args.timeout)))
  return worker(args.process_id, args.num_processes, args.coordinator, args.cpu_devices, args.loopback)


if __name__ == "__main__":
  sys.exit(main())
