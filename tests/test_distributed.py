"""``torchrun -m edgetl finetune``: the backbone pass sharded over 2 CPU ranks (gloo) equals one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgetl.distributed import Ranks


def test_blocks_cover_the_records_once_on_batch_boundaries():
    for count, world, batch in [(30, 2, 8), (7, 3, 8), (1000, 4, 64), (64, 2, 64)]:
        blocks = [Ranks(rank, world).block(count, batch) for rank in range(world)]
        assert [i for block in blocks for i in block] == list(range(count))
        assert all(block.start % batch == 0 for block in blocks if len(block))


def _finetune(prefix: list[str], data, out, cache) -> subprocess.CompletedProcess:
    # torchrun gives each rank one thread (OMP_NUM_THREADS=1); the single process gets the same, because oneDNN's
    # sums round differently with other thread counts (within 1e-6), and the comparison here is of the sharding
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *prefix, "-m", "edgetl", "finetune", str(data), "--out", str(out),
                           "--cache-dir", str(cache), "--image-size", "64", "--head", "ridge", "--engine", "torch",
                           "--json"], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.parametrize("ranks", [2])
def test_torchrun_shards_the_pass_and_equals_one_process(flowers_dir, tmp_path, ranks):
    single = _finetune([], flowers_dir, tmp_path / "single", tmp_path / "cache-single")
    assert single.returncode == 0, single.stderr
    group = _finetune(["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"], flowers_dir,
                      tmp_path / "group", tmp_path / "cache-group")
    assert group.returncode == 0, group.stderr
    report = json.loads(group.stdout[group.stdout.index("{"):])            # rank 0 alone reports
    assert group.stdout.count('"run":') == 1 and report["cache_hit"] is False
    (entry,) = [p for p in (tmp_path / "cache-single").iterdir() if len(p.name) == 64]
    other = tmp_path / "cache-group" / entry.name                          # the same key
    assert (other / "features.npy").read_bytes() == (entry / "features.npy").read_bytes()
    assert np.array_equal(np.load(other / "valid.npy"), np.load(entry / "valid.npy"))
    assert json.loads((other / "meta.json").read_text()) == json.loads((entry / "meta.json").read_text())
    with np.load(tmp_path / "single" / "head.npz") as a, np.load(tmp_path / "group" / "head.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])
    assert not any(p.name.startswith(".") for p in (tmp_path / "cache-group").iterdir())   # no staging left


def test_backbone_auto_is_refused_under_torchrun(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from edgetl.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(main,
                                ["finetune", "builtin:digits", "--backbone", "auto", "--out", str(tmp_path / "r")])
    assert result.exit_code == 9 and "torchrun" in result.output


def test_a_rank_that_fails_stops_the_group_with_its_error(flowers_dir, tmp_path):
    """A corrupt photo in rank 1's block: every rank stops with the error instead of waiting for rank 1."""
    data = tmp_path / "data"
    shutil.copytree(flowers_dir, data)
    broken = sorted(data.rglob("*.jpg"))[-1]
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    group = _finetune(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"], data, tmp_path / "run",
                      tmp_path / "cache")
    assert group.returncode != 0 and broken.name in group.stderr
    assert not (tmp_path / "run").exists()
    assert not [p for p in (tmp_path / "cache").iterdir() if len(p.name) == 64 or p.name.startswith(".")]
