"""``python -m edgetl``: the host command line (torchrun starts it this way too)."""

from edgetl.cli import main

main(prog_name="edgetl")
