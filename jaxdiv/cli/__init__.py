"""jaxdiv's command-line tooling: the demo, the selfcheck report and the benchmarks.

Not part of the library's API: ``import jaxdiv`` never imports this package. Run it as
``python -m jaxdiv <command>`` or with the ``jaxdiv`` console script; :mod:`jaxdiv.cli.main` holds the
dispatch, and each command is a module of its own (``demo``, ``report``, ``bench``, ``bench_fused``).
"""
