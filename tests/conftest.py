"""Small datasets generated on the fly, in each source format, and helpers to run the CLI."""

import csv
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
from PIL import Image

from reproml.cli import main

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "miniimagenet-100"
needs_real_data = pytest.mark.skipif(not (REAL_DATA / "images.zip").is_file(),
                                     reason=f"real miniImagenet folder not found at {REAL_DATA}")

SPLIT_CLASSES = {"train": 6, "val": 5, "test": 5}


def class_image(split, c, i, size=(24, 20), mode="RGB"):
    """A deterministic image whose colour depends on the class, with per-image noise."""
    rng = np.random.default_rng([list(SPLIT_CLASSES).index(split), c, i])
    base = np.array([(37 * c) % 256, (91 * c) % 256, (53 * c + 40) % 256], dtype=np.float64)
    pixels = np.clip(base + rng.normal(0, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


def dataset_listing(per_class=20):
    """(split, class name, image index) for every image of the small dataset."""
    return [(split, f"{split}_c{c}", c, i) for split, n in SPLIT_CLASSES.items()
            for c in range(n) for i in range(per_class)]


def make_folders(root, per_class=20, size=(24, 20), mode="RGB"):
    for split, name, c, i in dataset_listing(per_class):
        path = Path(root) / split / name / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        class_image(split, c, i, size, mode).save(path)
    return Path(root)


def make_ravi(root, per_class=20, archive=True):
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = {split: [] for split in SPLIT_CLASSES}
    images = {}
    for split, name, c, i in dataset_listing(per_class):
        filename = f"{name}_{i:03d}.jpg"
        rows[split].append((filename, name))
        images[filename] = class_image(split, c, i)
    if archive:
        with zipfile.ZipFile(root / "images.zip", "w") as zf:
            for filename, image in images.items():
                path = root / filename
                image.save(path, quality=95)
                zf.write(path, f"images/{filename}")
                path.unlink()
    else:
        (root / "images").mkdir()
        for filename, image in images.items():
            image.save(root / "images" / filename, quality=95)
    for split, split_rows in rows.items():
        with open(root / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "label"])
            writer.writerows(split_rows)
    return root


def make_l2l(root, per_class=20, size=30):
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names = {"train": "train", "val": "validation", "test": "test"}
    for split, n in SPLIT_CLASSES.items():
        data = np.stack([np.asarray(class_image(split, c, i, (size, size))) for c in range(n)
                         for i in range(per_class)])
        class_dict = {f"{split}_c{c}".encode(): list(range(c * per_class, (c + 1) * per_class)) for c in range(n)}
        with open(root / f"mini-imagenet-cache-{names[split]}.pkl", "wb") as f:
            pickle.dump({b"image_data": data, b"class_dict": class_dict}, f, protocol=4)
    return root


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """A prepared 16x16 copy of the small dataset (folders format)."""
    base = tmp_path_factory.mktemp("prepared")
    make_folders(base / "source")
    assert main(["prepare", "--format", "folders", "--root", str(base / "source"), "--image-size", "16",
                 "--out", str(base / "data"), "--quiet"]) == 0
    return base / "data"


def run_cli(capsys, *argv):
    """Run `reproml argv...` in this process; return (exit status, stdout, stderr)."""
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def kill_after_first_checkpoint(argv, checkpoint):
    """Start `reproml argv...` in a subprocess and SIGKILL it as soon as `checkpoint` exists."""
    process = subprocess.Popen([sys.executable, "-m", "reproml", *map(str, argv)])
    while not Path(checkpoint).exists() and process.poll() is None:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
