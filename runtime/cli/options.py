"""Options shared by the commands of ``edgetl-rt`` and ``edgetl``: one name, type and meaning each.

A command takes an option from here rather than declaring its own, so
``--threads`` or ``--json`` cannot drift apart between commands.
"""

from __future__ import annotations

import functools

import click

from ..data.preprocess import DEFAULT_MAX_PIXELS
from ..data.sources import SPLITS

THREADS_HELP = "Intra-op threads (default: one per usable physical core, stated to every engine)."
#: bench measures a matrix: the same thread count, one cell per value.
THREADS_LIST_HELP = ("Comma-separated thread counts, one matrix cell each (default: one per usable physical "
                     "core).")


def json_option(func):
    """``--json``: one JSON object on stdout instead of text (every command has it)."""
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")(func)


_NO_TUNE_KEY = "edgetl.no_tune"


def _old_no_tune(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        from .output import note

        note("note: --no-tune is now --no-measure (the old spelling goes in edgetl 0.8)")
        ctx.meta[_NO_TUNE_KEY] = True


def no_measure_options(help_text: str) -> list:
    """``--no-measure``, and its 0.6 spelling ``--no-tune`` (hidden, for one release): measuring the artifacts on
    the device was called tuning, a word that now means the ridge regularisation search only."""
    return [
        click.option("--no-measure", is_flag=True, help=help_text,
                     callback=lambda ctx, param, value: value or ctx.meta.get(_NO_TUNE_KEY, False)),
        click.option("--no-tune", is_flag=True, hidden=True, expose_value=False, is_eager=True, callback=_old_no_tune,
                     help="Same as --no-measure (0.6 spelling)."),
    ]


#: ``--threads``: one thread count for the one model (or pass) a command runs.
threads_option = click.option("--threads", type=click.IntRange(min=1), default=None, help=THREADS_HELP)

#: ``--skip-bad``: a bad input (an unreadable image, a text file's bad row) is skipped and named, not fatal.
skip_bad_option = click.option("--skip-bad", is_flag=True,
                               help="Skip unreadable images (or a text file's bad rows) with a warning instead of "
                                    "failing.")

#: ``--reject``: answer ``unknown`` for an input scored above the bundle's unknown threshold (never by default).
reject_option = click.option("--reject", is_flag=True,
                             help="Answer 'unknown' instead of a class for inputs above the bundle's unknown-input "
                                  "threshold (default: every input gets its class; the score is reported either way).")

#: ``--split``: which split of DATA a command reads.
split_option = click.option("--split", type=click.Choice(SPLITS), default=None,
                            help="Which split of DATA (default: val when DATA has one, else all).")

#: ``--max-pixels``: the decoded-size limit that guards against decompression bombs.
max_pixels_option = click.option("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, show_default=True,
                                 help="Refuse images larger than this many pixels (decompression bombs).")


def overwrite_option(what: str, after: str = ""):
    """``--overwrite``: replace ``what`` (the command's output) when it exists; ``after`` adds how, if it matters."""
    return click.option("--overwrite", is_flag=True, help=f"Replace {what} if it exists{after}.")


model_options = [
    click.option("--artifact", default=None, help="Backbone artifact of the bundle to run, by name (e.g. onnx)."),
    click.option("--backend", default=None, help="Runtime backend (default: the artifact's own)."),
    threads_option,
    *no_measure_options("Never measure the artifacts on this machine: with no timings here, the device profile or "
                        "the CPU class's order decides."),
]


def option_group(options: list):
    """A decorator applying ``options`` in their listed order (the first is the first in ``--help``)."""
    def decorate(func):
        for option in reversed(options):
            func = option(func)
        return func
    return decorate


#: ``--artifact``, ``--backend``, ``--threads`` and ``--no-measure``: how a command opens the bundle's model.
with_model_options = option_group(model_options)


def optional_data_argument(default_help: str):
    """``[DATA]`` as an optional positional argument, with the older ``--data DATA`` still accepted (hidden).

    The command receives one ``data`` parameter; giving both, differently, is a usage error.
    """
    def decorate(func):
        @functools.wraps(func)
        def command(*args, data: str | None = None, data_alias: str | None = None, **kwargs):
            if data and data_alias and data != data_alias:
                raise click.UsageError(f"DATA given twice ({data} and --data {data_alias}); give it once")
            return func(*args, data=data or data_alias, **kwargs)

        command = click.option("--data", "data_alias", default=None, hidden=True,
                               help=f"Same as DATA (older spelling). {default_help}")(command)
        return click.argument("data", required=False)(command)
    return decorate


def _configure_trust(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    from ..signing import configure_trusted_keys

    configure_trusted_keys(value)
    ctx.call_on_close(lambda: configure_trusted_keys(None))


def sign_key_option(what: str):
    """``--sign-key``: an ed25519 private key file (``edgetl keys generate``) that signs ``what`` once written."""
    return click.option("--sign-key", type=click.Path(dir_okay=False, exists=True), default=None,
                        help=f"Sign {what} with this ed25519 private key (edgetl keys generate).")


#: ``--trusted-keys``: the public keys a bundle's signature must be made with; the bundle is then verified whole
#: when it opens.  Every command that loads a bundle has it; ``EDGETL_TRUSTED_KEYS`` sets it for all of them.
trusted_keys_option = click.option(
    "--trusted-keys", type=click.Path(exists=True), default=None, expose_value=False, callback=_configure_trust,
    help="Refuse a bundle unless it is signed by one of these ed25519 public keys (a folder of *.pub / *.pem files, "
         "or one file), and check every file of it before it runs (default: $EDGETL_TRUSTED_KEYS; unset: no "
         "signature needed).")
