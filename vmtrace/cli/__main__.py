"""``python -m vmtrace.cli``: the same command as ``vmtrace``."""

from . import main

main()
