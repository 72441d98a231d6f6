"""The prepared copy of a dataset: one `<split>.npz` per split plus `manifest.json`.

Each split holds `images` (uint8, N x 3 x S x S, RGB), `labels` (int64 class index) and
`classes` (class names). Training and evaluation load a split into RAM once and divide
by 255 only when an episode is built.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from reproml.atomic import atomic_dir, check_not_an_ancestor, exclusive
from reproml.data.demo import generate as generate_demo
from reproml.data.sources import SPLITS, read_source, sha256_file
from reproml.errors import UserError
from reproml.files import load_npz, read_json, reading

FORMAT_VERSION = 1
MARKER, MARKER_TEXT = ".reproml-prepared", "a dataset prepared by reproml; 'reproml prepare' may replace this folder\n"


WIDE_GRAY = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535}


def to_8bit_rgb(image, name):
    """`image` as 8-bit RGB. Pillow's own conversion clips 16-bit and 32-bit integer images (white)
    and truncates float ones (black), so those are scaled to 0-255 here: integers by their range
    (65,535; larger values are refused), floats from [0, 1] (or [0, 255] when they exceed 1)."""
    if image.mode in WIDE_GRAY or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all() or values.min() < 0:
            raise UserError(f"{name}: {image.mode} image with negative or non-finite values; expected light intensities")
        top = WIDE_GRAY.get(image.mode) or (1.0 if values.max() <= 1 else 255.0)
        if values.max() > top:
            raise UserError(f"{name}: {image.mode} image with values up to {values.max():g}; expected at most {top:g}")
        return Image.fromarray(np.round(values * (255 / top)).astype(np.uint8), "L").convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise UserError(f"{name}: a {image.mode} image cannot be converted to RGB ({exc})") from None


def to_rgb_array(image, size, name="image"):
    image = to_8bit_rgb(image, name)
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def is_prepared(folder):
    """Whether `folder` is a prepared dataset that reproml wrote: its marker file says so (it survives
    Snakemake deleting the manifest, the rule's declared output, before it reruns the rule)."""
    try:
        return (Path(folder) / MARKER).read_text() == MARKER_TEXT
    except (OSError, UnicodeDecodeError):
        return False


def prepare(format, root, image_size, out, name=None, seed=0, images_per_class=600, progress=True):
    """Read a dataset source (or generate the demo) and write its prepared copy to `out`."""
    if image_size < 16:
        raise UserError(f"--image-size {image_size}: must be at least 16 (the learner pools four times)")
    if format != "demo":
        check_not_an_ancestor(out, (root, "the dataset's source folder"))
    # held through a file beside it, since the folder itself is replaced
    with exclusive(out, beside=True):
        if format == "demo":
            if images_per_class < 2:
                raise UserError(f"--images-per-class {images_per_class}: must be at least 2")
            splits = generate_demo(image_size, seed, images_per_class)
            source_info = {"format": "demo", "seed": seed, "images_per_class": images_per_class, "checksums": {}}
            return write_prepared(out, name, splits, image_size, source_info)
        source = read_source(format, root)
        try:
            splits = {split: decode(source.splits[split], image_size, split, progress) for split in SPLITS}
            return write_prepared(out, name, splits, image_size,
                                  {"format": format, "root": str(root), "checksums": source.checksums})
        finally:
            source.close()


def decode(images, image_size, split, progress):
    """(uint8 pixels (N, 3, S, S), labels, sorted class names) of a split's source images."""
    classes = sorted(dict.fromkeys(image.class_name for image in images))
    class_index = {name: i for i, name in enumerate(classes)}
    pixels = np.empty((len(images), 3, image_size, image_size), dtype=np.uint8)
    labels = np.empty(len(images), dtype=np.int64)
    for i, image in enumerate(tqdm(images, desc=f"prepare {split}", unit="img", disable=not progress)):
        pixels[i] = to_rgb_array(image.open(), image_size, image.name)
        labels[i] = class_index[image.class_name]
    return pixels, labels, classes


def write_prepared(out, name, splits, image_size, source_info):
    """Write every split and the manifest into a temporary folder that then replaces `out`."""
    with atomic_dir(out, is_ours=is_prepared) as tmp:
        counts = {}
        for split, (pixels, labels, classes) in splits.items():
            np.savez(tmp / f"{split}.npz", images=pixels, labels=labels, classes=np.array(classes))
            per_class = np.bincount(labels, minlength=len(classes))
            counts[split] = {"classes": len(classes), "images": len(labels),
                             "per_class": {name: int(n) for name, n in zip(classes, per_class)}}
        files = {f"{split}.npz": sha256_file(tmp / f"{split}.npz") for split in splits}
        manifest = {"format_version": FORMAT_VERSION, "name": name or Path(out).name, "source": source_info,
                    "image_size": image_size, "splits": counts, "files": files,
                    "dataset_sha256": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        (tmp / MARKER).write_text(MARKER_TEXT)
    return manifest


@dataclass
class Split:
    """One split in memory: uint8 images on the chosen device, labels, and each class's rows."""
    name: str
    images: torch.Tensor
    labels: np.ndarray
    classes: list
    rows_of_class: list

    @property
    def image_size(self):
        return self.images.shape[-1]


def read_manifest(data_dir):
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise UserError(f"{data_dir}: no manifest.json; create the folder with 'reproml prepare'")
    manifest = read_json(path, "manifest of a prepared dataset")
    if manifest.get("format_version") != FORMAT_VERSION or not isinstance(manifest.get("files"), dict):
        raise UserError(f"{path}: not a manifest written by this version of 'reproml prepare' (format_version "
                        f"{manifest.get('format_version')!r}, expected {FORMAT_VERSION}); prepare the dataset again")
    return manifest


def load_split(data_dir, split, device="cpu"):
    """A prepared split, after checking that it is the file the manifest recorded (by its sha256)."""
    manifest = read_manifest(data_dir)
    path = Path(data_dir) / f"{split}.npz"
    if not path.is_file():
        raise UserError(f"{path}: missing; rerun 'reproml prepare'")
    with reading(path, "prepared split"):
        digest = sha256_file(path)
    if digest != manifest["files"].get(path.name):
        raise UserError(f"{path}: its sha256 is not the one in manifest.json (the file was changed or replaced after "
                        "'reproml prepare'); prepare the dataset again")
    arrays = load_npz(path, "prepared split", ("images", "labels", "classes"))
    images, labels, classes = arrays["images"], arrays["labels"], [str(c) for c in arrays["classes"]]
    rows_of_class = [np.flatnonzero(labels == c) for c in range(len(classes))]
    return Split(split, torch.from_numpy(images).to(device), labels, classes, rows_of_class)
