"""``python -m edgetl.runtime``: the device command line, ``edgetl-rt``."""

from .cli import main

main(prog_name="edgetl-rt")
