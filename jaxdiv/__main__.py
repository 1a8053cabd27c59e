"""Command line: ``python -m jaxdiv selfcheck``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxdiv", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  check = sub.add_parser("selfcheck", help="measure jaxdiv's numerical guarantees against optax and float64")
  check.add_argument("--quick", action="store_true", help="smaller vocabularies (seconds, for CI)")
  check.add_argument("--markdown", metavar="PATH", help="also write the table as markdown")
  args = parser.parse_args(argv)
  if args.command == "selfcheck":
    from jaxdiv import _report

    return _report.main(quick=args.quick, markdown=args.markdown)
  return 1


if __name__ == "__main__":
  sys.exit(main())
