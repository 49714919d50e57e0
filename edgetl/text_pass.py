"""One pass of a text encoder over labelled texts, into a feature cache entry.

Texts are tokenized all at once (``tokenizers`` runs the batch on every core) and run in batches of similar
length: sorted by token count, so a batch pads to little more than its own texts (:func:`length_sorted`).  Rows are
written at their records' positions, so the entry reads in record order like an image pass's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgetl.runtime.data.text import TextPreprocess, length_sorted
from edgetl.runtime.progress import ProgressFactory, silent_progress

from .cache import CacheWriter

#: Texts per batch on the CPU: large enough for the matrix products, small enough that the longest batch (at
#: max_length) stays within a few hundred MB of attention scores.
TEXT_BATCH = 64
#: Where the pass runs when the caller does not say.
CPU = torch.device("cpu")


def run_text(module: nn.Module, tokens: Sequence[Sequence[int]], preprocess: TextPreprocess, writer: CacheWriter, *,
             device: torch.device = CPU, amp: bool = False, batch_size: int | None = None,
             progress: ProgressFactory = silent_progress, first: int = 0) -> None:
    """``module``'s outputs over the texts' ``tokens`` (rows ``first`` on of the entry) into ``writer``; states
    at a freeze point inside the encoder (N, L, hidden + 1) are padded with zeros to the entry's length.
    ``amp``: fp16 autocast on CUDA, as the image pass runs (the cache key records the precision)."""
    module = module.eval().to(device)
    bar = progress("encoder pass", len(tokens))
    try:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            for rows in length_sorted(tokens, batch_size or TEXT_BATCH):
                ids = torch.from_numpy(preprocess.pad([tokens[i] for i in rows])).to(device)
                out = module(ids).float()
                if out.dim() == 3:
                    out = torch.nn.functional.pad(out, (0, 0, 0, writer.shape[0] - out.shape[1]))
                writer.write([first + int(i) for i in rows], out.cpu().numpy())
                bar.update(len(rows))
    finally:
        bar.close()


def text_output_shape(module: nn.Module, preprocess: TextPreprocess, device: torch.device, length: int
                      ) -> tuple[int, ...]:
    """The shape of one row: (features,) pooled, or (length, hidden + 1) at a freeze point inside the encoder."""
    with torch.inference_mode():
        return tuple(module.to(device)(torch.from_numpy(preprocess.example(1, max(length, 2))).to(device)).shape[1:])
