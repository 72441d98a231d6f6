"""Every source format on generated fixtures, and every bad input the issue lists."""

import csv
import json
import pickle
import zipfile

import numpy as np
import pytest

from conftest import SPLIT_CLASSES, make_folders, make_l2l, make_ravi, run_cli
from reproml.data.prepared import load_split


def prepare(capsys, format, root, out, size=16):
    return run_cli(capsys, "prepare", "--format", format, "--root", root, "--image-size", size, "--out", out, "--quiet")


def check_prepared(out, size, per_class=20):
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["image_size"] == size
    for split, n_classes in SPLIT_CLASSES.items():
        assert manifest["splits"][split]["classes"] == n_classes
        assert manifest["splits"][split]["images"] == n_classes * per_class
        assert set(manifest["splits"][split]["per_class"].values()) == {per_class}
        loaded = load_split(out, split)
        assert loaded.images.shape == (n_classes * per_class, 3, size, size)
        assert loaded.images.dtype.is_floating_point is False
        assert sorted(loaded.classes) == [f"{split}_c{c}" for c in range(n_classes)]
    assert len(manifest["dataset_sha256"]) == 64
    return manifest


@pytest.mark.parametrize("archive", [True, False])
def test_ravi_layout(tmp_path, capsys, archive):
    root = make_ravi(tmp_path / "src", archive=archive)
    status, out, _ = prepare(capsys, "ravi", root, tmp_path / "data")
    assert status == 0 and "train: 6 classes, 120 images" in out
    manifest = check_prepared(tmp_path / "data", 16)
    assert set(manifest["source"]["checksums"]) >= {"train.csv", "val.csv", "test.csv"}
    assert ("images.zip" in manifest["source"]["checksums"]) == archive


def test_folders_layout_with_grayscale_images_of_another_size(tmp_path, capsys):
    root = make_folders(tmp_path / "src", size=(40, 30), mode="L")
    status, _, _ = prepare(capsys, "folders", root, tmp_path / "data", size=20)
    assert status == 0
    check_prepared(tmp_path / "data", 20)
    images = load_split(tmp_path / "data", "train").images
    assert (images[:, 0] == images[:, 1]).all()  # grayscale became RGB with equal channels


def test_l2l_pickle_layout(tmp_path, capsys):
    root = make_l2l(tmp_path / "src")
    status, _, _ = prepare(capsys, "l2l-pickle", root, tmp_path / "data")
    assert status == 0
    check_prepared(tmp_path / "data", 16)


def test_images_keep_their_class_and_are_resized_bilinearly(tmp_path, capsys):
    root = make_folders(tmp_path / "src", size=(16, 16))
    prepare(capsys, "folders", root, tmp_path / "data", size=16)
    split = load_split(tmp_path / "data", "val")
    from PIL import Image
    first = sorted((root / "val" / split.classes[split.labels[0]]).iterdir())[0]
    assert np.array_equal(split.images[0].numpy().transpose(1, 2, 0), np.asarray(Image.open(first).convert("RGB")))


def test_a_pickle_that_calls_code_is_refused(tmp_path, capsys):
    root = make_l2l(tmp_path / "src")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    with open(root / "mini-imagenet-cache-test.pkl", "wb") as f:
        pickle.dump({"image_data": Evil(), "class_dict": {}}, f)
    status, out, err = prepare(capsys, "l2l-pickle", root, tmp_path / "data")
    assert status == 2 and "pwned" not in out
    assert "mini-imagenet-cache-test.pkl: cannot be loaded safely" in err and "builtins.print" in err


def rewrite_csv(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def break_missing_root(root):
    return root / "nowhere", "dataset root does not exist"


def break_missing_csv(root):
    (root / "val.csv").unlink()
    return root, "val.csv: missing"


def break_header(root):
    rows = list(csv.reader(open(root / "train.csv")))
    rewrite_csv(root / "train.csv", [["file", "class"]] + rows[1:])
    return root, "train.csv: header is 'file,class'; expected 'filename,label'"


def break_empty_csv(root):
    (root / "test.csv").write_text("")
    return root, "test.csv: empty"


def break_header_only(root):
    (root / "test.csv").write_text("filename,label\n")
    return root, "test.csv: has a header but no images"


def break_short_row(root):
    with open(root / "test.csv", "a") as f:
        f.write("lonely.jpg\n")
    return root, "test.csv: line 102 is 'lonely.jpg'"


def break_truncated_csv(root):
    lines = (root / "train.csv").read_text().splitlines()
    cut = lines[-1][: lines[-1].index(",") + 5]  # a copy that stopped in the middle of a label
    (root / "train.csv").write_text("\n".join(lines[:-1] + [cut]))
    return root, f"train.csv: the last line {cut!r} does not end with a newline"


def break_missing_image(root):
    rows = list(csv.reader(open(root / "train.csv")))
    rewrite_csv(root / "train.csv", rows + [["ghost.jpg", "train_c0"]])
    return root, "ghost.jpg is listed in a split CSV but missing from the archive"


def break_unreadable_image(root):
    with zipfile.ZipFile(root / "images.zip", "a") as zf:
        zf.writestr("images/broken.jpg", b"\xff\xd8\xff not really a jpeg")
    rows = list(csv.reader(open(root / "val.csv")))
    rewrite_csv(root / "val.csv", rows + [["broken.jpg", "val_c0"]])
    return root, "images.zip:images/broken.jpg: not a readable image"


def break_shared_class(root):
    rows = list(csv.reader(open(root / "test.csv")))
    rewrite_csv(root / "test.csv", rows + [["another.jpg", "train_c3"]])
    return root, "class 'train_c3' is in both the train and test splits"


@pytest.mark.parametrize("breaker", [break_missing_root, break_missing_csv, break_header, break_empty_csv,
                                     break_header_only, break_short_row, break_truncated_csv, break_missing_image,
                                     break_unreadable_image, break_shared_class])
def test_bad_sources_give_one_line_and_no_output(tmp_path, capsys, breaker):
    root, message = breaker(make_ravi(tmp_path / "src"))
    status, out, err = prepare(capsys, "ravi", root, tmp_path / "data")
    assert status == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err and "object at 0x" not in err
    assert not (tmp_path / "data").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no temporary folder left behind


def test_unknown_format(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        prepare(capsys, "hdf5", make_folders(tmp_path / "src"), tmp_path / "data")
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.strip() == ("reproml prepare: error: argument --format: invalid choice: 'hdf5' "
                                                    "(choose from 'ravi', 'folders', 'l2l-pickle', 'demo')")


def test_a_failed_prepare_keeps_the_previous_output(tmp_path, capsys):
    root = make_ravi(tmp_path / "src")
    assert prepare(capsys, "ravi", root, tmp_path / "data")[0] == 0
    before = (tmp_path / "data" / "manifest.json").read_text()
    break_missing_image(root)
    assert prepare(capsys, "ravi", root, tmp_path / "data")[0] == 2
    assert (tmp_path / "data" / "manifest.json").read_text() == before


def test_demo_dataset_is_deterministic_with_a_64_16_20_split(tmp_path, capsys):
    for name in ("a", "b"):
        status, out, _ = run_cli(capsys, "prepare", "--format", "demo", "--image-size", 16, "--seed", 3,
                                 "--images-per-class", 20, "--out", tmp_path / name, "--quiet")
        assert status == 0
    assert "train: 64 classes, 1280 images" in out and "val: 16 classes" in out and "test: 20 classes" in out
    a = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert a["dataset_sha256"] == json.loads((tmp_path / "b" / "manifest.json").read_text())["dataset_sha256"]
    run_cli(capsys, "prepare", "--format", "demo", "--image-size", 16, "--seed", 4, "--images-per-class", 20,
            "--out", tmp_path / "c", "--quiet")
    assert a["dataset_sha256"] != json.loads((tmp_path / "c" / "manifest.json").read_text())["dataset_sha256"]
    names = [set(load_split(tmp_path / "a", split).classes) for split in ("train", "val", "test")]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])


def test_demo_images_vary_within_a_class(tmp_path, capsys):
    from reproml.data.demo import generate
    pixels, labels, _ = generate(32, seed=0, images_per_class=50)["train"]
    images = pixels.astype(np.float64) / 255
    same_class = images[labels == 0]
    assert same_class.std(axis=0).mean() > 0.15  # colour, pose and clutter change from image to image
    assert 0.02 < images.mean() and images.mean() < 0.98 and len(np.unique(pixels)) > 200
