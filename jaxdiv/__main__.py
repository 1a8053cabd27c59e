"""``python -m jaxdiv``: runs the command line of :mod:`jaxdiv.cli.main`."""

import sys

from jaxdiv.cli.main import main

if __name__ == "__main__":
  sys.exit(main())
