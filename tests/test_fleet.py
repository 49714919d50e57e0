"""A fleet that learns as one: contribute on devices, merge on the host, pull back (issue 29).

Small synthetic features (d = 16) on copies of the committed tiny bundle, seeded; the centralized fit is computed
here from the base bundle's statistics plus every training row the devices learned.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl.fleet import merge_bundles
from edgetl.runtime.bundle.contribution import Contribution, bundle_identity, payload_digest, verify_contribution
from edgetl.runtime.bundle.folder import Bundle
from edgetl.runtime.bundle.heads import RidgeHead, load_head
from edgetl.runtime.bundle.store import FeatureStore, Samples
from edgetl.runtime.errors import BundleError, ConfigError, DataError
from edgetl.runtime.learning import UpdateSettings, learn_features, rollback_bundle
from edgetl.runtime.learning.fleet import contribute_bundle, pull_bundle
from edgetl.runtime.learning.versions import bundle_state

DIM = 16
NAMES = ["blue", "green", "red", "k0", "k1"]
CENTRES = np.random.default_rng(0).normal(0, 3, (len(NAMES), DIM))
LOOSE = UpdateSettings(max_accuracy_drop=100.0)
TINY = Path(__file__).resolve().parent / "data" / "tiny-bundle"
#: which classes each simulated device sees: overlaps (k0 on two devices) and classes new to the bundle (k0, k1)
SHARES = [(0, 3), (1, 3, 4), (2,)]


def _learn(bundle: Path, rng: np.random.Generator, classes, n: int = 8) -> None:
    y = rng.choice(classes, n)
    x = (CENTRES[y] + rng.normal(0, 1, (n, DIM))).astype(np.float32)
    learn_features(bundle, x, [NAMES[v] for v in y], [rng.bytes(16).hex() for _ in y], LOOSE)


def _new_rows(bundle: Path) -> tuple[np.ndarray, list[str]]:
    """The training rows a device learned beyond the bundle's own (features, class names)."""
    store = FeatureStore(bundle)
    version = store.version()
    rows = store.samples(version, DIM)
    with np.load(TINY / "learning" / "features.npz") as shipped:
        seed = set(shipped["keys"].tolist())
    rows = rows.select(~rows.holdout & np.array([k not in seed for k in rows.keys.tolist()], dtype=bool))
    return rows.features, [version.classes[i] for i in rows.labels]


def _centralized(devices: list[Path], classes: list[str]):
    """The base bundle's statistics plus every device's training rows, in ``classes`` order."""
    state, _ = bundle_state(Bundle(TINY))
    state = state.grown(len(classes))
    for device in devices:
        x, names = _new_rows(device)
        state = state.with_rows(Samples(x, np.array([classes.index(n) for n in names]), np.zeros(len(x), bool),
                                        np.zeros(len(x), "<U64")))
    return state


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture
def fleet(tmp_path):
    """Three devices on copies of the tiny bundle, each having learned its share in two updates."""
    rng = np.random.default_rng(7)
    devices = []
    for i, share in enumerate(SHARES):
        device = tmp_path / f"device{i}"
        shutil.copytree(TINY, device)
        for _ in range(2):
            _learn(device, rng, share)
        devices.append(device)
    return tmp_path, devices, rng


def _contribute_all(root: Path, devices: list[Path]) -> list[Path]:
    files = []
    (root / "contributions").mkdir(exist_ok=True)
    for i, device in enumerate(devices):
        files.append(root / "contributions" / f"c{i}.npz")
        contribute_bundle(device, files[-1])
    return files


def test_merge_is_the_centralized_fit_for_ridge_and_ncm(fleet):
    root, devices, _ = fleet
    files = _contribute_all(root, devices)
    report = merge_bundles(TINY, [str(f) for f in files], root / "merged")
    assert report.classes == NAMES and report.new_classes == ["k0", "k1"] and len(report.devices) == 3
    central = _centralized(devices, report.classes)
    assert report.samples == central.ridge.count
    assert report.samples_per_class == {c: int(n) for c, n in zip(NAMES, central.ridge.target_sum)}
    head = load_head(root / "merged" / "head.npz")
    expected = RidgeHead.solve(central.ridge, report.alpha)
    assert _relative(head.weight, expected.weight) < 1e-6 and _relative(head.bias, expected.bias) < 1e-6
    merged = Bundle(root / "merged")                              # a normal bundle: every sha256 holds
    assert merged.manifest.labels == NAMES and not any(a.role == "fused" for a in merged.manifest.artifacts)
    assert {c["id"] for c in merged.manifest.fleet["contributions"]} == \
        {verify_contribution(f).id for f in files}
    ncm = merge_bundles(TINY, [str(root / "contributions")], root / "merged-ncm", head="ncm")   # a folder
    ncm_head = load_head(root / "merged-ncm" / "head.npz")
    assert ncm.head == "ncm" and _relative(ncm_head.sums, central.ncm_sums) < 1e-9
    assert np.array_equal(ncm_head.counts, central.ncm_counts)
    # the order of the contributions changes nothing but rounding
    again = merge_bundles(TINY, [str(f) for f in reversed(files)], root / "merged-reversed")
    assert again.alpha == pytest.approx(report.alpha, rel=1e-12)
    assert _relative(load_head(root / "merged-reversed" / "head.npz").weight, head.weight) < 1e-9


def test_contribute_is_idempotent_and_covers_only_what_is_new(fleet):
    root, devices, rng = fleet
    first = contribute_bundle(devices[0], root / "a1.npz")
    with pytest.raises(DataError, match="nothing to contribute"):
        contribute_bundle(devices[0], root / "a2.npz")
    assert not (root / "a2.npz").exists()
    before = len(_new_rows(devices[0])[1])
    _learn(devices[0], rng, SHARES[0])
    second = contribute_bundle(devices[0], root / "a2.npz")
    assert first.n_samples == before and second.n_samples == len(_new_rows(devices[0])[1]) - before
    assert second.versions["after"] == first.versions["to"] and second.id != first.id
    assert second.device == first.device                          # the stable id kept in the store
    report = merge_bundles(TINY, [str(root / "a1.npz"), str(root / "a2.npz")], root / "merged")
    central = _centralized(devices[:1], report.classes)
    rollback_bundle(devices[0], to=first.versions["to"] - 1)     # before what it contributed: refused, not negative
    with pytest.raises(DataError, match="rolled back past a contribution"):
        contribute_bundle(devices[0], root / "a3.npz")
    expected = RidgeHead.solve(central.ridge, report.alpha)
    assert _relative(load_head(root / "merged" / "head.npz").weight, expected.weight) < 1e-6


def _rewritten(source: Path, target: Path, change) -> Path:
    """A copy of a contribution with its header or arrays changed by ``change(header, arrays)``."""
    contribution = verify_contribution(source)
    change(contribution.header, contribution.arrays)
    target.write_bytes(Contribution(contribution.header, contribution.arrays).to_bytes())
    return target


def test_merge_refuses_bad_contributions_by_name_and_writes_nothing(fleet):
    root, devices, _ = fleet
    good = _contribute_all(root, devices[:2])
    other = root / "other-base"
    shutil.copytree(TINY, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["labels"] = ["blue", "green", "crimson"]             # another model: another identity
    (other / "manifest.json").write_text(json.dumps(manifest))
    _learn(other, np.random.default_rng(1), (0, 1))
    foreign = root / "foreign.npz"
    contribute_bundle(other, foreign)

    def flip(header, arrays):
        arrays["class_sums"][0, 0] += 1.0                         # the payload no longer matches its sha256

    def narrow(header, arrays):
        header["feature_dim"] = 8
        for name in ("class_sums", "ncm_sums"):
            arrays[name] = np.ascontiguousarray(arrays[name][:, :8])
        arrays["feature_sum"] = arrays["feature_sum"][:8].copy()
        arrays["gram_upper"] = np.zeros(36)
        arrays.pop("gram_factor", None)
        header["payload_sha256"] = payload_digest(arrays)

    def twins(header, arrays):                                    # consistent with its checksum, still malformed
        header["classes"][1] = header["classes"][0]

    def stray(header, arrays):
        arrays["rows_labels"][0] = len(header["classes"]) + 5
        header["payload_sha256"] = payload_digest(arrays)

    broken = _rewritten(good[0], root / "broken.npz", flip)
    narrow_file = _rewritten(good[0], root / "narrow.npz", narrow)
    duplicated = _rewritten(good[0], root / "twins.npz", twins)
    with_rows = root / "with-rows.npz"
    contribute_bundle(devices[2], with_rows, with_rows=True)
    strayed = _rewritten(with_rows, root / "stray.npz", stray)
    truncated = root / "truncated.npz"
    truncated.write_bytes(good[1].read_bytes()[:200])
    cases = [(foreign, "another base bundle"), (good[0], "duplicates"), (narrow_file, "has 8 features"),
             (broken, "fails its sha256 check"), (truncated, "not a readable .npz"),
             (duplicated, "distinct non-empty class names"), (strayed, "row labels outside its")]
    for bad, words in cases:
        with pytest.raises(BundleError, match=words) as caught:
            merge_bundles(TINY, [str(good[0]), str(good[1]), str(bad)], root / "merged")
        assert str(bad) in str(caught.value) and "\n" not in str(caught.value)
        assert not (root / "merged").exists() and not list(root.glob(".merged*"))
    with pytest.raises(ConfigError, match="--head ridge"):
        base = root / "sgd-base"
        shutil.copytree(TINY, base)
        m = json.loads((base / "manifest.json").read_text())
        m["head"]["kind"] = "linear"
        (base / "manifest.json").write_text(json.dumps(m))
        merge_bundles(base, [str(good[0])], root / "merged")
    report = merge_bundles(TINY, [str(good[0]), str(good[1])] + [str(bad) for bad, _ in cases], root / "merged",
                           skip_bad=True)
    assert len(report.contributions) == 2 and [s["source"] for s in report.skipped] == [str(b) for b, _ in cases]


def test_pull_adds_what_the_merge_lacks_never_twice_and_rollback_undoes_it(fleet):
    root, devices, rng = fleet
    files = _contribute_all(root, devices)
    report = merge_bundles(TINY, [str(f) for f in files], root / "merged")
    device = devices[0]
    _learn(device, rng, (0, 4), n=10)                             # learned after its contribution: kept
    store = FeatureStore(device)
    before = store.version()
    before_count = store.state(before, DIM).ridge.count
    pulled = pull_bundle(device, root / "merged")
    central = _centralized(devices, NAMES)                        # every contributed sample + device 0's new ones
    state = store.state(store.version(), DIM)
    assert pulled.version == before.version + 1 and state.ridge.count == central.ridge.count
    assert Bundle(device).current_head().version == pulled.version      # what predict and serve answer with
    order = [store.version().classes.index(c) for c in NAMES]
    assert np.allclose(state.ridge.target_sum[order], central.ridge.target_sum)
    head = store.head(store.version())
    expected = RidgeHead.solve(central.ridge, report.alpha)
    assert _relative(head.weight[order], expected.weight) < 1e-6
    with pytest.raises(DataError, match="already the base"):
        pull_bundle(device, root / "merged")
    # what it contributes next is only what the merge lacked: the samples learned after its contribution, and
    # after the pull (an update carries the pull's record forward)
    _learn(device, rng, (0, 1), n=6)
    later = contribute_bundle(device, root / "after-pull.npz")
    assert later.base == bundle_identity(Bundle(root / "merged").manifest)
    assert later.n_samples == store.state(store.version(), DIM).ridge.count - report.samples
    rolled = rollback_bundle(device, to=before.version)
    assert rolled.fleet == before.fleet == {} and store.state(store.version(), DIM).ridge.count == before_count


def test_pull_refuses_a_merge_of_another_base(fleet, tmp_path):
    root, devices, _ = fleet
    files = _contribute_all(root, devices)
    merge_bundles(TINY, [str(f) for f in files], root / "merged")
    pull_bundle(devices[1], root / "merged")
    merge_bundles(TINY, [str(files[0])], root / "merged-a")      # device 1 learns from 'merged' now
    with pytest.raises(BundleError, match="merged onto bundle"):
        pull_bundle(devices[1], root / "merged-a")


KILLED = textwrap.dedent("""
    import os, shutil, sys, signal
    job, kind, when, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]

    def killing(original):
        def call(src, dst, *a, **k):
            hit = kind in str(dst)
            if hit and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = original(src, dst, *a, **k)
            if hit:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return call
    os.replace, shutil.copy2 = killing(os.replace), killing(shutil.copy2)
    if job == "pull":
        from edgetl.runtime.learning.fleet import pull_bundle
        pull_bundle(args[0], args[1])
    else:
        from edgetl.fleet import merge_bundles
        merge_bundles(args[0], args[1:-1], args[-1])
""")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != "lock"}


def test_sigkill_during_merge_and_during_pull_leaves_everything_as_it_was(fleet, child_python):
    root, devices, _ = fleet
    files = _contribute_all(root, devices)
    base = root / "base"
    shutil.copytree(TINY, base)
    merged = root / "merged"
    before = _snapshot(base)
    for point in ("backbone.onnx", "merged"):       # a copy into the staging folder, and its final rename
        child = subprocess.run([child_python, "-c", KILLED, "merge", point, "before", str(base),
                                *map(str, files), str(merged)], capture_output=True, text=True, timeout=120)
        assert child.returncode == -signal.SIGKILL, child.stderr[-400:]
        assert not merged.exists() and _snapshot(base) == before
    merge_bundles(base, [str(f) for f in files], merged)
    device = devices[0]
    store = FeatureStore(device)
    version, count = store.version().version, store.state(store.version(), DIM).ridge.count
    for point, when in (("residuals", "after"), ("versions", "after"), ("CURRENT", "before")):
        child = subprocess.run([child_python, "-c", KILLED, "pull", point, when, str(device), str(merged)],
                               capture_output=True, text=True, timeout=120)
        assert child.returncode == -signal.SIGKILL, child.stderr[-400:]
        store = FeatureStore(device)
        assert store.version().version == version and store.state(store.version(), DIM).ridge.count == count
    report = pull_bundle(device, merged)                          # and the store still takes it
    assert report.version == version + 1


def test_commands_print_json(fleet):
    from edgetl.cli import main as host
    from edgetl.runtime.cli import main as device

    root, devices, _ = fleet
    runner = CliRunner()
    out = runner.invoke(device, ["contribute", str(devices[0]), "--out", str(root / "c.npz"), "--json",
                                 "--device-id", "shop-1"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    assert summary["device"] == "shop-1" and summary["samples"] and summary["gram_form"] in ("upper", "factor")
    again = runner.invoke(device, ["contribute", str(devices[0]), "--out", str(root / "c2.npz")])
    assert again.exit_code == 8 and "nothing to contribute" in again.output
    merged = runner.invoke(host, ["fleet", "merge", str(TINY), str(root / "c.npz"), "--out", str(root / "m"),
                                  "--json"])
    assert merged.exit_code == 0, merged.output
    assert json.loads(merged.output)["devices"] == ["shop-1"]
    pulled = runner.invoke(device, ["pull", str(devices[0]), str(root / "m"), "--json"])
    assert pulled.exit_code == 0, pulled.output
    assert json.loads(pulled.output)["head"] == "ridge"


def test_a_small_contribution_stores_its_gram_matrix_as_an_exact_factor(tmp_path):
    device = tmp_path / "device"
    shutil.copytree(TINY, device)
    rng = np.random.default_rng(3)
    y = np.array([0, 1, 2, 0, 1])
    x = (CENTRES[y] + rng.normal(0, 1, (5, DIM))).astype(np.float32)
    keys = [rng.bytes(16).hex() for _ in y]
    learn_features(device, x, [NAMES[v] for v in y], keys, UpdateSettings(max_accuracy_drop=100.0,
                                                                          holdout_fraction=0.0))
    summary = contribute_bundle(device, tmp_path / "c.npz")
    contribution = verify_contribution(tmp_path / "c.npz")
    assert summary.gram_form == "factor" and contribution.arrays["gram_factor"].shape == (DIM, 5)
    gram = x.astype(np.float64).T @ x.astype(np.float64)
    assert _relative(contribution.gram(), gram) < 1e-9
    assert len(io.BytesIO(contribution.to_bytes()).getvalue()) == summary.bytes


def test_merge_reads_contributions_from_s3_through_a_real_s3_server(fleet, monkeypatch):
    """moto's server mode: a real S3-compatible HTTP endpoint, started here; fsspec and s3fs talk to it over
    HTTP as they would to AWS."""
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    import boto3

    root, devices, _ = fleet
    files = _contribute_all(root, devices)
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for key, value in (("AWS_ACCESS_KEY_ID", "fleet"), ("AWS_SECRET_ACCESS_KEY", "fleet"),
                           ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", endpoint)):
            monkeypatch.setenv(key, value)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="fleet")
        for i, file in enumerate(files):
            s3.upload_file(str(file), "fleet", f"round-1/shop-{i}/{file.name}")
        s3.put_object(Bucket="fleet", Key="round-1/README.txt", Body=b"not a contribution")
        report = merge_bundles(TINY, ["s3://fleet/round-1/"], root / "merged")
        assert [c["source"] for c in report.contributions] == \
            [f"s3://fleet/round-1/shop-{i}/c{i}.npz" for i in range(len(files))]
        local = merge_bundles(TINY, [str(f) for f in files], root / "merged-local")
        assert local.alpha == report.alpha and local.samples_per_class == report.samples_per_class
        s3.put_object(Bucket="fleet", Key="round-1/shop-9/c0.npz", Body=files[0].read_bytes())
        with pytest.raises(BundleError, match="s3://fleet/round-1/shop-9/c0.npz duplicates"):
            merge_bundles(TINY, ["s3://fleet/round-1/"], root / "merged-again")
        assert not (root / "merged-again").exists()
    finally:
        server.stop()


def test_rows_travel_only_when_asked_and_only_once(fleet):
    root, devices, rng = fleet
    plain = contribute_bundle(devices[1], root / "plain.npz")
    assert plain.rows == 0 and not any(k.startswith("rows") for k in verify_contribution(root / "plain.npz").arrays)
    _learn(devices[1], rng, SHARES[1])
    first = contribute_bundle(devices[1], root / "rows1.npz", with_rows=True)
    _learn(devices[1], rng, SHARES[1])
    second = contribute_bundle(devices[1], root / "rows2.npz", with_rows=True)
    keys = [set(verify_contribution(root / f"rows{i}.npz").arrays["rows_keys"].tolist()) for i in (1, 2)]
    assert first.rows == 3 * 8                              # what the device learned: not the bundle's own rows
    assert second.rows == 8 and not keys[0] & keys[1]      # the 8 new rows, nothing resent
    without = merge_bundles(TINY, [str(root / "plain.npz")], root / "m0")
    report = merge_bundles(TINY, [str(root / f) for f in ("plain.npz", "rows1.npz", "rows2.npz")], root / "m1")
    held = sum(int(verify_contribution(root / f"rows{i}.npz").arrays["rows_holdout"].sum()) for i in (1, 2))
    assert report.alpha_holdout_n == without.alpha_holdout_n + held


def test_pull_keeps_an_own_contribution_the_merge_lacks(fleet):
    root, devices, rng = fleet
    files = _contribute_all(root, devices)
    merge_bundles(TINY, [str(f) for f in files], root / "merged")
    _learn(devices[0], rng, SHARES[0])
    late = contribute_bundle(devices[0], root / "late.npz")          # contributed after the merge was made
    pull_bundle(devices[0], root / "merged")
    store = FeatureStore(devices[0])
    assert store.state(store.version(), DIM).ridge.count == _centralized(devices, NAMES).ridge.count
    again = contribute_bundle(devices[0], root / "again.npz")         # on the merged base, it travels again
    assert again.n_samples == late.n_samples and again.base != late.base


def test_an_adapted_device_neither_contributes_nor_pulls(fleet):
    from dataclasses import asdict

    from edgetl.runtime.bundle.store import Version

    root, devices, _ = fleet
    files = _contribute_all(root, devices[1:])
    merge_bundles(TINY, [str(f) for f in files], root / "merged")
    store = FeatureStore(devices[0])
    with store.locked():
        parent = store.version()
        adapted = Version(**{**asdict(parent), "version": -1, "parent": parent.version, "action": "adapt",
                             "files": {}})
        store.commit(adapted, store.head(parent), {"mean": np.zeros(DIM), "scale": np.ones(DIM)})
    with pytest.raises(ConfigError, match="feature adapter"):
        contribute_bundle(devices[0], root / "c.npz")
    with pytest.raises(ConfigError, match="feature adapter"):
        pull_bundle(devices[0], root / "merged")
    assert not (root / "c.npz").exists() and FeatureStore(devices[0]).version().version == adapted.version


def test_signed_contributions_and_merges_are_trusted_by_key_and_nothing_else(fleet, monkeypatch):
    """With trusted keys a merge takes only contributions signed by them, names the file and key of any other,
    and signs its output; a device pulls only a merge signed by a trusted key."""
    from edgetl.runtime.bundle.signature import sign_bundle, verify_bundle
    from edgetl.runtime.errors import SignatureError
    from edgetl.runtime.signing import TRUSTED_KEYS_ENV, generate_key

    root, devices, _ = fleet
    ours, other = generate_key(root / "keys", "ours"), generate_key(root / "other-keys", "other")
    base = root / "base"
    shutil.copytree(TINY, base)
    for bundle in (base, *devices):
        sign_bundle(bundle, ours.private_key)
    (root / "contributions").mkdir()
    files = [root / "contributions" / f"c{i}.npz" for i in range(3)]
    for device, file, key in zip(devices, files, (ours.private_key, other.private_key, None)):
        summary = contribute_bundle(device, file, sign_key=key)
        assert (summary.signature is not None) == (key is not None)
    monkeypatch.setenv(TRUSTED_KEYS_ENV, ours.public_key)
    for bad, why in ((files[1], f"signed by key {other.key_id}"), (files[2], "is not signed")):
        with pytest.raises(SignatureError, match=why) as refused:
            merge_bundles(base, [str(files[0]), str(bad)], root / "merged")
        assert str(bad) in str(refused.value) and not (root / "merged").exists()
    report = merge_bundles(base, [str(f) for f in files], root / "merged", skip_bad=True,
                           sign_key=ours.private_key)
    assert [s["source"] for s in report.skipped] == [str(files[1]), str(files[2])]
    assert verify_bundle(root / "merged", trusted=ours.public_key).ok
    unsigned = root / "unsigned-merge"
    monkeypatch.delenv(TRUSTED_KEYS_ENV)
    merge_bundles(base, [str(files[0])], unsigned)
    monkeypatch.setenv(TRUSTED_KEYS_ENV, ours.public_key)
    before = FeatureStore(devices[0]).version().version
    with pytest.raises(SignatureError, match="not signed"):
        pull_bundle(devices[0], unsigned)
    assert FeatureStore(devices[0]).version().version == before
    assert pull_bundle(devices[0], root / "merged").version == before + 1


def test_a_device_rolled_back_past_a_new_class_it_contributed_refuses_to_contribute_but_pulls(tmp_path):
    """Learn a class new to the bundle, contribute it, roll back before it: contributing is refused by name (the
    store holds fewer samples than it sent), and the merge holding that class can still be pulled."""
    rng = np.random.default_rng(11)
    device = tmp_path / "device"
    shutil.copytree(TINY, device)
    _learn(device, rng, [0, 1])                      # version 1: known classes only
    _learn(device, rng, [3, 0])                      # version 2: k0, new to the bundle
    contribute_bundle(device, tmp_path / "c.npz")
    merge_bundles(TINY, [str(tmp_path / "c.npz")], tmp_path / "merged")
    rollback_bundle(device, to=1)
    assert "k0" not in FeatureStore(device).version().classes
    with pytest.raises(DataError, match="rolled back past a contribution"):
        contribute_bundle(device, tmp_path / "c2.npz")
    report = pull_bundle(device, tmp_path / "merged")
    assert "k0" in report.new_classes and "k0" in FeatureStore(device).version().classes


def test_classes_taken_by_a_pull_are_known_to_the_unknown_scorer(fleet):
    """A device that never saw k0 and k1 takes them with the merge: its unknown scorer knows them through the
    merged statistics (one row per class from the NCM sums), so their inputs are not flagged unknown."""
    root, devices, rng = fleet
    merge_bundles(TINY, [str(f) for f in _contribute_all(root, devices)], root / "merged")
    pull_bundle(devices[2], root / "merged")           # device 2 learned "red" only
    state = Bundle(devices[2]).current_head()
    for name in ("k0", "k1"):
        x = (CENTRES[[NAMES.index(name)] * 200] + rng.normal(0, 1, (200, DIM))).astype(np.float32)
        logits = state.head.logits(x)
        assert (logits.argmax(axis=1) == state.labels.index(name)).mean() > 0.95
        flagged = state.unknown.scorer.scores(x, logits) > state.unknown.settings.threshold
        assert flagged.mean() < 0.2, (name, flagged.mean())
    # each enters as its mean raw feature (what a projection with a bias needs), not a unit-length direction
    store = FeatureStore(devices[2])
    features, labels, _ = store.unknown_rows(store.version(), DIM)
    for name in ("k0", "k1"):
        (row,) = features[labels == state.labels.index(name)]
        np.testing.assert_allclose(row, CENTRES[NAMES.index(name)], atol=1.0)


def test_a_merge_carries_the_bases_unknown_settings_and_projection(tmp_path):
    """The base's threshold and banks belong to its old classes and rows and are left out; its method and the
    projection the export trained travel, so the merged bundle and the devices that pull it score as the base did."""
    from edgetl.exporters.learning_data import write_unknown

    base = tmp_path / "base"
    shutil.copytree(TINY, base)
    block = write_unknown(base, Bundle(base).exported_head, "combined", 0.95)
    manifest = json.loads((base / "manifest.json").read_text())
    (base / "manifest.json").write_text(json.dumps({**manifest, "unknown": block}, indent=2))
    device = tmp_path / "device"
    shutil.copytree(base, device)
    rng = np.random.default_rng(3)
    for _ in range(2):
        _learn(device, rng, (3, 4))
    merge_bundles(base, [str(f) for f in _contribute_all(tmp_path, [device])], tmp_path / "merged")
    merged = Bundle(tmp_path / "merged")
    carried = merged.manifest.unknown
    assert carried["method"] == "combined" and "threshold" not in carried
    shipped, kept = np.load(base / block["file"]), np.load(merged.file(carried))
    assert set(kept.files) == {"method", "projection_w", "projection_b"}
    np.testing.assert_array_equal(kept["projection_w"], shipped["projection_w"])
    state = merged.exported_unknown
    assert state.scorer.parts == ("margin", "knn", "projected-knn") and state.settings.threshold is not None
    pull_bundle(device, tmp_path / "merged")
    assert Bundle(device).current_head().unknown.scorer.parts == ("margin", "knn", "projected-knn")
