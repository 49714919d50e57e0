"""Options the host's commands share: one name, type, default and meaning each.

``finetune`` and ``select`` read the same data the same way (split, seed, input size, skipped inputs), run
the same backbone pass into the same cache, and ``finetune --backbone auto`` chooses with ``select``'s
candidates, target and budget; so each of these options is declared here once.  Options both command lines
have (``--json``, ``--threads``, ``--skip-bad``, ``--overwrite`` ...) come from the runtime's
:mod:`edgetl.runtime.cli.options`.
"""

from __future__ import annotations

import click

from edgetl.runtime.cli.options import option_group

#: Where the backbone pass runs and where its features are kept: finetune and select share the cache.
pass_options = [
    click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                 help="Feature cache folder, shared by finetune and select (default: $EDGETL_CACHE_DIR or "
                      "~/.cache/edgetl/features)."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
    click.option("--engine", type=click.Choice(["auto", "torch", "openvino", "onnxruntime"]), default="auto",
                 show_default=True,
                 help="What runs the frozen backbone on a CPU: auto picks OpenVINO/ONNX Runtime when the pass is "
                      "long enough to repay a one-off export (features checked against torch within 1e-4)."),
    click.option("--workers", type=click.IntRange(min=0), default=None,
                 help="Processes decoding images during the backbone pass (default: one per usable core for 256 "
                      "images or more on hosts of 4+ cores; 0: threads of this process)."),
    click.option("--compile", "compile_pass", is_flag=True,
                 help="torch.compile the frozen backbone for the pass (pays on a GPU for long passes; eager torch "
                      "only)."),
]

#: ``--cache-dir``, ``--device``, ``--engine``, ``--workers`` and ``--compile``: the backbone pass.
with_pass_options = option_group(pass_options)

#: How DATA is read: finetune and select make the same split of the same inputs at the same size.
seed_option = click.option("--seed", type=int, default=0, show_default=True)
val_fraction_option = click.option("--val-fraction", type=float, default=0.2, show_default=True,
                                   help="Held-out fraction when DATA has no val split (finetune and select make "
                                        "the same split).")
image_size_option = click.option("--image-size", type=int, default=None,
                                 help="Input size (default: the data set's recommendation, else each backbone's "
                                      "own).")


def target_option(help: str):
    """``--target``: a device profile by name (``edgetl devices``); ``help`` says what the command uses it for."""
    return click.option("--target", default=None, help=help)


def _for_auto(help: str, auto: bool) -> str:
    """``select``'s help, or finetune's: the same option, which applies there to ``--backbone auto`` only."""
    return f"With --backbone auto: {help[0].lower()}{help[1:]}" if auto else help


#: How select chooses, and finetune --backbone auto with it: the candidates, the target and the latency budget.
def candidates_option(auto: bool = False):
    return click.option("--backbones", "candidates", default=None,
                        help=_for_auto("Comma-separated candidates (default: every offline backbone; 'offline' "
                                       "stands for them beside timm:<name> / torchvision:<name>).", auto))


def latency_target_option(auto: bool = False):
    return target_option(_for_auto("Device profile whose artifact is timed (see 'edgetl devices').", auto))


def budget_option(auto: bool = False):
    return click.option("--budget-ms", type=float, default=None,
                        help=_for_auto("Batch-1 p50 latency budget, milliseconds.", auto))
