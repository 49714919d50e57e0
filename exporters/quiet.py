"""Silence the chatter of converters and quantizers so the CLI shows only edgetl's own lines."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

#: Loggers of the libraries the exporters drive.
NOISY_LOGGERS = ("", "torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "nncf")


@contextlib.contextmanager
def quiet():
    """Raise those loggers to ERROR, swallow warnings and stdout for the duration."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
