"""jaxdiv's command line.

  python -m jaxdiv demo         train and distil on bundled digits, then the numerics table (the main job)
  python -m jaxdiv selfcheck    jaxdiv vs optax vs float64 on the numerical contract
  python -m jaxdiv bench        time and memory of the losses vs optax and plain JAX
  python -m jaxdiv bench-fused  memory and time of the fused linear losses vs the naive path
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m jaxdiv", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  check = sub.add_parser("selfcheck", help="measure jaxdiv's numerical guarantees against optax and float64")
  check.add_argument(
      "--quick", action="store_true", help="a smaller vocabulary (under 15 s on 2 CPU cores, for CI)")
  check.add_argument("--markdown", metavar="PATH", help="also write the table as markdown")
  bench = sub.add_parser(
      "bench", help="time and temporary memory of jaxdiv's losses vs optax and plain JAX (CE, soft CE, KL, "
      "JSD, binary CE; forward and forward+backward), written as markdown, JSON and a PNG plot")
  from jaxdiv.cli import bench as bench_cli

  bench_cli.add_arguments(bench)
  fused = sub.add_parser(
      "bench-fused", help="memory and time of the fused linear cross-entropy vs the naive loss")
  fused.add_argument(
      "--quick", action="store_true", help="a small shape (27 s of CPU on 2 cores; longer on a busy machine)")
  fused.add_argument("--out", default="bench_results", help="folder for the JSON results and PNG plots")
  fused.add_argument("--sharded", action="store_true",
                     help="data parallelism on 8 (simulated) devices: fused losses vs the naive loss")
  demo = sub.add_parser(
      "demo", help="train a digits classifier and distil a student (no downloads), then print accuracies and "
      "the jaxdiv-vs-optax numerics table; needs the demo extra",
      description="Trains a teacher MLP on scikit-learn's bundled 8x8 digits with jaxdiv's label-smoothed "
      "cross-entropy, a small student on hard labels and the same student distilled from the teacher "
      "(temperature, T^2 scaling), with progress bars; then prints their test accuracies and the selfcheck "
      "table of jaxdiv vs optax vs float64. About 15 s on 2 CPU cores. "
      "Needs pip install 'jaxdiv[demo]'.",
  )
  demo.add_argument(
      "--quick", action="store_true",
      help="fewer epochs and a smaller vocabulary (under 30 s on 2 CPU cores, for CI)")
  demo.add_argument("--seed", type=int, default=0, help="data split and initialisation seed")
  args = parser.parse_args(argv)
  if args.command == "selfcheck":
    from jaxdiv.cli import report

    return report.main(quick=args.quick, markdown=args.markdown)
  if args.command == "bench":
    return bench_cli.main(args)
  if args.command == "bench-fused":
    from jaxdiv.cli import bench_fused

    return bench_fused.sharded() if args.sharded else bench_fused.main(quick=args.quick, out=args.out)
  if args.command == "demo":
    from jaxdiv.cli import demo as demo_cli

    return demo_cli.main(quick=args.quick, seed=args.seed)
  return 1


if __name__ == "__main__":
  sys.exit(main())
