"""ed25519 signatures of single files, the keys that make them and the public keys a device trusts.

A manifest's sha256 of every file catches corruption, not an attacker, who rewrites the manifest with the file.
A signature binds a file's sha256 and size to a key: the detached ``FILE.sig`` (a bundle's is ``manifest.sig``,
the signature of its ``manifest.json``, which carries every other file's sha256: see
:mod:`edgetl.runtime.bundle.signature`).  Keys are files, never part of what they sign: a private key as PKCS#8
PEM (or its raw 32-byte seed), a public key as SubjectPublicKeyInfo PEM (or its raw 32 bytes).  A key's id is the
first 16 hex digits of the sha256 of its raw public key, what every message names.

A device trusts the public keys of a folder (every ``*.pub`` and ``*.pem`` in it) or a file, given by
``--trusted-keys`` on the command that loads or by :data:`TRUSTED_KEYS_ENV`; where none are configured nothing is
required and nothing changes.  The cryptography is ``cryptography``'s (the ``sign`` extra), imported only when a
key is read or a signature checked, so the runtime works without it until keys are configured.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .deps import require
from .errors import ConfigError, SignatureError
from .fsutil import atomic_write_bytes, atomic_write_text, sha256_file

#: The environment variable naming the trusted public keys (a folder or a file; several joined by ``os.pathsep``).
TRUSTED_KEYS_ENV = "EDGETL_TRUSTED_KEYS"
SIGNATURE_SUFFIX = ".sig"
SIGNATURE_SCHEMA = 1
ALGORITHM = "ed25519"
#: Public-key files of a trusted-keys folder; ``edgetl keys generate`` writes NAME.key and NAME.pub.
PUBLIC_KEY_SUFFIXES = (".pub", ".pem")
#: What is signed starts with this, so an edgetl signature can never be replayed as another protocol's.
_DOMAIN = b"edgetl-signature-v1\n"
_RAW_KEY_BYTES = 32


def _ed25519():
    return require("cryptography.hazmat.primitives.asymmetric.ed25519", "sign", "Signing and checking signatures",
                   package="cryptography")


def _serialization():
    return require("cryptography.hazmat.primitives.serialization", "sign", "Signing and checking signatures",
                   package="cryptography")


def key_id(raw_public: bytes) -> str:
    """The short id of a public key: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    return hashlib.sha256(raw_public).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    """A public key and where it was read from."""

    raw: bytes
    source: str

    @property
    def key_id(self) -> str:
        return key_id(self.raw)


@dataclass(frozen=True)
class SigningKey:
    """A private key read from a file (:func:`load_signing_key`)."""

    private: object
    public: PublicKey

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys a device accepts signatures from, by key id, and where they were configured."""

    keys: dict[str, PublicKey]
    source: str

    def describe(self) -> str:
        return f"{', '.join(sorted(self.keys))} from {self.source}"


@dataclass
class GeneratedKey:
    """What ``keys generate`` wrote."""

    key_id: str
    private_key: str
    public_key: str

    def to_json(self) -> dict:
        return asdict(self)


def _raw_public(public_key) -> bytes:
    serialization = _serialization()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_key(out: str | Path, name: str = "edgetl", overwrite: bool = False) -> GeneratedKey:
    """A new ed25519 key pair as ``OUT/NAME.key`` (PKCS#8 PEM, mode 0600) and ``OUT/NAME.pub`` (PEM): the private
    key stays where it signs, the public one goes into the trusted-keys folders of the devices."""
    ed25519, serialization = _ed25519(), _serialization()
    out = Path(out)
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"key name {name!r} must be a plain file name", option="name")
    private_path, public_path = out / f"{name}.key", out / f"{name}.pub"
    existing = [str(p) for p in (private_path, public_path) if p.exists()]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]} already exists; choose another folder or name, or overwrite it",
                          remedy="overwrite")
    out.mkdir(parents=True, exist_ok=True)
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    atomic_write_bytes(private_path, pem, mode=0o600)       # readable by its owner only, from its first byte
    public = private.public_key()
    atomic_write_text(public_path, public.public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo).decode())
    return GeneratedKey(key_id(_raw_public(public)), str(private_path), str(public_path))


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} {path} does not exist", option="key") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}", option="key") from exc


def load_signing_key(path: str | Path) -> SigningKey:
    """The ed25519 private key in ``path``: PKCS#8 PEM (unencrypted) or the raw 32-byte seed."""
    ed25519, serialization = _ed25519(), _serialization()
    path = Path(path)
    data = _read_key_file(path, "key file")
    try:
        if len(data) == _RAW_KEY_BYTES:
            private = ed25519.Ed25519PrivateKey.from_private_bytes(data)
        else:
            private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"key file {path} is not an unencrypted ed25519 private key (PEM or 32 raw bytes)",
                          option="key") from exc
    if not isinstance(private, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"key file {path} holds a {type(private).__name__}, not an ed25519 private key",
                          option="key")
    return SigningKey(private, PublicKey(_raw_public(private.public_key()), str(path)))


def load_public_key(path: str | Path) -> PublicKey:
    """The ed25519 public key in ``path``: SubjectPublicKeyInfo PEM or its raw 32 bytes.  A private key is refused:
    a device's trusted keys are public."""
    ed25519, serialization = _ed25519(), _serialization()
    path = Path(path)
    data = _read_key_file(path, "public key file")
    if b"PRIVATE KEY" in data:
        raise ConfigError(f"{path} is a private key; a device trusts public keys only (the .pub file)",
                          option="trusted_keys")
    try:
        if len(data) == _RAW_KEY_BYTES:
            public = ed25519.Ed25519PublicKey.from_public_bytes(data)
        else:
            public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an ed25519 public key (PEM or 32 raw bytes)",
                          option="trusted_keys") from exc
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise ConfigError(f"{path} holds a {type(public).__name__}, not an ed25519 public key",
                          option="trusted_keys")
    return PublicKey(_raw_public(public), str(path))


def load_trusted_keys(location: str | Path) -> TrustedKeys:
    """The public keys of a folder (each ``*.pub`` / ``*.pem`` in it), a file, or several joined by ``os.pathsep``."""
    keys: dict[str, PublicKey] = {}
    for part in str(location).split(os.pathsep):
        if not part:
            continue
        path = Path(part)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in PUBLIC_KEY_SUFFIXES)
        elif path.is_file():
            files = [path]
        else:
            raise ConfigError(f"trusted keys {path} do not exist", option="trusted_keys")
        for file in files:
            key = load_public_key(file)
            keys.setdefault(key.key_id, key)
    if not keys:
        raise ConfigError(f"trusted keys {location} hold no public key (*.pub or *.pem)", option="trusted_keys")
    return TrustedKeys(keys, str(location))


#: What the command line configured (``--trusted-keys``): None, not given (the environment decides).
_configured: str | None = None


def configure_trusted_keys(location: str | Path | None) -> None:
    """Set the trusted keys of this process (``--trusted-keys``); None hands the choice back to the environment."""
    global _configured
    _configured = None if location is None else str(location)


def trusted_keys(explicit: str | Path | TrustedKeys | bool | None = None) -> TrustedKeys | None:
    """The keys to require: ``explicit``, else what the command line configured, else :data:`TRUSTED_KEYS_ENV`;
    None where none is set (nothing is required), or where ``explicit`` is False (whatever is configured)."""
    if isinstance(explicit, TrustedKeys):
        return explicit
    if explicit is False:
        return None
    location = explicit if explicit is not None else (_configured or os.environ.get(TRUSTED_KEYS_ENV) or None)
    return None if location is None or str(location) == "" else load_trusted_keys(location)


@dataclass
class SignatureEntry:
    algorithm: str
    key_id: str
    public_key: str      # base64 of the 32 raw bytes: lets a check without trusted keys still check the bytes
    signature: str       # base64 of the 64-byte ed25519 signature of the statement

    @property
    def raw_public(self) -> bytes:
        return base64.b64decode(self.public_key, validate=True)


@dataclass
class SignatureFile:
    """A detached signature: the sha256 and size of the file it signs, and one signature per key."""

    schema: int
    file: str
    sha256: str
    size: int
    signatures: list[SignatureEntry] = field(default_factory=list)

    def statement(self) -> bytes:
        """The bytes signed: the domain, the sha256 and the size (not the name: a renamed file stays signed)."""
        return _DOMAIN + json.dumps({"sha256": self.sha256, "size": self.size}, sort_keys=True).encode()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


@dataclass
class SignatureCheck:
    """What checking one file's signature found: the key ids whose signatures hold, and the trusted one among them
    (None: no keys trusted, or the file unsigned); where the check failed, the key ids its signature file names."""

    file: str
    signature_file: str
    signed: bool
    key_ids: list[str] = field(default_factory=list)
    trusted_key: str | None = None
    claimed_key_ids: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def signature_path(path: str | Path) -> Path:
    """Where a file's detached signature lives: ``FILE.sig``."""
    path = Path(path)
    return path.with_name(path.name + SIGNATURE_SUFFIX)


def parse_signature(text: str | bytes, name: str) -> SignatureFile:
    """Type-check a signature document (``name``: where it came from, for the message)."""
    try:
        data = json.loads(text)
        entries = [SignatureEntry(**entry) for entry in data.pop("signatures")]
        document = SignatureFile(**data, signatures=entries)
        if (document.schema != SIGNATURE_SCHEMA or not isinstance(document.sha256, str)
                or not isinstance(document.size, int) or not entries
                or not all(isinstance(v, str) for e in entries for v in asdict(e).values())):
            raise ValueError("unexpected values")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SignatureError(f"signature file {name} is not an edgetl signature ({exc}); sign the file again") \
            from exc
    return document


def read_signature(sig_path: str | Path) -> SignatureFile:
    """Read and type-check a signature file (a broken one is a :class:`SignatureError` naming it)."""
    sig_path = Path(sig_path)
    try:
        text = sig_path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SignatureError(f"cannot read signature file {sig_path}: {exc.strerror or exc}") from exc
    return parse_signature(text, str(sig_path))


def sign_file(path: str | Path, key: SigningKey | str | Path, sig_path: str | Path | None = None) -> Path:
    """Sign ``path`` with ``key``, writing (atomically) its detached signature ``FILE.sig`` or ``sig_path``.

    A good signature of the same content by another key is kept (co-signing); anything else is replaced."""
    path = Path(path)
    key = key if isinstance(key, SigningKey) else load_signing_key(key)
    sig_path = Path(sig_path) if sig_path is not None else signature_path(path)
    if not path.is_file():
        raise ConfigError(f"{path} is not a file; nothing to sign")
    document = SignatureFile(SIGNATURE_SCHEMA, path.name, sha256_file(path), path.stat().st_size)
    with contextlib.suppress(FileNotFoundError, SignatureError):
        previous = read_signature(sig_path)
        if (previous.sha256, previous.size) == (document.sha256, document.size):
            statement = document.statement()
            document.signatures = [e for e in previous.signatures
                                   if e.key_id != key.key_id and _holds(e, statement)]
    document.signatures.append(SignatureEntry(ALGORITHM, key.key_id, base64.b64encode(key.public.raw).decode(),
                                              base64.b64encode(key.sign(document.statement())).decode()))
    atomic_write_text(sig_path, document.to_json())
    return sig_path


def _holds(entry: SignatureEntry, statement: bytes) -> bool:
    """Whether ``entry`` is a good ed25519 signature of ``statement`` by the key it names."""
    ed25519 = _ed25519()
    exceptions = require("cryptography.exceptions", "sign", "Checking signatures", package="cryptography")
    try:
        raw = entry.raw_public
        if entry.algorithm != ALGORITHM or key_id(raw) != entry.key_id:
            return False
        ed25519.Ed25519PublicKey.from_public_bytes(raw).verify(base64.b64decode(entry.signature, validate=True),
                                                              statement)
    except (ValueError, exceptions.InvalidSignature):
        return False
    return True


def verify_file_signature(path: str | Path, trusted: TrustedKeys | str | Path | bool | None = None,
                          sig_path: str | Path | None = None, sha256: str | None = None) -> SignatureCheck:
    """Check ``path`` against its detached signature (``FILE.sig`` or ``sig_path``).

    With ``trusted`` keys (or those configured: :func:`trusted_keys`) the file must carry a good signature by one
    of them; without, an unsigned file passes and a signature present must still hold.  Every refusal is a
    :class:`SignatureError` naming the file and the key.  ``sha256``: the file's, when the caller has it."""
    path = Path(path)
    sig_path = Path(sig_path) if sig_path is not None else signature_path(path)
    signature = None
    if sig_path.is_file():
        signature = read_signature(sig_path)
        if not path.is_file():
            raise SignatureError(f"{path}, which {sig_path} signs, is missing")
    return check_signature(str(path), sha256 or (sha256_file(path) if signature else ""),
                           path.stat().st_size if signature else 0, signature, trusted, str(sig_path))


def check_signature(name: str, sha256: str, size: int, signature: SignatureFile | bytes | str | None,
                    trusted: TrustedKeys | str | Path | bool | None = None,
                    signature_name: str | None = None) -> SignatureCheck:
    """Check content known by its ``sha256`` and ``size`` against a signature document (or None: unsigned), for
    content that is not a local file: a contribution streamed from object storage is hashed as it is read, and
    its ``.sig`` fetched beside it.  ``name`` (and ``signature_name``) are what the messages call them; the rules
    are :func:`verify_file_signature`'s."""
    trusted = trusted_keys(trusted)
    signature_name = signature_name or name + SIGNATURE_SUFFIX
    short = Path(signature_name).name
    check = SignatureCheck(name, signature_name, signed=signature is not None)
    if signature is None:
        if trusted is not None:
            raise SignatureError(f"{name} is not signed (no {short}); this device trusts only keys "
                                 f"{trusted.describe()}")
        return check
    document = signature if isinstance(signature, SignatureFile) else parse_signature(signature, signature_name)
    if (sha256, size) != (document.sha256, document.size):
        signers = ", ".join(e.key_id for e in document.signatures)
        raise SignatureError(f"{name} was altered after it was signed: its sha256 is {sha256[:12]}..., key "
                             f"{signers} signed {document.sha256[:12]}... ({short})")
    statement = document.statement()
    for entry in document.signatures:
        if not _holds(entry, statement):
            raise SignatureError(f"{signature_name} holds a signature by key {entry.key_id} that does not verify: "
                                 f"the signature file was altered; sign {Path(name).name} again")
        check.key_ids.append(entry.key_id)
    if trusted is not None:
        # trust is the key's 32 bytes, not its short id: the id names a key in messages, and 64 bits of a hash
        # could be matched by a key made for the purpose
        check.trusted_key = next((e.key_id for e in document.signatures if e.key_id in trusted.keys
                                  and trusted.keys[e.key_id].raw == e.raw_public), None)
        if check.trusted_key is None:
            raise SignatureError(f"{name} is signed by key {', '.join(check.key_ids)}, which this device does not "
                                 f"trust (it trusts {trusted.describe()})")
    return check
