"""Nothing lost, nothing silent: every subcommand given broken inputs of each kind answers with one
line and exit status 2 (no traceback, no half-written output); prepare never deletes what it did
not make; bad data is refused by name; an output folder has one writer; SIGTERM is handled as
Ctrl-C is. Each class of the issue has several inputs here."""

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import make_folders, make_l2l, make_ravi, run_cli
from reproml.config import check_config_files, validate_config
from reproml.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SHAPE = ["--n-way", 3, "--k-shot", 1, "--n-query", 3, "--epochs", 2]


def tiny(iterations=2):
    """`reproml train` options for a few iterations on the tiny prepared dataset."""
    return SHAPE + ["--iterations", iterations, "--val-every", 2, "--val-episodes", 2, "--device", "cpu", "--quiet"]


TINY = tiny()


def one_line(err, command, *fragments):
    """`err` is exactly one line, reproml's error line for `command`, holding every fragment."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"reproml {command}: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def refused(capsys, command, *argv):
    """Run `reproml command argv...`; it must fail with one line. Returns that line."""
    try:
        status, _, err = run_cli(capsys, command, *argv)
    except SystemExit as exit:  # argparse's own refusal of a value
        status, err = exit.code, capsys.readouterr().err
    assert status == 2, err
    return one_line(err, command)


def prepare(capsys, root, out, format="ravi", size=16):
    return run_cli(capsys, "prepare", "--format", format, "--root", root, "--image-size", size, "--out", out, "--quiet")


# ---- 1. Never delete what we did not create ------------------------------------------------------

@pytest.mark.parametrize("where", ["user_folder", "source", "source_parent", "working_directory"])
def test_prepare_never_replaces_a_folder_it_did_not_write(tmp_path, capsys, monkeypatch, where):
    root = make_ravi(tmp_path / "data" / "src")
    notes = tmp_path / "data" / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("three years of work")
    monkeypatch.chdir(notes if where == "working_directory" else tmp_path)
    out = {"user_folder": notes, "source": root, "source_parent": tmp_path / "data", "working_directory": Path(".")}[where]
    status, _, err = prepare(capsys, root, out)
    assert status == 2
    expected = {"user_folder": "was not written by reproml", "source": "is the dataset's source folder",
                "source_parent": "is a folder above the dataset's source folder",
                "working_directory": "is the working directory"}[where]
    one_line(err, "prepare", expected)
    assert (notes / "thesis.txt").read_text() == "three years of work" and (root / "train.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no lock or temporary left
    assert sorted(p.name for p in notes.iterdir()) == ["thesis.txt"]


def test_prepare_replaces_its_own_output_even_after_snakemake_deleted_the_manifest(tmp_path, capsys):
    root = make_ravi(tmp_path / "src")
    assert prepare(capsys, root, tmp_path / "out")[0] == 0
    (tmp_path / "out" / "manifest.json").unlink()  # Snakemake removes a rule's outputs before rerunning it
    assert prepare(capsys, root, tmp_path / "out", size=20)[0] == 0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["image_size"] == 20


@pytest.mark.parametrize("name", ["..", "."])
def test_dataset_names_that_are_path_parts_are_refused(name):
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config["dataset"]["name"] = name
    with pytest.raises(UserError, match="dataset.name: .* is not valid; expected a folder name"):
        validate_config(config, SCHEMA)
    config["dataset"]["name"] = "demo-smoke"
    config["transfer"] = [{"name": name, "format": "demo"}]
    with pytest.raises(UserError, match="transfer.0.name"):
        validate_config(config, SCHEMA)


def test_a_temporary_left_by_a_killed_prepare_is_removed_by_the_next(tmp_path, capsys):
    root = make_ravi(tmp_path / "src")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f".out.{dead.pid}.abcd.tmp"
    leftover.mkdir()
    (leftover / "train.npz").write_bytes(b"x" * 1000)
    assert prepare(capsys, root, tmp_path / "out")[0] == 0
    assert not leftover.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


# ---- 2. Data is checked, not trusted -------------------------------------------------------------

def add_row(path, row):
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow(row)


def test_an_image_in_two_splits_or_twice_in_one_is_refused(tmp_path, capsys):
    root = make_ravi(tmp_path / "src")
    first_train = next(csv.reader(open(root / "train.csv")))  # header
    first_train = list(csv.reader(open(root / "train.csv")))[1]
    add_row(root / "test.csv", [first_train[0], "test_c0"])
    status, _, err = prepare(capsys, root, tmp_path / "out")
    assert status == 2
    one_line(err, "prepare", f"'{first_train[0]}' is listed in both the train and test splits")

    root = make_ravi(tmp_path / "src2")
    add_row(root / "val.csv", list(csv.reader(open(root / "val.csv")))[3])
    status, _, err = prepare(capsys, root, tmp_path / "out")
    one_line(err, "prepare", "is listed twice in the val split")


def test_a_linked_image_in_two_classes_and_a_repeated_pickle_row_are_refused(tmp_path, capsys):
    root = make_folders(tmp_path / "folders")
    image = next((root / "test" / "test_c0").glob("*.png"))
    os.symlink(image, root / "test" / "test_c1" / "alias.png")
    status, _, err = prepare(capsys, root, tmp_path / "out", format="folders")
    one_line(err, "prepare", "is listed twice in the test split")

    root = make_l2l(tmp_path / "l2l")
    path = root / "mini-imagenet-cache-validation.pkl"
    cache = pickle.load(open(path, "rb"))
    cache[b"class_dict"][b"val_c1"] = cache[b"class_dict"][b"val_c1"] + [0]
    pickle.dump(cache, open(path, "wb"))
    status, _, err = prepare(capsys, root, tmp_path / "out", format="l2l-pickle")
    one_line(err, "prepare", "row 0 is listed twice in the val split")


def wide_image_dataset(root, image):
    """The small folders dataset with one image replaced by `image` (a PIL image of any mode)."""
    root = make_folders(root)
    target = root / "train" / "train_c0" / "000.png"
    target.unlink()
    suffix = ".tif" if image.mode == "F" else ".png"
    image.save(target.with_suffix(suffix))
    return root


@pytest.mark.parametrize("mode, values, expected", [
    ("I;16", 32896, 128),        # 16-bit: 32896 / 65535 * 255 = 128, not clipped to 255
    ("I;16", 65535, 255),
    ("F", 0.5, 128),             # float in [0, 1]: 0.5 * 255, not truncated to 0
    ("F", 200.0, 200),           # float beyond 1: read as 0-255
])
def test_wide_images_are_scaled_to_8_bit_not_clipped(tmp_path, capsys, mode, values, expected):
    image = Image.fromarray(np.full((20, 24), values, dtype=np.uint16 if mode.startswith("I") else np.float32))
    assert image.mode == mode
    root = wide_image_dataset(tmp_path / "src", image)
    assert prepare(capsys, root, tmp_path / "out", format="folders", size=20)[0] == 0
    with np.load(tmp_path / "out" / "train.npz") as npz:
        first = npz["images"][0]
    assert first.shape == (3, 20, 20) and (first == expected).all()


@pytest.mark.parametrize("values, message", [(-1.0, "negative or non-finite"), (300.0, "expected at most 255"),
                                             (float("nan"), "negative or non-finite")])
def test_float_images_outside_the_intensity_range_are_refused_by_name(tmp_path, capsys, values, message):
    root = wide_image_dataset(tmp_path / "src", Image.fromarray(np.full((20, 24), values, dtype=np.float32), "F"))
    status, _, err = prepare(capsys, root, tmp_path / "out", format="folders")
    one_line(err, "prepare", "000.tif: F image", message)


def test_archive_members_are_matched_by_their_full_path(tmp_path, capsys):
    root = make_ravi(tmp_path / "src")
    with zipfile.ZipFile(root / "images.zip") as zf:
        data = zf.read("images/test_c0_000.jpg")
    with zipfile.ZipFile(root / "images.zip", "a") as zf:
        zf.writestr("junk/stand_in.jpg", data)
    add_row(root / "test.csv", ["stand_in.jpg", "test_c0"])
    status, _, err = prepare(capsys, root, tmp_path / "out")
    one_line(err, "prepare", "stand_in.jpg is listed in a split CSV but missing from the archive",
             "expected the member images/stand_in.jpg")


def test_a_swapped_prepared_split_is_refused_when_loaded(tmp_path, capsys, prepared):
    data = tmp_path / "data"
    import shutil
    shutil.copytree(prepared, data)
    (data / "test.npz").write_bytes((data / "val.npz").read_bytes())
    line = refused(capsys, "evaluate", "--method", "pixel_nearest_neighbor", "--data", data, "--n-way", 3, "--k-shot", 1,
                   "--episodes", 2, "--out", tmp_path / "eval", "--quiet")
    assert "test.npz: its sha256 is not the one in manifest.json" in line
    assert not (tmp_path / "eval").exists()


# ---- 3. One place turns failures into one line ---------------------------------------------------

def corrupt(path, content=b"\x00garbage"):
    Path(path).write_bytes(content)
    return path


@pytest.fixture
def trained(tmp_path, capsys, prepared):
    status, _, err = run_cli(capsys, "train", "--data", prepared, *TINY, "--out", tmp_path / "run")
    assert status == 0, err
    return tmp_path / "run"


@pytest.mark.parametrize("breakage, fragment", [
    ("manifest_not_json", "manifest.json: cannot read this manifest of a prepared dataset (not valid JSON"),
    ("manifest_other_version", "not a manifest written by this version of 'reproml prepare' (format_version 7"),
    ("manifest_not_utf8", "manifest.json: cannot read this manifest of a prepared dataset (not UTF-8 text"),
    ("split_missing", "val.npz: missing; rerun 'reproml prepare'"),
    ("split_a_folder", "val.npz: missing"),
])
def test_a_broken_prepared_dataset_is_one_line(tmp_path, capsys, prepared, breakage, fragment):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    manifest = data / "manifest.json"
    if breakage == "manifest_not_json":
        manifest.write_text('{"format_version": 1,')
    elif breakage == "manifest_other_version":
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format_version": 7}))
    elif breakage == "manifest_not_utf8":
        manifest.write_bytes(b'{"name": "caf\xe9"}')
    elif breakage == "split_missing":
        (data / "val.npz").unlink()
    else:
        (data / "val.npz").unlink()
        (data / "val.npz").mkdir()
    for command, argv in [("train", [*TINY, "--out", tmp_path / "run"]),
                          ("pretrain", ["--steps", 2, "--val-every", 2, "--val-episodes", 2, "--device", "cpu",
                                        "--out", tmp_path / "pre", "--quiet"])]:
        assert fragment in refused(capsys, command, "--data", data, *argv)
    assert not (tmp_path / "run").exists() and not (tmp_path / "pre").exists()


@pytest.mark.parametrize("breakage, fragment", [
    ("truncated", "last.pt: not a readable run state to resume from (cut short"),
    ("foreign", "last.pt: not the run state of a reproml training run"),
    ("a_folder", "last.pt: not a file"),
])
def test_a_broken_resume_state_is_one_line(tmp_path, capsys, prepared, trained, breakage, fragment):
    last = trained / "last.pt"
    if breakage == "truncated":
        last.write_bytes(last.read_bytes()[:200])
    elif breakage == "foreign":
        torch.save({"weights": torch.zeros(3)}, last)
    else:
        last.unlink()
        last.mkdir()
    assert fragment in refused(capsys, "train", "--data", prepared, *tiny(4), "--out", trained)


@pytest.mark.parametrize("breakage, fragment", [
    ("another_version", "not a reproml meta-learner checkpoint (expected format reproml-meta-lstm/1, found "
                        "reproml-meta-lstm/0)"),
    ("not_a_dict", "not a reproml meta-learner checkpoint (expected format reproml-meta-lstm/1)"),
    ("empty", "not a readable meta-learner checkpoint"),
    ("missing", "meta-learner checkpoint not found"),
])
def test_a_broken_checkpoint_is_one_line(tmp_path, capsys, prepared, trained, breakage, fragment):
    ckpt = tmp_path / "ckpt.pt"
    if breakage == "another_version":
        torch.save({**torch.load(trained / "best.pt", weights_only=True), "format": "reproml-meta-lstm/0"}, ckpt)
    elif breakage == "not_a_dict":
        torch.save([1, 2, 3], ckpt)
    elif breakage == "empty":
        ckpt.write_bytes(b"")
    assert fragment in refused(capsys, "evaluate", "--data", prepared, "--checkpoint", ckpt, "--episodes", 2,
                               "--device", "cpu", "--out", tmp_path / "eval", "--quiet")
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("breakage, fragment", [
    ("no_checkpoint", "pre-trained network not found"),
    ("a_meta_learner", "not a reproml pre-trained network (expected format reproml-pretrained/1, found "
                       "reproml-meta-lstm/1)"),
    ("grid_not_numbers", "grid.csv: not a fine-tuning grid (a value is not a number)"),
    ("grid_other_columns", "grid.csv: not a fine-tuning grid (expected the columns lr, decay, val_acc, val_ci95)"),
])
def test_a_broken_fine_tuning_search_is_one_line(tmp_path, capsys, prepared, trained, breakage, fragment):
    status, _, err = run_cli(capsys, "pretrain", "--data", prepared, "--steps", 2, "--val-every", 2, "--val-episodes",
                             2, "--batch-size", 8, "--device", "cpu", "--quiet", "--out", tmp_path / "pre")
    assert status == 0, err
    checkpoint = {"no_checkpoint": tmp_path / "none.pt", "a_meta_learner": trained / "best.pt"}.get(
        breakage, tmp_path / "pre" / "best.pt")
    if breakage.startswith("grid"):
        (tmp_path / "grid").mkdir()
        (tmp_path / "grid" / "grid.csv").write_text("lr,decay,val_acc,val_ci95\n0.1,0.0,x,1\n"
                                                    if breakage == "grid_not_numbers" else "a,b\n1,2\n")
    line = refused(capsys, "select-finetune", "--data", prepared, "--checkpoint", checkpoint, "--n-way", 3,
                   "--k-shot", 1, "--n-query", 3, "--lrs", "0.1", "--decays", "0", "--episodes", 2, "--device", "cpu",
                   "--quiet", "--out", tmp_path / "grid")
    assert fragment in line


@pytest.mark.parametrize("breakage, fragment", [
    ("not_utf8", "train.csv: cannot read this split CSV (not UTF-8 text"),
    ("encrypted", "cannot be read (RuntimeError: File"),
    ("deflate64", "cannot be read (NotImplementedError"),
    ("oversized", "MiB; images over 64 MiB are refused"),
    ("zip_is_garbage", "images.zip: not a readable zip file"),
])
def test_a_broken_ravi_source_is_one_line(tmp_path, capsys, breakage, fragment):
    root = make_ravi(tmp_path / "src")
    if breakage == "not_utf8":
        (root / "train.csv").write_bytes((root / "train.csv").read_bytes().replace(b"train_c0_000", b"tr\xe4in_000"))
    elif breakage == "encrypted":
        with zipfile.ZipFile(root / "images.zip", "a") as zf:
            zf.writestr("images/locked.jpg", b"\xff\xd8 not readable without a password")
        patch_member_header(root / "images.zip", b"images/locked.jpg", (6, 8), 0x1)  # flags: encrypted
        add_row(root / "train.csv", ["locked.jpg", "train_c0"])
    elif breakage == "deflate64":
        with zipfile.ZipFile(root / "images.zip", "a") as zf:
            zf.writestr("images/deflate64.jpg", b"DEFLATE64PAYLOAD")
        patch_member_header(root / "images.zip", b"images/deflate64.jpg", (8, 10), 9)  # compression method
        add_row(root / "train.csv", ["deflate64.jpg", "train_c0"])
    elif breakage == "oversized":
        with zipfile.ZipFile(root / "images.zip", "a", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("images/bomb.jpg", bytes(65 << 20))  # 65 MiB of zeros, a few KiB in the archive
        add_row(root / "train.csv", ["bomb.jpg", "train_c0"])
    else:
        corrupt(root / "images.zip")
    status, _, err = prepare(capsys, root, tmp_path / "out")
    assert status == 2
    one_line(err, "prepare", fragment)
    assert not (tmp_path / "out").exists()


def patch_member_header(archive, member, offsets, value):
    """Set a 2-byte field of `member`'s local and central headers (at `offsets` into each) to `value`:
    zipfile writes neither encrypted nor Deflate64 members, but a user's archive can hold them."""
    data = bytearray(archive.read_bytes())
    for (signature, name_offset), offset in zip(((b"PK\x03\x04", 30), (b"PK\x01\x02", 46)), offsets):
        start = 0
        while (start := data.find(signature, start)) != -1:
            if data[start + name_offset:start + name_offset + len(member)] == member:
                data[start + offset:start + offset + 2] = value.to_bytes(2, "little")
            start += 4
    archive.write_bytes(bytes(data))


@pytest.mark.parametrize("breakage, fragment", [
    ("a_folder", "000.png: not a file (a folder, a broken link"),
    ("a_broken_link", "000.png: not a file (a folder, a broken link"),
    ("not_an_image", "000.png: not a readable image"),
])
def test_a_broken_folders_source_is_one_line(tmp_path, capsys, breakage, fragment):
    root = make_folders(tmp_path / "src")
    image = root / "val" / "val_c2" / "000.png"
    image.unlink()
    if breakage == "a_folder":
        image.mkdir()
    elif breakage == "a_broken_link":
        os.symlink(tmp_path / "nowhere.png", image)
    else:
        image.write_bytes(b"PNG? no")
    status, _, err = prepare(capsys, root, tmp_path / "out", format="folders")
    one_line(err, "prepare", fragment)


@pytest.mark.parametrize("change, fragment", [
    (lambda c: c.update({b"class_dict": [1, 2]}), "class_dict is a list; expected a dict"),
    (lambda c: c[b"class_dict"].update({b"val_c0": ["a", "b"]}), "is not a list of image rows (integers)"),
    (lambda c: c.update({b"image_data": np.zeros((4, 5, 5, 2), np.uint8)}), "expected uint8 (N, H, W[, 1, 3 or 4])"),
])
def test_a_malformed_l2l_pickle_is_one_line(tmp_path, capsys, change, fragment):
    root = make_l2l(tmp_path / "src")
    path = root / "mini-imagenet-cache-validation.pkl"
    cache = pickle.load(open(path, "rb"))
    change(cache)
    pickle.dump(cache, open(path, "wb"))
    status, _, err = prepare(capsys, root, tmp_path / "out", format="l2l-pickle")
    one_line(err, "prepare", fragment)


@pytest.mark.parametrize("command, argv, fragment", [
    ("aggregate", ["{missing}/summary.json", "--published", "{repo}/report/published-results.yaml", "--out", "{out}/s.csv"],
     "summary.json: evaluation summary not found"),
    ("aggregate", ["{garbage}", "--published", "{repo}/report/published-results.yaml", "--out", "{out}/s.csv"],
     "cannot read this evaluation summary (not valid JSON"),
    ("aggregate", ["{missing}/summary.json", "--published", "{garbage}", "--out", "{out}/s.csv"],
     "cannot read this published-results file (not valid YAML"),
    ("figures", ["{missing}/run.json", "--out", "{out}/figures"], "run.json: run.json of a training run not found"),
    ("report", ["--templates", "{repo}/report/templates", "--summary", "{missing}/summary.csv", "--manifest",
                "{missing}/manifest.json", "--figures", "{out}", "--benchmarks", "{out}", "--config-json", "{{}}",
                "--runs", "{missing}/run.json", "--evals", "{missing}/summary.json", "--published",
                "{repo}/report/published-results.yaml", "--out", "{out}/report"], "--config-json: expected"),
    ("report", ["--templates", "{repo}/report/templates", "--summary", "{missing}/summary.csv", "--manifest",
                "{missing}/manifest.json", "--figures", "{out}", "--benchmarks", "{out}", "--config-json",
                '{{"settings": {{}}}}', "--runs", "{missing}/run.json", "--evals", "{missing}/summary.json",
                "--published", "{repo}/report/published-results.yaml", "--out", "{out}/report"],
     "summary.csv: summary.csv not found"),
    ("publish", ["{missing}/report.html", "--config-json", '{{"settings": {{}}}}', "--out", "{out}/published"],
     "report.html: report file not found"),
])
def test_the_last_steps_name_a_missing_or_broken_input(tmp_path, capsys, command, argv, fragment):
    garbage = corrupt(tmp_path / "garbage", b"{: not json or yaml")
    values = {"missing": tmp_path / "missing", "garbage": garbage, "repo": REPO, "out": tmp_path / "out"}
    line = refused(capsys, command, *[a.format(**values) for a in argv])
    assert fragment in line
    assert not (tmp_path / "out").exists()  # no empty figures/ or report/ left behind


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--lr", "-1"], "argument --lr: -1 must be more than 0"),
    (["train", "--grad-clip", "-1"], "argument --grad-clip: -1 must be more than 0"),
    (["train", "--grad-clip", "0"], "argument --grad-clip: 0 must be more than 0"),
    (["train", "--seed", "-1"], "argument --seed: -1 is less than the minimum of 0"),
    (["train", "--threads", "0"], "argument --threads: 0 is less than the minimum of 1"),
    (["train", "--threads", "-2"], "argument --threads: -2 is less than the minimum of 1"),
    (["train", "--bn-momentum", "1.5"], "argument --bn-momentum: 1.5 is more than the maximum of 1"),
    (["train", "--iterations", "4.0"], "argument --iterations: '4.0' is not an integer"),
    (["train", "--lr", "nan"], "argument --lr: 'nan' is not a finite number"),
    (["pretrain", "--steps", "0"], "argument --steps: 0 is less than the minimum of 1"),
    (["evaluate", "--episodes", "1"], "argument --episodes: 1 is less than the minimum of 2"),
    (["evaluate", "--device", "gpu"], "argument --device: invalid choice: 'gpu'"),
])
def test_values_out_of_range_are_refused_in_one_line(tmp_path, capsys, argv, fragment):
    command, *rest = argv
    required = {"train": ["--data", "d", "--out", "o"], "pretrain": ["--data", "d", "--out", "o"],
                "evaluate": ["--data", "d", "--out", "o"]}[command]
    with pytest.raises(SystemExit) as exit:
        run_cli(capsys, command, *required, *rest)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.strip().splitlines() == [f"reproml {command}: error: {fragment}"] or \
        fragment in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("argv, fragment", [
    (["describe", "--image-size", "0"], "argument --image-size: 0 is less than the minimum of 16"),
    (["describe", "--n-way", "1"], "argument --n-way: 1 is less than the minimum of 2"),
    (["prepare", "--format", "demo", "--out", "o", "--images-per-class", "1"], "is less than the minimum of 2"),
    (["bench", "--episodes", "0"], "argument --episodes: 0 is less than the minimum of 1"),
])
def test_the_other_subcommands_check_their_ranges_too(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit:
        run_cli(capsys, *argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err


@pytest.mark.parametrize("where", ["a_file", "under_a_file"])
def test_an_output_path_in_the_way_is_one_line(tmp_path, capsys, prepared, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file the user keeps")
    out = blocker if where == "a_file" else blocker / "run"
    line = refused(capsys, "train", "--data", prepared, *TINY, "--out", out)
    assert "cannot create this folder" in line and str(out) in line
    assert blocker.read_text() == "a file the user keeps"


# ---- 4. Validate at the edges: the config ---------------------------------------------------------

@pytest.mark.parametrize("yaml_text, fragment", [
    ("settings:\n  5w1s: {n_way: 5, k_shot: 1, iterations: 4.0, val_every: 2}\n",
     "settings.5w1s.iterations: 4.0 is not of type 'integer'"),
    ("seeds: [1.0]\n", "seeds.0: 1.0 is not of type 'integer'"),
    ("dataset: {name: x, format: ravi, root: \"a\\nb\"}\n", "dataset.root: 'a\\nb' is not valid; expected a folder path"),
])
def test_config_values_that_the_jobs_could_not_take_are_refused(yaml_text, fragment):
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config.update(yaml.safe_load(yaml_text))
    with pytest.raises(UserError) as error:
        validate_config(config, SCHEMA)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("seeds: [0]\ntest_episodes: 6\nseeds: [1]\n")
    with pytest.raises(UserError) as error:
        check_config_files([path])
    assert str(error.value).startswith(f"config: {path}: cannot read this config file (not valid YAML (key 'seeds' "
                                       "appears twice at line 3))")
    path.write_text("settings:\n  5w1s: {n_way: 5, n_way: 6}\n")
    with pytest.raises(UserError, match="key 'n_way' appears twice"):
        check_config_files([path])


@pytest.mark.slow
def test_a_dataset_root_with_quotes_and_shell_syntax_reaches_prepare_verbatim(tmp_path):
    """The shell commands quote every value: an apostrophe works, and `$(...)` runs nothing."""
    from test_pipeline import snakemake, workdir

    cwd = workdir(tmp_path / "run")
    root = make_ravi(tmp_path / "it's $(touch pwned) here")
    (cwd / "odd.yaml").write_text(yaml.safe_dump({"dataset": {"name": "odd", "format": "ravi", "root": str(root),
                                                              "image_size": 16}}))
    result = snakemake(cwd, "results/data/odd/manifest.json", "--configfile", "config/smoke.yaml", "odd.yaml")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((cwd / "results" / "data" / "odd" / "manifest.json").read_text())
    assert manifest["source"]["root"] == str(root)
    assert not list(tmp_path.rglob("pwned")) and not (cwd / "pwned").exists()


# ---- 5. One writer per output; signals ----------------------------------------------------------

def start_training(prepared, out, iterations=400):
    argv = [sys.executable, "-m", "reproml", "train", "--data", str(prepared), *map(str, tiny(iterations)), "--out",
            str(out)]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (Path(out) / "last.pt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "training finished before the test could act"
    return process


@pytest.mark.slow
def test_a_second_writer_of_a_run_folder_is_refused_naming_the_first(tmp_path, capsys, prepared):
    first = start_training(prepared, tmp_path / "run")
    try:
        line = refused(capsys, "train", "--data", prepared, *tiny(400), "--out", tmp_path / "run")
        assert f"run: in use by process {first.pid} on " in line
        line = refused(capsys, "evaluate", "--data", prepared, "--checkpoint", tmp_path / "run" / "best.pt",
                       "--episodes", 2, "--device", "cpu", "--quiet", "--out", tmp_path / "run")
        assert "in use by process" in line
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_sigterm_is_handled_as_ctrl_c(tmp_path, prepared):
    process = start_training(prepared, tmp_path / "run")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143
    assert err.strip().splitlines()[-1] == "reproml train: terminated; rerun the same command to resume"
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    rerun = subprocess.run([sys.executable, "-m", "reproml", "train", "--data", str(prepared), *map(str, tiny(400)),
                            "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr  # the lock died with the process, and the run resumes
    assert "resuming from iteration" in rerun.stderr


def test_every_row_of_the_readmes_fault_table_names_a_test_that_exists():
    readme = (REPO / "README.md").read_text()
    table = readme.split("What survives what", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`test_" in line]
    assert len(rows) >= 15
    sources = "".join(path.read_text() for path in (REPO / "tests").glob("test_*.py"))
    for row in rows:
        for name in row.rsplit("|", 2)[1].replace("`", "").replace(",", " ").split():
            assert f"def {name}(" in sources, name
