"""A device's contribution to a fleet: what it learned as summed statistics, in one ``.npz`` with a JSON header.

A ridge head on frozen features depends on its samples only through sums (Fed3R): the Gram matrix ``Σ x xᵀ``,
the per-class feature sums ``Σ_{y=c} x`` (the cross terms, with one-hot targets), the feature sum and the
per-class counts; an NCM head through the per-class sums of L2-normalised features and their counts.  With one-hot
targets a single Gram matrix shared by every class is exact (``Xᵀ X`` does not depend on the labels), so a
contribution holds one d×d matrix, not one per class.  At d = 1280 that is its upper triangle in float64, 6.6 MB
(819,840 numbers), the size of 1,280 raw float32 rows; when the contribution covers fewer samples than d/2 its
Gram matrix has rank at most n and is stored as a factor ``L`` (d×n, ``L Lᵀ = G``, checked to 1e-12 relative
before it is chosen), n·d·8 bytes: the smaller exact form.  Per-sample rows are included only when asked
(``--with-rows``): statistics of a handful of samples already reveal much about them.

The file is an ``.npz`` (no pickle) whose ``header`` entry is a JSON document; the header carries the sha256 of
every other array (name, dtype, shape and bytes in name order), so a changed byte is refused by name
(:func:`verify_contribution`, the one call made before any contribution is trusted).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BundleError
from ..signing import TrustedKeys, check_signature, signature_path
from .manifest import BundleManifest

CONTRIBUTION_SCHEMA = "edgetl.contribution/1"
#: The largest contribution file read (bytes): a Gram matrix at d = 4096 plus rows fits well below it.
MAX_CONTRIBUTION_BYTES = 1 << 31
#: The factored Gram form is kept only when it rebuilds the Gram matrix to this relative difference (max entry).
FACTOR_TOLERANCE = 1e-12

_ARRAY_KINDS = {"gram_upper": "f8", "gram_factor": "f8", "class_sums": "f8", "feature_sum": "f8", "counts": "f8",
                "ncm_sums": "f8", "ncm_counts": "f8", "rows_features": "f4", "rows_labels": "i8",
                "rows_holdout": "b1", "rows_keys": "U"}


def bundle_identity(manifest: BundleManifest) -> str:
    """A bundle's identity in a fleet: the sha256 of what defines its model and its learning start (backbone
    weights, preprocessing, classes, head and learning files), so a manifest rewritten for another reason
    (accuracy recorded on arm64, a signature) keeps it."""
    document = {"backbone": manifest.backbone.get("weights_sha256"), "name": manifest.backbone.get("name"),
                "preprocess": manifest.preprocess, "labels": list(manifest.labels), "feature_dim": manifest.feature_dim,
                "head": manifest.head.get("sha256"), "learning": manifest.learning.get("sha256"),
                "statistics": manifest.fleet.get("statistics", {}).get("sha256")}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def payload_digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over every array (name, dtype, shape, bytes), in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass
class Contribution:
    """A contribution's header (JSON) and arrays.  The statistics are in the order of ``classes``."""

    header: dict
    arrays: dict[str, np.ndarray]
    source: str = ""
    file_sha256: str = ""
    size: int = 0

    @property
    def id(self) -> str:
        return self.header["id"]

    @property
    def classes(self) -> list[str]:
        return list(self.header["classes"])

    @property
    def dim(self) -> int:
        return int(self.header["feature_dim"])

    def gram(self) -> np.ndarray:
        """The (d, d) Gram matrix, from its upper triangle or its factor."""
        if "gram_factor" in self.arrays:
            factor = self.arrays["gram_factor"]
            return factor @ factor.T
        upper, dim = self.arrays["gram_upper"], self.dim
        gram = np.zeros((dim, dim))
        gram[np.triu_indices(dim)] = upper
        return gram + np.triu(gram, 1).T

    def to_bytes(self) -> bytes:
        data = io.BytesIO()
        header = json.dumps(self.header, indent=1, sort_keys=True)
        np.savez(data, header=np.array(header), **self.arrays)
        return data.getvalue()


def gram_arrays(gram: np.ndarray, count: int) -> dict[str, np.ndarray]:
    """The smaller exact form of a Gram matrix of ``count`` samples: a (d, count) factor when count < d/2 and it
    rebuilds ``gram`` to :data:`FACTOR_TOLERANCE`, else the upper triangle."""
    dim = len(gram)
    if 0 < count < dim / 2:
        spectrum, basis = np.linalg.eigh(gram)
        top = np.argsort(spectrum)[::-1][:count]
        factor = basis[:, top] * np.sqrt(np.maximum(spectrum[top], 0.0))
        scale = max(float(np.abs(gram).max()), 1e-300)
        if float(np.abs(factor @ factor.T - gram).max()) <= FACTOR_TOLERANCE * scale:
            return {"gram_factor": factor}
    return {"gram_upper": gram[np.triu_indices(dim)]}


def _fail(source: str, problem: str) -> BundleError:
    return BundleError(f"contribution {source} {problem}")


def verify_contribution(data: bytes | str | Path, source: str | None = None, signature: bytes | None = None,
                        trusted: TrustedKeys | str | Path | bool | None = None) -> Contribution:
    """Read a contribution (its bytes, or a path) and check it before anything trusts it: its signature, the
    schema, the header's keys, every array's shape and dtype, and the payload's sha256.  A problem raises
    :class:`BundleError` (:class:`SignatureError` for the signature) naming the file.

    ``signature``: the detached signature's bytes (a path's ``FILE.sig`` is read when there is one); ``trusted``:
    the keys it must be made with (default: those configured by ``--trusted-keys`` / ``EDGETL_TRUSTED_KEYS``, with
    which an unsigned contribution is refused; False: none, for the device's own copies)."""
    if not isinstance(data, bytes):
        source = source or str(data)
        sig_file = signature_path(data)
        try:
            with open(data, "rb") as handle:
                data = handle.read(MAX_CONTRIBUTION_BYTES + 1)
            if signature is None and sig_file.is_file():
                signature = sig_file.read_bytes()
        except OSError as exc:
            raise _fail(source, f"cannot be read ({exc.strerror or exc})") from None
    source = source or "<bytes>"
    if len(data) > MAX_CONTRIBUTION_BYTES:
        raise _fail(source, f"is larger than {MAX_CONTRIBUTION_BYTES} bytes")
    check_signature(source, hashlib.sha256(data).hexdigest(), len(data), signature, trusted)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    except Exception as exc:      # numpy raises ValueError, OSError, zipfile.BadZipFile, EOFError...
        raise _fail(source, f"is not a readable .npz ({type(exc).__name__}: {exc})") from None
    try:
        header = json.loads(str(arrays.pop("header")))
    except (KeyError, ValueError):
        raise _fail(source, "has no JSON header") from None
    if not isinstance(header, dict) or header.get("schema") != CONTRIBUTION_SCHEMA:
        raise _fail(source, f"is not an edgetl contribution (schema {header.get('schema')!r}, "
                            f"expected {CONTRIBUTION_SCHEMA!r})" if isinstance(header, dict) else "has a bad header")
    for key, kind in (("id", str), ("device", str), ("base", str), ("classes", list), ("feature_dim", int),
                      ("payload_sha256", str), ("created", str), ("versions", dict)):
        if not isinstance(header.get(key), kind):
            raise _fail(source, f"header key {key!r} is missing or not a {kind.__name__}")
    if payload_digest(arrays) != header["payload_sha256"]:
        raise _fail(source, "fails its sha256 check (its statistics were modified or damaged)")
    names = header["classes"]
    if not all(isinstance(name, str) and name for name in names) or len(set(names)) != len(names):
        raise _fail(source, "header key 'classes' must list distinct non-empty class names")
    if header["feature_dim"] < 1:
        raise _fail(source, f"header key 'feature_dim' must be positive, got {header['feature_dim']}")
    dim, classes = header["feature_dim"], len(names)
    expected = {"class_sums": (classes, dim), "feature_sum": (dim,), "counts": (classes,),
                "ncm_sums": (classes, dim), "ncm_counts": (classes,)}
    for name, shape in expected.items():
        if name not in arrays or arrays[name].shape != shape:
            raise _fail(source, f"array {name!r} is missing or not of shape {shape}")
    if "gram_upper" in arrays:
        if arrays["gram_upper"].shape != (dim * (dim + 1) // 2,):
            raise _fail(source, "array 'gram_upper' has the wrong size")
    elif "gram_factor" not in arrays or arrays["gram_factor"].ndim != 2 or arrays["gram_factor"].shape[0] != dim:
        raise _fail(source, "has no Gram matrix of its feature dimension")
    for name, array in arrays.items():
        kind = _ARRAY_KINDS.get(name)
        if kind is None:
            raise _fail(source, f"holds an unknown array {name!r}")
        if not array.dtype.str.lstrip("<>|=").startswith(kind) or \
                (array.dtype.kind == "f" and not np.all(np.isfinite(array))):
            raise _fail(source, f"array {name!r} has dtype {array.dtype} or non-finite values")
    for name in ("counts", "ncm_counts"):
        if np.any(arrays[name] < 0):
            raise _fail(source, f"array {name!r} holds negative counts")
    _check_rows(source, arrays, dim, classes)
    return Contribution(header, arrays, source, hashlib.sha256(data).hexdigest(), len(data))


def _check_rows(source: str, arrays: dict[str, np.ndarray], dim: int, classes: int) -> None:
    """The rows a contribution made ``--with-rows`` carries: all four arrays or none, one length, labels among
    its classes (a checksum the sender computes cannot vouch for any of this)."""
    names = ("rows_features", "rows_labels", "rows_holdout", "rows_keys")
    present = [name for name in names if name in arrays]
    if not present:
        return
    if len(present) != len(names):
        raise _fail(source, f"carries rows without {', '.join(n for n in names if n not in arrays)}")
    count = len(arrays["rows_labels"])
    if arrays["rows_features"].shape != (count, dim) or any(arrays[n].shape != (count,) for n in names[1:]):
        raise _fail(source, f"has rows of inconsistent shapes (expected {count} rows of {dim} features)")
    labels = arrays["rows_labels"]
    if count and (labels.min() < 0 or labels.max() >= classes):
        raise _fail(source, f"has row labels outside its {classes} classes")


@dataclass
class ContributionSummary:
    """What a contribution covers, as ``edgetl-rt contribute --json`` prints it."""

    id: str
    device: str
    base: str
    created: str
    versions: dict
    classes: list[str]
    samples: dict[str, int]
    n_samples: int
    gram_form: str
    rows: int
    bytes: int
    sha256: str
    out: str = ""
    signature: str | None = None     # the detached signature written beside ``out`` (``--sign-key``)

    @classmethod
    def of(cls, contribution: Contribution, out: str = "") -> ContributionSummary:
        h = contribution.header
        return cls(h["id"], h["device"], h["base"], h["created"], h["versions"], h["classes"], h["samples"],
                   h["n_samples"], "factor" if "gram_factor" in contribution.arrays else "upper",
                   len(contribution.arrays.get("rows_labels", ())), contribution.size, contribution.file_sha256, out)

    def to_json(self) -> dict:
        return dict(self.__dict__)
