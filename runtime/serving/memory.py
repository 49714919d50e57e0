"""The worst-case peak memory of ``edgetl-rt serve`` on an image bundle, as a function of its options.

docs/serving.md states the formula; this module is its one implementation (a test holds the service to it, and
``benchmarks/serve_hostile.py`` prints it beside what it measures).  Each term is what the service can hold at
once, whatever clients send, on top of the process's own baseline (the model loaded, one full batch run: the
backend's arena), which is measured, not derived.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data.decoding import EXPRESS_BUDGET

#: Bytes one decoded pixel can cost at the peak of its decode, over the formats Pillow 13 reads: JPEG 2000 with
#: four components is the costliest (OpenJPEG's int32 plane per component, then Pillow's image: 24.4 bytes a pixel
#: measured at 4096 x 4096); RGB JPEG 2000 19.3, WebP 16, PNG/TIFF/BMP/GIF 4 to 9 (16-bit, 32-bit and float images
#: included), JPEG is decoded at the resize size (draft).  Measured on a shared 2-core VM, Pillow 13.0.
DECODE_BYTES_PER_PIXEL = 26

#: Bytes a request body can cost per byte received while it is answered: the body itself, its JSON parsed (the
#: base64 text as Python strings) and the images decoded from base64.
BODY_COPIES = 3

#: Bytes one value of a response costs while it is encoded: the Python float (and its list slot), its JSON text and
#: that text's bytes.  A response carries each of its four outputs at most once (label, logits, scores,
#: head_version): 2 x classes + 2 values an image.
RESPONSE_VALUE_BYTES = 80

@dataclass(frozen=True)
class MemoryBound:
    """The terms of the bound, in bytes (``total`` adds them to the measured baseline)."""

    baseline: int
    decoding: int      # the pixel budgets (the pool's, the small images') at the costliest decode
    inputs: int        # preprocessed inputs waiting for the backbone (the input budget, or one request larger)
    bodies: int        # request bodies in flight
    batch: int         # the backbone's batch (joined, then handed to the backend)
    update: int        # the one update decoding at a time: two batches of crops
    responses: int     # responses being written

    @property
    def total(self) -> int:
        return (self.baseline + self.decoding + self.inputs + self.bodies + self.batch + self.update
                + self.responses)

    def to_json(self) -> dict:
        return {**{k: round(v / 2**20, 1) for k, v in vars(self).items()}, "total": round(self.total / 2**20, 1)}


def peak_bound(baseline: int, *, input_size: int, classes: int, decode_pixels: int, inputs_mb: float,
               max_images: int, max_batch: int, max_connections: int, max_body: int,
               update_batch: int = 16) -> MemoryBound:
    """The worst-case peak RSS of a service whose process holds ``baseline`` bytes after loading and one full batch:
    ``input_size`` S is the bundle's crop side, the rest are ``serve``'s options (``max_body`` in bytes)."""
    one_input = 3 * input_size * input_size * 4          # float32, channels first
    per_request = max_images * one_input
    return MemoryBound(
        baseline=int(baseline),
        decoding=(decode_pixels + min(EXPRESS_BUDGET, decode_pixels)) * DECODE_BYTES_PER_PIXEL,
        inputs=max(int(inputs_mb * 2**20), per_request),
        bodies=max_connections * max_body * BODY_COPIES,
        batch=2 * max_batch * one_input,
        update=2 * 2 * update_batch * one_input,
        responses=max_connections * max_images * (2 * classes + 2) * RESPONSE_VALUE_BYTES,
    )
