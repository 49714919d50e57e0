"""Signatures and ``edgetl-rt verify`` on the committed tiny bundle: keys, signing a bundle and a single file,
a device with trusted keys refusing what is unsigned, signed by another key or altered (one line naming the file
and the key, exit 13, nothing written), ``verify`` catching every altered, missing or unlisted file (exit 3), and
the runtime without ``cryptography`` (torch-free, in a child interpreter that cannot import it)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY_BUNDLE, import_blocker, make_folder_dataset

from edgetl.cli import main as host
from edgetl.runtime.bundle.folder import Bundle
from edgetl.runtime.bundle.signature import BUNDLE_SIGNATURE, sign_bundle, verify_bundle
from edgetl.runtime.cli import main as rt
from edgetl.runtime.errors import ExitCode, SignatureError
from edgetl.runtime.signing import (
    TRUSTED_KEYS_ENV,
    check_signature,
    generate_key,
    sign_file,
    verify_file_signature,
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two key pairs: ``ours`` (what the device trusts) and ``other``."""
    root = tmp_path_factory.mktemp("keys")
    return {name: generate_key(root / name) for name in ("ours", "other")}


def _trust(keys, name="ours") -> str:
    return str(os.path.dirname(keys[name].public_key))


def _snapshot(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(args, env=None):
    return CliRunner(env=env).invoke(rt, args)


def _one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture
def signed(tiny_bundle, keys):
    sign_bundle(tiny_bundle, keys["ours"].private_key)
    return tiny_bundle


def test_generate_writes_a_private_key_only_its_owner_reads_and_a_public_key(keys):
    ours = keys["ours"]
    assert stat.S_IMODE(os.stat(ours.private_key).st_mode) == 0o600
    assert "PUBLIC KEY" in open(ours.public_key).read() and len(ours.key_id) == 16
    assert keys["other"].key_id != ours.key_id
    again = CliRunner().invoke(rt, ["keys", "generate", "--out", os.path.dirname(ours.private_key)])
    assert again.exit_code == ExitCode.CONFIG and "already exists" in again.stderr     # never replaced silently


def test_a_signed_bundle_verifies_and_runs_on_a_device_that_trusts_its_key(signed, keys, tmp_path):
    result = _run(["verify", str(signed), "--trusted-keys", _trust(keys), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["signature"]["trusted_key"] == keys["ours"].key_id
    assert {f["file"] for f in report["files"]} >= {"model.onnx", "check.npz", "learning/features.npz", "head.npz"}
    images = make_folder_dataset(tmp_path / "images", classes=("red", "green", "blue"), per_class=2, size=(36, 36))
    evaluated = _run(["evaluate", str(signed), str(images), "--no-measure", "--json"],
                     env={TRUSTED_KEYS_ENV: _trust(keys)})
    assert evaluated.exit_code == 0, evaluated.output


@pytest.mark.parametrize("case", ["unsigned", "other key", "tampered manifest"])
def test_a_device_with_trusted_keys_refuses_the_bundle_naming_the_file_and_the_key(tiny_bundle, keys, tmp_path,
                                                                                  case):
    if case == "other key":
        sign_bundle(tiny_bundle, keys["other"].private_key)
    elif case == "tampered manifest":
        sign_bundle(tiny_bundle, keys["ours"].private_key)
        manifest = json.loads((tiny_bundle / "manifest.json").read_text())
        manifest["labels"] = ["blue", "red", "green"]                  # swap the answers, keep every sha256
        (tiny_bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    before = _snapshot(tiny_bundle)
    image = make_folder_dataset(tmp_path / "images", classes=("red",), per_class=1) / "red" / "0.png"
    for args in (["predict", str(tiny_bundle), str(image)], ["update", str(tiny_bundle), str(image.parent.parent)],
                 ["verify", str(tiny_bundle)]):
        result = _run([*args, "--trusted-keys", _trust(keys)])
        assert result.exit_code == ExitCode.SIGNATURE, result.output
        line = _one_error_line(result)
        assert "manifest.json" in line
        named = {"unsigned": keys["ours"].key_id, "other key": keys["other"].key_id,
                 "tampered manifest": keys["ours"].key_id}[case]
        assert named in line
    assert _snapshot(tiny_bundle) == before              # no timings, no store: nothing written


@pytest.mark.parametrize("name", ["check.npz", "learning/features.npz", "model.onnx"])
def test_verify_catches_a_file_no_job_reads(signed, keys, name):
    with open(signed / name, "r+b") as handle:           # one byte changed, the size kept
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    result = _run(["verify", str(signed), "--json"])
    assert result.exit_code == ExitCode.BUNDLE
    report = json.loads(result.stdout)
    assert report["problems"] == [f"{name}: modified ({report['problems'][0].split('(', 1)[1]}"]
    assert name in _one_error_line(result)
    trusted = _run(["verify", str(signed), "--trusted-keys", _trust(keys)])   # the signature holds, the file not
    assert trusted.exit_code == ExitCode.BUNDLE and name in _one_error_line(trusted)


def test_evaluate_checks_every_file_before_it_runs(tiny_bundle, tmp_path):
    (tiny_bundle / "check.npz").write_bytes(b"not the check set")
    images = make_folder_dataset(tmp_path / "images", classes=("red", "green", "blue"), per_class=1, size=(36, 36))
    before = _snapshot(tiny_bundle)
    result = _run(["evaluate", str(tiny_bundle), str(images)])
    assert result.exit_code == ExitCode.BUNDLE and "check.npz" in _one_error_line(result)
    assert _snapshot(tiny_bundle) == before              # refused before measuring wrote timings


def test_verify_names_a_missing_file_and_files_the_manifest_does_not_list(signed, keys):
    (signed / "learning" / "features.npz").unlink()
    sign_file(signed / "model.onnx", keys["other"].private_key)            # model.onnx.sig, by another key
    (signed / "extra.onnx").write_bytes(b"\0")
    (signed / "store").mkdir()
    (signed / "store" / "device-state").write_bytes(b"\0")                  # the device's own state: not listed
    result = _run(["verify", str(signed), "--json"])
    assert result.exit_code == ExitCode.BUNDLE
    problems = json.loads(result.stdout)["problems"]
    assert problems == ["learning/features.npz: missing", "extra.onnx: unlisted (the manifest does not list it)",
                        "model.onnx.sig: unlisted (a signature file the manifest does not list, by key "
                        f"{keys['other'].key_id})"]
    assert "and 2 more problem(s)" in _one_error_line(result)


def test_a_single_file_signature_and_its_refusals(tmp_path, keys):
    contribution = tmp_path / "device-7.contrib"
    contribution.write_bytes(np.random.default_rng(0).bytes(4096))
    assert verify_file_signature(contribution, trusted=False).signed is False      # no keys: as before
    with pytest.raises(SignatureError, match=f"device-7.contrib is not signed.*{keys['ours'].key_id}"):
        verify_file_signature(contribution, _trust(keys))
    signed = _run(["sign", str(contribution), "--key", keys["ours"].private_key, "--json"])    # on the device
    assert signed.exit_code == 0, signed.output
    signature = contribution.with_name("device-7.contrib.sig")
    assert json.loads(signed.stdout) == {"signed": str(contribution), "signature": str(signature),
                                         "key_id": keys["ours"].key_id}
    assert verify_file_signature(contribution, _trust(keys)).trusted_key == keys["ours"].key_id
    digest, size = hashlib.sha256(contribution.read_bytes()).hexdigest(), contribution.stat().st_size
    remote = "s3://fleet/device-7.contrib"                   # content streamed, hashed as read: no local file
    assert check_signature(remote, digest, size, signature.read_bytes(), _trust(keys)).key_ids == [
        keys["ours"].key_id]
    with pytest.raises(SignatureError, match="s3://fleet/device-7.contrib was altered after it was signed"):
        check_signature(remote, digest, size + 1, signature.read_bytes(), _trust(keys))
    with pytest.raises(SignatureError, match=f"signed by key {keys['ours'].key_id}, which this device does not"):
        verify_file_signature(contribution, _trust(keys, "other"))
    sign_file(contribution, keys["other"].private_key)                     # co-signed: either key is enough
    assert verify_file_signature(contribution, _trust(keys, "other")).key_ids == [keys["ours"].key_id,
                                                                                  keys["other"].key_id]
    document = json.loads(signature.read_text())
    raw = bytearray(base64.b64decode(document["signatures"][0]["signature"]))
    raw[0] ^= 1
    document["signatures"][0]["signature"] = base64.b64encode(bytes(raw)).decode()
    signature.write_text(json.dumps(document))
    result = _run(["verify", str(contribution)])
    assert result.exit_code == ExitCode.SIGNATURE
    assert f"by key {keys['ours'].key_id} that does not verify" in _one_error_line(result)
    sign_file(contribution, keys["ours"].private_key)
    contribution.write_bytes(contribution.read_bytes()[:-1] + b"\1")
    with pytest.raises(SignatureError, match="device-7.contrib was altered after it was signed"):
        verify_file_signature(contribution)


def test_the_api_bundle_takes_trusted_keys_and_the_host_signs(tiny_bundle, keys):
    with pytest.raises(SignatureError, match="is not signed"):
        Bundle(tiny_bundle, trusted=_trust(keys))
    result = CliRunner().invoke(host, ["sign", str(tiny_bundle), "--key", keys["ours"].private_key, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["key_id"] == keys["ours"].key_id
    assert Bundle(tiny_bundle, trusted=_trust(keys)).trusted.keys.keys() == {keys["ours"].key_id}
    assert verify_bundle(tiny_bundle, trusted=False).ok
    inside = tiny_bundle / "signing.key"
    inside.write_bytes(open(keys["ours"].private_key, "rb").read())
    refused = CliRunner().invoke(host, ["sign", str(tiny_bundle), "--key", str(inside)])
    assert refused.exit_code == ExitCode.CONFIG and "lies inside the bundle" in refused.stderr
    run = tiny_bundle.parent / "run"
    run.mkdir()
    bad = CliRunner().invoke(host, ["export", str(run), "--out", str(tiny_bundle.parent / "out"),
                                    "--sign-key", str(TINY_BUNDLE / "head.npz")])
    assert bad.exit_code == ExitCode.CONFIG and "not an unencrypted ed25519 private key" in bad.stderr
    assert not (tiny_bundle.parent / "out").exists()


def test_unpack_refuses_an_unsigned_archive_before_anything_is_written(tiny_bundle, keys, tmp_path):
    from edgetl.exporters.pack import pack_bundle

    archive = pack_bundle(tiny_bundle, tmp_path / "tiny.tar.gz")
    result = _run(["unpack", str(archive), str(tmp_path / "dest"), "--no-measure", "--trusted-keys", _trust(keys)])
    assert result.exit_code == ExitCode.SIGNATURE and "is not signed" in _one_error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-bundle", "tiny.tar.gz"]
    sign_bundle(tiny_bundle, keys["ours"].private_key)
    archive = pack_bundle(tiny_bundle, tmp_path / "tiny.tar.gz", overwrite=True)
    result = _run(["unpack", str(archive), str(tmp_path / "dest"), "--no-measure", "--trusted-keys", _trust(keys)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "dest" / BUNDLE_SIGNATURE).is_file()


def test_unpack_under_trusted_keys_refuses_an_archive_carrying_a_store(signed, keys, tmp_path):
    """A store is no signature's: one planted in a signed archive would answer before the signed head."""
    import tarfile

    from edgetl.exporters.pack import pack_bundle

    archive = pack_bundle(signed, tmp_path / "tiny.tar.gz")
    planted = tmp_path / "planted.tar.gz"
    with tarfile.open(archive) as source, tarfile.open(planted, "w:gz") as out:
        for member in source.getmembers():
            out.addfile(member, source.extractfile(member))
        head = tmp_path / "head.npz"
        head.write_bytes(b"not the signed head")
        out.add(head, arcname="store/versions/000000/head.npz")
    result = _run(["unpack", str(planted), str(tmp_path / "dest"), "--no-measure", "--trusted-keys", _trust(keys)])
    assert result.exit_code == ExitCode.SIGNATURE and "carries a device's store (store/)" in _one_error_line(result)
    assert not (tmp_path / "dest").exists()


def test_build_engine_under_trusted_keys_refuses_to_break_the_signature(signed, keys):
    """build-engine rewrites manifest.json; a device holds no private key to sign it again."""
    before = _snapshot(signed)
    result = _run(["build-engine", str(signed), "--trusted-keys", _trust(keys)])
    assert result.exit_code == ExitCode.SIGNATURE and "would break the signature" in _one_error_line(result)
    assert _snapshot(signed) == before


def test_trust_is_the_keys_bytes_not_its_short_id(signed, keys):
    """A key whose short id matched a trusted key's (64 bits of a hash) is still not that key."""
    from edgetl.runtime.signing import PublicKey, TrustedKeys, load_public_key

    ours, other = keys["ours"], keys["other"]
    collided = TrustedKeys({ours.key_id: PublicKey(load_public_key(other.public_key).raw, "a key with ours's id")},
                           "test")
    with pytest.raises(SignatureError, match="which this device does not trust"):
        verify_file_signature(signed / "manifest.json", collided, signed / BUNDLE_SIGNATURE)


CHILD = import_blocker("cryptography", "torch", "onnx") + textwrap.dedent(
    """
    import subprocess, sys
    from edgetl.runtime.cli import main
    sys.argv = ["edgetl-rt", *sys.argv[1:]]
    main()
    """
)


def test_without_cryptography_the_runtime_runs_and_trusted_keys_name_the_pip_line(tiny_bundle, keys, tmp_path):
    image = make_folder_dataset(tmp_path / "images", classes=("red",), per_class=1) / "red" / "0.png"
    env = {k: v for k, v in os.environ.items() if k != TRUSTED_KEYS_ENV}
    plain = subprocess.run([sys.executable, "-c", CHILD, "predict", str(tiny_bundle), str(image), "--no-measure"],
                           capture_output=True, text=True, timeout=120, env=env)
    assert plain.returncode == 0, plain.stderr
    keyed = subprocess.run([sys.executable, "-c", CHILD, "verify", str(tiny_bundle)], capture_output=True,
                           text=True, timeout=120, env={**env, TRUSTED_KEYS_ENV: _trust(keys)})
    assert keyed.returncode == ExitCode.MISSING_DEPENDENCY
    assert keyed.stderr.strip().splitlines()[-1].endswith('Install it with: pip install "edgetl[sign]"')
