from pathlib import Path

import numpy as np
import pytest
from conftest import make_folder_dataset, write_image

from edgetl.runtime.data.sources import check_trainable, open_data, stratified_split
from edgetl.runtime.errors import DataError


def test_class_folder_without_splits(tmp_path):
    root = make_folder_dataset(tmp_path / "d", classes=("cat", "dog"), per_class=3)
    data = open_data(root)
    assert data.class_names == ["cat", "dog"]
    assert list(data.splits) == ["all"] and len(data.split("all")) == 6
    check_trainable(data)


def test_train_and_val_subfolders_are_the_splits(tmp_path):
    make_folder_dataset(tmp_path / "d" / "train", classes=("a", "b"), per_class=3)
    make_folder_dataset(tmp_path / "d" / "val", classes=("a", "b"), per_class=1)
    data = open_data(tmp_path / "d")
    assert set(data.splits) == {"train", "val"}
    assert len(data.split("val")) == 2 and data.has_val


def test_val_class_missing_from_train_is_refused(tmp_path):
    make_folder_dataset(tmp_path / "d" / "train", classes=("a", "b"))
    make_folder_dataset(tmp_path / "d" / "val", classes=("a", "zebra"))
    with pytest.raises(DataError, match="zebra"):
        open_data(tmp_path / "d")


def test_empty_class_folder_is_named(tmp_path):
    root = make_folder_dataset(tmp_path / "d", classes=("a", "b"))
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        open_data(root)


def test_single_class_cannot_train(tmp_path):
    root = make_folder_dataset(tmp_path / "d", classes=("only",))
    with pytest.raises(DataError, match="single class"):
        check_trainable(open_data(root))


def test_non_image_file_is_an_error_or_skipped(tmp_path):
    root = make_folder_dataset(tmp_path / "d")
    (root / "a" / "labels.txt").write_text("x")
    with pytest.raises(DataError, match="labels.txt"):
        open_data(root)
    data = open_data(root, skip_bad=True)
    assert len(data.skipped) == 1 and len(data.split("all")) == 8


def test_csv_with_header_splits_and_relative_paths(tmp_path):
    write_image(tmp_path / "img" / "1.png")
    write_image(tmp_path / "img" / "2.png")
    write_image(tmp_path / "img" / "3.png")
    csv_path = tmp_path / "data.csv"
    csv_path.write_text("path,label,split\nimg/1.png,cat,train\nimg/2.png,dog,train\nimg/3.png,dog,val\n")
    data = open_data(csv_path)
    assert data.class_names == ["cat", "dog"]
    assert len(data.split("train")) == 2 and data.split("val")[0].label == 1


def test_csv_errors_name_the_line(tmp_path):
    write_image(tmp_path / "1.png")
    bad_label = tmp_path / "a.csv"
    bad_label.write_text("1.png,\n")
    with pytest.raises(DataError, match="a.csv:1"):
        open_data(bad_label)
    missing = tmp_path / "b.csv"
    missing.write_text("1.png,x\nnope.png,y\n")
    with pytest.raises(DataError, match="b.csv:2.*nope.png"):
        open_data(missing)


def test_unknown_label_against_model_classes(tmp_path):
    write_image(tmp_path / "1.png")
    csv_path = tmp_path / "new.csv"
    csv_path.write_text("1.png,unicorn\n")
    with pytest.raises(DataError, match="unicorn"):
        open_data(csv_path).remap_to(["cat", "dog"])


def test_stratified_split_is_seeded_and_keeps_every_class():
    labels = [0] * 10 + [1] * 5 + [2] * 2
    train, val = stratified_split(labels, 0.3, seed=1)
    assert stratified_split(labels, 0.3, seed=1) == (train, val)
    assert sorted(train + val) == list(range(len(labels)))
    for cls in (0, 1, 2):
        assert any(labels[i] == cls for i in val) and any(labels[i] == cls for i in train)


def test_builtin_digits_has_fixed_70_30_splits():
    data = open_data("builtin:digits")
    assert data.class_names == [str(i) for i in range(10)]
    n_train, n_val = len(data.split("train")), len(data.split("val"))
    assert n_train + n_val == 1797 and abs(n_val / 1797 - 0.3) < 0.01
    assert data.recommended_image_size == 64
    again = open_data("builtin:digits")
    assert [r.source for r in again.split("val")] == [r.source for r in data.split("val")]


def test_unknown_builtin_lists_the_available(tmp_path):
    with pytest.raises(DataError, match="builtin:digits"):
        open_data("builtin:nope")


def test_data_export_writes_a_class_subset(tmp_path):
    from edgetl.data_export import export_image_folder

    counts = export_image_folder("builtin:digits", tmp_path / "out", classes=["0", "1", "2"])
    data = open_data(tmp_path / "out")
    assert data.class_names == ["0", "1", "2"]
    assert len(data.split("train")) == counts["train"] and len(data.split("val")) == counts["val"]
    # pixels survive the round trip through PNG unchanged
    original = {r.source.split("#")[1]: r.pixels for r in open_data("builtin:digits").split("val")}
    record = data.split("val")[0]
    from PIL import Image
    np.testing.assert_array_equal(np.asarray(Image.open(record.source)), original[Path(record.source).stem])


def test_builtin_digits_are_scikit_learns_digits_with_the_same_splits():
    """The shipped file holds exactly what ``load_digits`` gave, so records and splits did not move."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    train, val = stratified_split(digits.target, 0.3, 0)
    data = open_data("builtin:digits")
    for name, indices in (("train", train), ("val", val)):
        records = data.split(name)
        assert [r.source for r in records] == [f"builtin:digits#{i}" for i in indices]
        assert [r.label for r in records] == digits.target[indices].tolist()
        np.testing.assert_array_equal(np.stack([r.pixels for r in records]), images[indices])
        assert records[0].pixels.dtype == np.uint8
    assert (len(train), len(val)) == (1258, 539)


def test_damaged_builtin_file_is_refused(tmp_path, monkeypatch):
    from edgetl.runtime.data import builtin

    damaged = tmp_path / "digits.npz"
    content = bytearray(builtin.DIGITS_FILE.read_bytes())
    content[-100] ^= 0xFF
    damaged.write_bytes(bytes(content))
    monkeypatch.setattr(builtin, "DIGITS_FILE", damaged)
    with pytest.raises(DataError, match="does not match its sha256.*reinstall edgetl"):
        open_data("builtin:digits")
    monkeypatch.setattr(builtin, "DIGITS_FILE", tmp_path / "missing.npz")
    with pytest.raises(DataError, match="cannot read the built-in digits.*reinstall edgetl"):
        open_data("builtin:digits")


def test_data_list_describes_the_builtin_sets():
    from click.testing import CliRunner

    from edgetl.cli import main

    result = CliRunner().invoke(main, ["data", "list"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("builtin:digits\t1,797 real 8x8 handwritten digits, 10 classes")
    assert "CC BY 4.0" in result.output
