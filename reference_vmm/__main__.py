"""``python -m vmtrace.reference_vmm``: see :mod:`.cli`."""

import sys

from .cli import main

sys.exit(main())
