"""Text inputs, implemented once for host and device: a labelled text record and its tokenization.

A text becomes the network's input through the model's own ``tokenizer.json``, run by Hugging Face's
``tokenizers`` (a small Rust package with wheels for x86 and aarch64), on the host when features are cached and
on the device when it predicts, so the two cannot disagree on the tokens.  Truncation and padding are set here,
never left to whatever the file says: a batch is padded to its longest text with the model's pad id, truncated at
``max_length``, and the network derives its attention mask from the pad id (one int64 input, ``(N, L)``, so every
engine and every tool that feeds one tensor runs text models unchanged).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..deps import require
from ..errors import BundleError, ConfigError, DataError

TOKENIZER_FILE = "tokenizer.json"
#: The extra that installs the device-side tokenizer.
DEVICE_EXTRA = "text-device"
#: Tokens per text where a text model is timed without a text (bench, the choice of artifact): a short query
#: (banking77's median test query has 13 tokens).
DEFAULT_SEQ_LEN = 16
#: Above this many characters a text is refused (a service's request, a CSV cell): tokenization reads it all.
MAX_TEXT_CHARS = 100_000


@dataclass(frozen=True, eq=False)
class TextRecord:
    """One labelled text. ``source`` names it in errors, split records and cache keys (``FILE:LINE``, or the
    request's element)."""

    source: str
    label: int
    text: str

    modality = "text"

    def content_digest(self) -> bytes:
        return hashlib.sha256(self.text.encode("utf-8")).digest()


def check_text(text: object, where: str) -> str:
    """``text`` when it is a non-empty string within :data:`MAX_TEXT_CHARS`, else a :class:`DataError` naming
    ``where``."""
    if not isinstance(text, str):
        raise DataError(f"{where}: expected a text, got {type(text).__name__}")
    if not text.strip():
        raise DataError(f"{where}: the text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise DataError(f"{where}: the text has {len(text)} characters (at most {MAX_TEXT_CHARS})")
    return text


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str, sha256: str, max_length: int):
    """The tokenizer of ``path`` (cached by its recorded sha256 too: a file replaced in place is read again)."""
    tokenizers = require("tokenizers", DEVICE_EXTRA, "tokenizing text")
    try:
        tokenizer = tokenizers.Tokenizer.from_file(path)
    except Exception as exc:   # the Rust side raises plain Exceptions for a missing or malformed file
        raise BundleError(f"cannot read the tokenizer {path}: {str(exc).splitlines()[0]}") from exc
    tokenizer.no_padding()     # padding is ours (:meth:`TextPreprocess.encode`), whatever the file says
    tokenizer.enable_truncation(max_length)
    return tokenizer


@dataclass(frozen=True)
class TextPreprocess:
    """How a text becomes the network's input (recorded in every run and bundle that holds a text model).

    ``tokenizer`` is the file name inside ``folder`` (the model's folder on the host, the bundle on the device);
    its sha256 is recorded, so a cache entry or a bundle never pairs a model with another tokenizer.
    """

    tokenizer: str
    tokenizer_sha256: str
    max_length: int
    pad_id: int
    folder: str = field(default="", compare=False)

    kind = "text"

    def __post_init__(self) -> None:
        if not 2 <= self.max_length <= 8192:
            raise ConfigError(f"max_length must be in [2, 8192], got {self.max_length}")

    @property
    def path(self) -> Path:
        return Path(self.folder) / self.tokenizer

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer": self.tokenizer, "tokenizer_sha256": self.tokenizer_sha256,
                "max_length": self.max_length, "pad_id": self.pad_id}

    @classmethod
    def from_dict(cls, data: dict, folder: str | Path = "") -> TextPreprocess:
        missing = [key for key in ("tokenizer", "tokenizer_sha256", "max_length", "pad_id") if key not in data]
        if missing:
            raise ConfigError(f"text preprocessing lacks {', '.join(missing)}")
        return cls(str(data["tokenizer"]), str(data["tokenizer_sha256"]), int(data["max_length"]),
                   int(data["pad_id"]), str(folder))

    def tokens(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (special tokens added, truncated at ``max_length``), unpadded."""
        if not self.folder:
            raise ConfigError("the text preprocessing has no folder to read its tokenizer from")
        encodings = _tokenizer(str(self.path), self.tokenizer_sha256, self.max_length).encode_batch(list(texts))
        return [encoding.ids for encoding in encodings]

    def pad(self, ids: Sequence[Sequence[int]], length: int | None = None) -> np.ndarray:
        """(N, L) int64, each row padded with ``pad_id`` to ``length`` (default: the longest row)."""
        length = max((len(row) for row in ids), default=1) if length is None else length
        out = np.full((len(ids), max(length, 1)), self.pad_id, dtype=np.int64)
        for i, row in enumerate(ids):
            out[i, :len(row)] = row
        return out

    def encode(self, texts: Sequence[str], length: int | None = None) -> np.ndarray:
        """The network's input for ``texts``: token ids padded to the longest (or to ``length``)."""
        return self.pad(self.tokens(texts), length)

    def unpadded(self, ids: np.ndarray) -> list[np.ndarray]:
        """Each row of ``ids`` as a batch of one without its padding: how one text runs on the device (a
        quantizer's statistics and a timing sample must not see padded positions)."""
        lengths = (np.asarray(ids) != self.pad_id).sum(axis=1)
        return [np.ascontiguousarray(ids[i:i + 1, :max(int(n), 1)]) for i, n in enumerate(lengths)]

    def join(self, batches: Sequence[np.ndarray]) -> np.ndarray:
        """One batch of several batches of ids (a service's concurrent requests), padded to the longest."""
        length = max(b.shape[1] for b in batches)
        return np.concatenate([np.pad(b, ((0, 0), (0, length - b.shape[1])), constant_values=self.pad_id)
                               for b in batches])

    def example(self, batch: int = 2, length: int = DEFAULT_SEQ_LEN) -> np.ndarray:
        """An input of the right type and rank for exporting and probing: ``[CLS]``-like non-pad ids."""
        return np.full((batch, length), self.pad_id + 1, dtype=np.int64)


def length_sorted(tokens: Sequence[Sequence[int]], batch_size: int) -> list[np.ndarray]:
    """Positions of ``tokens`` in batches of similar length (a stable sort, so reproducible): each batch pads to
    little more than its own texts (on banking77's test queries in file order, batches of 64 padded to their
    longest carry about twice the tokens)."""
    return _by_length(np.array([len(t) for t in tokens]), batch_size)


def _by_length(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    order = np.argsort(lengths, kind="stable")
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def padded_batches(ids: np.ndarray, pad_id: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, their ids cut to the batch's longest) of a matrix padded to its longest text, in batches of
    similar length: how the device runs them, which matters where the padding would not be ignored (a
    dynamically quantized encoder takes its activation scales over the whole batch)."""
    ids = np.asarray(ids)
    lengths = (ids != pad_id).sum(axis=1)
    for rows in _by_length(lengths, batch_size):
        rows = np.sort(rows)
        yield rows, np.ascontiguousarray(ids[rows, :max(int(lengths[rows].max()), 1)])


def tokenizer_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
