"""Readers for the packagings of miniImagenet (and any dataset laid out like them).

Each reader returns a `Source`: for every split, the list of images as (class name, a name to
show in error messages, a function that opens the image), plus checksums of the files read.
Nothing here resizes or writes; `prepare.py` does that.
"""

import csv
import hashlib
import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from reproml.data.safe_unpickle import safe_load
from reproml.errors import UserError

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


@dataclass
class SourceImage:
    class_name: str
    name: str
    open: callable


@dataclass
class Source:
    splits: dict  # split -> list[SourceImage]
    checksums: dict = field(default_factory=dict)  # file -> sha256
    closers: list = field(default_factory=list)

    def close(self):
        for close in self.closers:
            close()


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_image_bytes(data, name):
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except Exception as exc:
        detail = re.sub(r" ?<[^>]* object at 0x[0-9a-f]+>", "", str(exc))  # PIL names its in-memory file
        raise UserError(f"{name}: not a readable image ({exc.__class__.__name__}: {detail})") from None


def read_ravi(root):
    """`images/` or `images.zip` plus train.csv, val.csv, test.csv with header `filename,label`."""
    root = Path(root)
    checksums = {}
    splits = {split: read_ravi_csv(root / f"{split}.csv") for split in SPLITS}
    for split in SPLITS:
        checksums[f"{split}.csv"] = sha256_file(root / f"{split}.csv")

    folder, archive = root / "images", root / "images.zip"
    if folder.is_dir():
        def opener(filename):
            path = folder / filename
            def open_():
                if not path.is_file():
                    raise UserError(f"{path}: listed in a split CSV but missing")
                return open_image_bytes(path.read_bytes(), path)
            return open_
        closers = []
    elif archive.is_file():
        checksums["images.zip"] = sha256_file(archive)
        try:
            zf = zipfile.ZipFile(archive)
        except zipfile.BadZipFile:
            raise UserError(f"{archive}: not a readable zip file") from None
        members = {Path(n).name: n for n in zf.namelist() if not n.endswith("/")}
        def opener(filename):
            def open_():
                member = members.get(filename)
                if member is None:
                    raise UserError(f"{archive}: {filename} is listed in a split CSV but missing from the archive")
                try:
                    data = zf.read(member)
                except (zipfile.BadZipFile, OSError) as exc:
                    raise UserError(f"{archive}: {member} cannot be read ({exc})") from None
                return open_image_bytes(data, f"{archive}:{member}")
            return open_
        closers = [zf.close]
    else:
        raise UserError(f"{root}: no images/ folder or images.zip (format 'ravi' expects one)")

    images = {split: [SourceImage(label, filename, opener(filename)) for filename, label in rows]
              for split, rows in splits.items()}
    return Source(images, checksums, closers)


def read_ravi_csv(path):
    if not path.is_file():
        raise UserError(f"{path}: missing (format 'ravi' expects train.csv, val.csv and test.csv)")
    with open(path, newline="") as f:
        text = f.read()
    if text and not text.endswith(("\n", "\r")):
        raise UserError(f"{path}: the last line {text.splitlines()[-1]!r} does not end with a newline, so the "
                        "file looks truncated (copy it again; if it is complete, end it with a newline)")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise UserError(f"{path}: empty; expected a header 'filename,label' and one row per image")
    header = [cell.strip() for cell in rows[0]]
    if header != ["filename", "label"]:
        raise UserError(f"{path}: header is {','.join(rows[0])!r}; expected 'filename,label'")
    body = rows[1:]
    if not body:
        raise UserError(f"{path}: has a header but no images")
    for line, row in enumerate(body, start=2):
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise UserError(f"{path}: line {line} is {','.join(row)!r}; expected 'filename,label'")
    return [(row[0].strip(), row[1].strip()) for row in body]


def read_folders(root):
    """`train/<class>/*`, `val/<class>/*`, `test/<class>/*`."""
    root = Path(root)
    splits = {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            raise UserError(f"{split_dir}: missing (format 'folders' expects train/, val/ and test/)")
        images = []
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for path in sorted(class_dir.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    images.append(SourceImage(class_dir.name, str(path),
                                              lambda path=path: open_image_bytes(path.read_bytes(), path)))
        if not images:
            raise UserError(f"{split_dir}: no images in class folders")
        splits[split] = images
    return Source(splits)


L2L_FILES = {"train": "mini-imagenet-cache-train.pkl",
             "val": "mini-imagenet-cache-validation.pkl",
             "test": "mini-imagenet-cache-test.pkl"}


def read_l2l_pickle(root):
    """learn2learn's caches: {'image_data': uint8 (N,H,W,3), 'class_dict': {class: [row, ...]}}."""
    root = Path(root)
    splits, checksums = {}, {}
    for split, filename in L2L_FILES.items():
        path = root / filename
        if not path.is_file():
            raise UserError(f"{path}: missing (format 'l2l-pickle' expects {', '.join(L2L_FILES.values())})")
        try:
            cache = safe_load(path)
        except Exception as exc:
            raise UserError(f"{path}: cannot be loaded safely ({exc})") from None
        cache = {key.decode() if isinstance(key, bytes) else key: value for key, value in cache.items()} \
            if isinstance(cache, dict) else cache
        if not isinstance(cache, dict) or "image_data" not in cache or "class_dict" not in cache:
            raise UserError(f"{path}: expected a dict with keys 'image_data' and 'class_dict'")
        data = np.asarray(cache["image_data"])
        if data.dtype != np.uint8 or data.ndim not in (3, 4):
            raise UserError(f"{path}: image_data is {data.dtype} {data.shape}; expected uint8 (N, H, W[, C])")
        images = []
        for class_name, rows in sorted(cache["class_dict"].items()):
            class_name = class_name.decode() if isinstance(class_name, bytes) else str(class_name)
            for row in rows:
                if not 0 <= int(row) < len(data):
                    raise UserError(f"{path}: class {class_name} lists row {row}, but image_data has {len(data)} rows")
                images.append(SourceImage(class_name, f"{path}[{row}]",
                                          lambda row=int(row), data=data: Image.fromarray(data[row])))
        splits[split] = images
        checksums[filename] = sha256_file(path)
    return Source(splits, checksums)


READERS = {"ravi": read_ravi, "folders": read_folders, "l2l-pickle": read_l2l_pickle}
FORMATS = (*READERS, "demo")  # demo is generated (data/demo.py), not read


def check_format(format):
    if format not in FORMATS:
        raise UserError(f"unknown dataset format {format!r}; expected one of {', '.join(FORMATS)}")


def read_source(format, root):
    check_format(format)
    if not Path(root).is_dir():
        raise UserError(f"{root}: dataset root does not exist or is not a folder")
    source = READERS[format](root)
    check_disjoint_classes(source.splits, root)
    return source


def check_disjoint_classes(splits, root):
    seen = {}
    for split, images in splits.items():
        for class_name in dict.fromkeys(image.class_name for image in images):
            if class_name in seen:
                raise UserError(f"{root}: class {class_name!r} is in both the {seen[class_name]} and {split} splits")
            seen[class_name] = split
