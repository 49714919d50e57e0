"""Issue 29's signature cases, each refused in one line with its exit code and nothing written, and the time to
verify a bundle whole.

On a copy of BUNDLE (a real Lite0 bundle: `make demo`'s by default), with two fresh ed25519 key pairs (`ours`,
the one the device trusts, and `other`), every case runs as a whole `edgetl-rt` process: an unsigned bundle
with trusted keys, one signed by another key, a manifest altered after signing, an altered `check.npz`,
`learning/features.npz` and `model.onnx` (each changed in one byte, size kept) caught by `verify`, a missing file,
a stray signature file by another key, a single file whose signature or content was altered, an unsigned
archive given to `unpack`.  "Nothing written" compares the bundle folder's file names and contents (and the
destination of `unpack`) before and after.  Then the time to verify the bundle whole (every sha256 and the
signature), in process (median of --rounds) and as a whole `edgetl-rt verify` process (median of 3).
Run: python benchmarks/verify_bundle.py [--bundle demo-output/bundle] [--rounds 7]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import save_result

from edgetl.exporters.pack import pack_bundle
from edgetl.runtime.bundle.folder import Bundle
from edgetl.runtime.bundle.manifest import read_bundle_manifest
from edgetl.runtime.bundle.signature import listed_files, sign_bundle, verify_bundle
from edgetl.runtime.signing import generate_key, sign_file

RT = [sys.executable, "-m", "edgetl.runtime"]


def snapshot(folder: Path) -> dict:
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def flip_byte(path: Path, offset: int = 4096) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def run(args: list[str], env: dict | None = None) -> tuple[int, str]:
    out = subprocess.run([*RT, *args], capture_output=True, text=True, timeout=600,
                         env={**os.environ, **(env or {})})
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    return out.returncode, errors[0] if len(errors) == 1 else f"<{len(errors)} error lines> {out.stderr[-300:]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default="demo-output/bundle")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    source = Path(args.bundle)
    manifest = read_bundle_manifest(source)
    work = Path(tempfile.mkdtemp(prefix="verify-bundle-"))
    env_clean = {"EDGETL_TRUSTED_KEYS": ""}
    try:
        keys = {name: generate_key(work / "keys" / name) for name in ("ours", "other")}
        trust = ["--trusted-keys", str(work / "keys" / "ours")]
        image = work / "image.png"
        from PIL import Image

        Image.new("RGB", (64, 64), (120, 80, 40)).save(image)
        (work / "data" / manifest.labels[0]).mkdir(parents=True)
        shutil.copy(image, work / "data" / manifest.labels[0] / "0.png")

        def fresh(name: str, signer: str | None = "ours") -> Path:
            copy = work / name
            shutil.copytree(source, copy, ignore=shutil.ignore_patterns("store", "timings", "cache", "manifest.sig"))
            if signer:
                sign_bundle(copy, keys[signer].private_key)
            return copy

        cases = []

        def case(name: str, folder: Path, argv: list[str], expected: int, prepare=None, watch: Path | None = None):
            if prepare:
                prepare(folder)
            watched = watch or folder
            before = snapshot(watched)
            code, line = run(argv, env_clean)
            cases.append({"case": name, "command": "edgetl-rt " + " ".join(
                a.replace(str(work) + "/", "") for a in argv), "exit_code": code, "expected": expected,
                "error": line.replace(str(work) + "/", ""), "nothing_written": snapshot(watched) == before})

        b = fresh("unsigned", signer=None)
        case("unsigned bundle, trusted keys", b, ["evaluate", str(b), str(work / "data"), *trust], 13)
        b = fresh("other-key", signer="other")
        case("signed by another key", b, ["predict", str(b), str(image), *trust], 13)

        def alter_manifest(folder: Path) -> None:
            document = json.loads((folder / "manifest.json").read_text())
            document["labels"] = document["labels"][1:] + document["labels"][:1]
            (folder / "manifest.json").write_text(json.dumps(document, indent=2))

        b = fresh("manifest")
        case("manifest altered after signing", b, ["predict", str(b), str(image), *trust], 13, alter_manifest)
        for name in ("check.npz", "learning/features.npz", "model.onnx"):
            b = fresh(name.replace("/", "-"))
            case(f"{name} altered (verify)", b, ["verify", str(b), *trust], 3, lambda f, n=name: flip_byte(f / n))
        b = fresh("check-evaluate", signer=None)
        case("check.npz altered, evaluate without keys", b, ["evaluate", str(b), str(work / "data")], 3,
             lambda f: flip_byte(f / "check.npz"))
        b = fresh("missing")
        case("learning/features.npz missing (verify)", b, ["verify", str(b), *trust], 3,
             lambda f: (f / "learning" / "features.npz").unlink())
        b = fresh("stray-sig")
        case("stray signature file by another key (verify)", b, ["verify", str(b), *trust], 3,
             lambda f: sign_file(f / "model.onnx", keys["other"].private_key))
        b = fresh("cosigned")
        case("manifest.sig co-signed by another key (accepted: the trusted signature holds)", b,
             ["verify", str(b), *trust], 0, lambda f: sign_bundle(f, keys["other"].private_key))

        contribution = work / "device-7.contrib"
        contribution.write_bytes(os.urandom(1 << 20))

        def forge_signature(_folder: Path) -> None:
            sig = contribution.with_name(contribution.name + ".sig")
            document = json.loads(sig.read_text())
            raw = bytearray(base64.b64decode(document["signatures"][0]["signature"]))
            raw[0] ^= 1
            document["signatures"][0]["signature"] = base64.b64encode(bytes(raw)).decode()
            sig.write_text(json.dumps(document, indent=2))

        singles = work / "singles"
        singles.mkdir()
        case("single file unsigned, trusted keys", singles, ["verify", str(contribution), *trust], 13)
        sign_file(contribution, keys["other"].private_key)
        case("single file signed by another key", singles, ["verify", str(contribution), *trust], 13)
        contribution.with_name(contribution.name + ".sig").unlink()
        sign_file(contribution, keys["ours"].private_key)
        case("single file: signature altered", singles, ["verify", str(contribution), *trust], 13, forge_signature)
        contribution.with_name(contribution.name + ".sig").unlink()
        sign_file(contribution, keys["ours"].private_key)
        case("single file: content altered after signing", singles, ["verify", str(contribution), *trust], 13,
             lambda _f: flip_byte(contribution, 100))

        b = fresh("to-pack", signer=None)
        archive = pack_bundle(b, work / "unsigned.tar.gz")
        dest = work / "unpacked"
        case("unsigned archive given to unpack", b, ["unpack", str(archive), str(dest), "--no-measure", *trust], 13,
             watch=dest)

        # time to verify the bundle whole
        b = fresh("timed")
        hashed = sum((b / name).stat().st_size for name in [*listed_files(manifest), "manifest.json"])
        in_process = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            report = verify_bundle(b, trusted=str(work / "keys" / "ours"))
            in_process.append(time.perf_counter() - started)
            assert report.ok, report.problems
        listed_only = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            Bundle(b, trusted=False).verify_listed()          # what evaluate and serve add at load
            listed_only.append(time.perf_counter() - started)
        process = []
        for _ in range(3):
            started = time.perf_counter()
            code, _ = run(["verify", str(b), *trust], env_clean)
            process.append(time.perf_counter() - started)
            assert code == 0
    finally:
        shutil.rmtree(work, ignore_errors=True)

    timing = {"bundle": str(source), "backbone": manifest.backbone["name"], "files": len(listed_files(manifest)),
              "bytes_hashed": hashed, "verify_in_process_s": statistics.median(in_process),
              "hash_listed_files_s": statistics.median(listed_only),
              "edgetl_rt_verify_process_s": statistics.median(process), "rounds": args.rounds}
    width = max(len(c["case"]) for c in cases)
    print(f"{'case':<{width}}  exit  nothing written  error line")
    for c in cases:
        flag = "" if c["exit_code"] == c["expected"] else f" (EXPECTED {c['expected']})"
        print(f"{c['case']:<{width}}  {c['exit_code']:>4}{flag}  {'yes' if c['nothing_written'] else 'NO':<15}  "
              f"{c['error'] if c['exit_code'] else '-'}")
    print()
    print(f"verify {timing['backbone']} bundle whole ({timing['files']} files, {hashed / 1e6:.1f} MB): "
          f"{timing['verify_in_process_s'] * 1e3:.0f} ms in process (Bundle.verify_listed, what evaluate and serve "
          f"add at load: {timing['hash_listed_files_s'] * 1e3:.0f} ms), "
          f"{timing['edgetl_rt_verify_process_s']:.2f} s as a whole `edgetl-rt verify` process (medians)")
    path = save_result("verify_bundle", {"cases": cases, "timing": timing})
    print(f"wrote {path}")
    if any(c["exit_code"] != c["expected"] or not c["nothing_written"] for c in cases):
        sys.exit(1)


if __name__ == "__main__":
    main()
