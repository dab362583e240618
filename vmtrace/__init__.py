"""vmtrace: trace-driven lock profiling of virtual machine monitors.

Kept import-light on purpose: a target VMM imports ``vmtrace.probes`` and must
not pull pandas in with it.  The library lives in the submodules
(``vmtrace.trace``, ``vmtrace.record``, ``vmtrace.report``, ``vmtrace.analyses``).
"""

__version__ = "0.1.0"
