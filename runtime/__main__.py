"""``python -m edgetl.runtime``: the device command line, ``edgetl-rt``."""

from edgetl.runtime.cli import main

main(prog_name="edgetl-rt")
