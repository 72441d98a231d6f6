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

from reproml.atomic import atomic_dir
from reproml.data.demo import generate as generate_demo
from reproml.data.sources import SPLITS, read_source, sha256_file
from reproml.errors import UserError


def to_rgb_array(image, size):
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def prepare(format, root, image_size, out, name=None, seed=0, images_per_class=600, progress=True):
    """Read a dataset source (or generate the demo) and write its prepared copy to `out`."""
    if image_size < 16:
        raise UserError(f"--image-size {image_size}: must be at least 16 (the learner pools four times)")
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
        pixels[i] = to_rgb_array(image.open(), image_size)
        labels[i] = class_index[image.class_name]
    return pixels, labels, classes


def write_prepared(out, name, splits, image_size, source_info):
    """Write every split and the manifest into a temporary folder that then replaces `out`."""
    with atomic_dir(out) as tmp:
        counts = {}
        for split, (pixels, labels, classes) in splits.items():
            np.savez(tmp / f"{split}.npz", images=pixels, labels=labels, classes=np.array(classes))
            per_class = np.bincount(labels, minlength=len(classes))
            counts[split] = {"classes": len(classes), "images": len(labels),
                             "per_class": {name: int(n) for name, n in zip(classes, per_class)}}
        files = {f"{split}.npz": sha256_file(tmp / f"{split}.npz") for split in splits}
        manifest = {"format_version": 1, "name": name or Path(out).name, "source": source_info,
                    "image_size": image_size, "splits": counts, "files": files,
                    "dataset_sha256": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
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
    return json.loads(path.read_text())


def load_split(data_dir, split, device="cpu"):
    read_manifest(data_dir)
    path = Path(data_dir) / f"{split}.npz"
    if not path.is_file():
        raise UserError(f"{path}: missing; rerun 'reproml prepare'")
    with np.load(path, allow_pickle=False) as npz:
        images, labels, classes = npz["images"], npz["labels"], [str(c) for c in npz["classes"]]
    rows_of_class = [np.flatnonzero(labels == c) for c in range(len(classes))]
    return Split(split, torch.from_numpy(images).to(device), labels, classes, rows_of_class)
