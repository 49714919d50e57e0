"""Signatures on the device: ``verify`` (a bundle checked whole without running it), ``sign`` (what the device
produces, e.g. a contribution) and ``keys generate``."""

from __future__ import annotations

from pathlib import Path

import click

from .options import json_option, overwrite_option, trusted_keys_option
from .output import print_json, print_table


def _is_contribution(path: Path) -> bool:
    """Whether an .npz names itself a fleet contribution (a header entry), read without loading its arrays."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return "header.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


@click.command()
@click.argument("bundle", type=click.Path(exists=True))
@trusted_keys_option
@json_option
def verify(bundle, as_json) -> None:
    """Check every file of BUNDLE without running it: each sha256 the manifest lists, no file missing, no file the
    manifest does not list (the device's store and timings aside), and the signature (manifest.sig), which trusted
    keys require.  Exits 13 on a signature problem, 3 on a bad file, naming each.  A single FILE is checked
    against its detached FILE.sig, and a contribution (edgetl-rt contribute) also against its own sha256."""
    from ..bundle.signature import verify_bundle
    from ..signing import verify_file_signature

    path = Path(bundle)
    if path.is_file():
        check = verify_file_signature(path)
        if path.suffix == ".npz" and _is_contribution(path):
            from ..bundle.contribution import verify_contribution

            verify_contribution(path)       # its schema, shapes and payload sha256 (edgetl-rt contribute)
        if as_json:
            print_json({"file": str(path), "ok": True, "signature": check.to_json()})
        else:
            print_table([("file", str(path)), ("signed by", ", ".join(check.key_ids) or "unsigned"),
                         ("trusted key", check.trusted_key or "-")])
        return
    report = verify_bundle(path)
    if as_json:
        print_json(report.to_json())
    else:
        rows = [("bundle", report.bundle),
                ("files checked", f"{sum(f.status != 'unlisted' for f in report.files)}"),
                ("signed by", _signers(report.signature)),
                ("trusted keys", ", ".join(report.trusted_keys) if report.trusted_keys else "none configured"),
                ("result", "ok" if report.ok else f"{len(report.problems)} problem(s)")]
        print_table(rows)
        for problem in report.problems:
            click.echo(f"  {problem}")
    report.raise_for_problems()


def _signers(check) -> str:
    if check is None or not check.signed:
        return "unsigned"
    if check.key_ids:
        return ", ".join(check.key_ids)
    return ", ".join(check.claimed_key_ids) + " (does not hold or not trusted)" if check.claimed_key_ids else "?"


@click.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--key", required=True, type=click.Path(dir_okay=False),
              help="The ed25519 private key file (PEM or 32 raw bytes; edgetl-rt keys generate).")
@json_option
def sign(path, key, as_json) -> None:
    """Sign PATH with KEY: a bundle folder gets manifest.sig (its manifest carries every file's sha256; the bundle
    is verified first), a file (a contribution, a head package) its detached PATH.sig.  Signing again with another
    key adds a signature."""
    from ..bundle.signature import sign_bundle
    from ..signing import load_signing_key, sign_file

    target = Path(path)
    signing_key = load_signing_key(key)
    # a bundle is given the key's path, so that a key lying inside the bundle is refused
    written = sign_bundle(target, key) if target.is_dir() else sign_file(target, signing_key)
    if as_json:
        print_json({"signed": str(target), "signature": str(written), "key_id": signing_key.key_id})
        return
    click.echo(f"signed {target} with key {signing_key.key_id}: {written}")


@click.group()
def keys() -> None:
    """ed25519 signing keys."""


@keys.command("generate")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for NAME.key (private, mode 0600) and NAME.pub (public: what devices trust).")
@click.option("--name", default="edgetl", show_default=True, help="File name of the pair.")
@overwrite_option("an existing pair of that name")
@json_option
def generate(out, name, overwrite, as_json) -> None:
    """Generate an ed25519 key pair: the private key signs (edgetl sign, edgetl export --sign-key, edgetl-rt sign),
    the public one goes into the --trusted-keys folder of each device."""
    from ..signing import generate_key

    generated = generate_key(out, name=name, overwrite=overwrite)
    if as_json:
        print_json(generated.to_json())
        return
    print_table([("key id", generated.key_id), ("private key", generated.private_key),
                 ("public key", generated.public_key)])
