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
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from reproml.data.safe_unpickle import safe_load
from reproml.errors import UserError
from reproml.files import reading, reason

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
# No few-shot image is this large; a bigger file or archive member is refused before it is read
# (a small zip can hold a member that would fill the memory).
MAX_IMAGE_BYTES = 64 << 20


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


def check_image_size(size, name):
    if size > MAX_IMAGE_BYTES:
        raise UserError(f"{name}: {size / (1 << 20):.0f} MiB; images over {MAX_IMAGE_BYTES >> 20} MiB are refused")


def read_image_file(path):
    """The bytes of an image file, checked to be a file of a plausible size."""
    with reading(path, "image"):
        if not path.is_file():
            raise UserError(f"{path}: not a file (a folder, a broken link or a device named like an image)")
        check_image_size(path.stat().st_size, path)
        return path.read_bytes()


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
    check_unique([(split, filename) for split, rows in splits.items() for filename, _ in rows], root)
    for split in SPLITS:
        checksums[f"{split}.csv"] = sha256_file(root / f"{split}.csv")

    folder, archive = root / "images", root / "images.zip"
    if folder.is_dir():
        def opener(filename):
            path = folder / filename
            def open_():
                if not path.exists():
                    raise UserError(f"{path}: listed in a split CSV but missing")
                return open_image_bytes(read_image_file(path), path)
            return open_
        closers = []
    elif archive.is_file():
        checksums["images.zip"] = sha256_file(archive)
        try:
            zf = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError):
            raise UserError(f"{archive}: not a readable zip file") from None
        members = {info.filename: info for info in zf.infolist()}
        def opener(filename):
            def open_():
                member = members.get(f"images/{filename}")  # the release's layout, nothing else
                if member is None or member.is_dir():
                    raise UserError(f"{archive}: {filename} is listed in a split CSV but missing from the archive "
                                    f"(expected the member images/{filename})")
                check_image_size(member.file_size, f"{archive}:{member.filename}")
                try:
                    data = zf.read(member)
                except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, zlib.error) as exc:
                    raise UserError(f"{archive}: {member.filename} cannot be read ({reason(exc)})") from None
                return open_image_bytes(data, f"{archive}:{member.filename}")
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
    with reading(path, "split CSV"), open(path, newline="", encoding="utf-8") as f:
        text = f.read()
    if text and not text.endswith(("\n", "\r")):
        raise UserError(f"{path}: the last line {text.splitlines()[-1]!r} does not end with a newline, so the "
                        "file looks truncated (copy it again; if it is complete, end it with a newline)")
    with reading(path, "split CSV"):
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
                                              lambda path=path: open_image_bytes(read_image_file(path), path)))
        if not images:
            raise UserError(f"{split_dir}: no images in class folders")
        splits[split] = images
    # a link can make one file appear in two classes or splits
    check_unique([(split, str(Path(image.name).resolve())) for split, images in splits.items() for image in images],
                 root)
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
        except Exception as exc:  # anything an untrusted pickle makes the unpickler raise is the file's fault
            raise UserError(f"{path}: cannot be loaded safely ({reason(exc)})") from None
        cache = {key.decode() if isinstance(key, bytes) else key: value for key, value in cache.items()} \
            if isinstance(cache, dict) else cache
        if not isinstance(cache, dict) or "image_data" not in cache or "class_dict" not in cache:
            raise UserError(f"{path}: expected a dict with keys 'image_data' and 'class_dict'")
        data = np.asarray(cache["image_data"])
        if data.dtype != np.uint8 or data.ndim not in (3, 4) or (data.ndim == 4 and data.shape[3] not in (1, 3, 4)):
            raise UserError(f"{path}: image_data is {data.dtype} {data.shape}; expected uint8 (N, H, W[, 1, 3 or 4])")
        images = []
        if not isinstance(cache["class_dict"], dict):
            raise UserError(f"{path}: class_dict is a {type(cache['class_dict']).__name__}; expected a dict of "
                            "class -> image rows")
        for class_name, rows in cache["class_dict"].items():
            if not isinstance(rows, (list, tuple, np.ndarray)) or not all(
                    isinstance(row, (int, np.integer)) and not isinstance(row, bool) for row in rows):
                raise UserError(f"{path}: class_dict[{class_name!r}] is not a list of image rows (integers)")
        check_unique([(split, int(row)) for rows in cache["class_dict"].values() for row in rows], path,
                     lambda row: f"row {row}")
        for class_name, rows in sorted(cache["class_dict"].items(), key=lambda item: str(item[0])):
            class_name = class_name.decode() if isinstance(class_name, bytes) else str(class_name)
            for row in rows:
                if not 0 <= int(row) < len(data):
                    raise UserError(f"{path}: class {class_name} lists row {row}, but image_data has {len(data)} rows")
                images.append(SourceImage(class_name, f"{path}[{row}]",
                                          lambda row=int(row), data=data: Image.fromarray(data[row].squeeze())))
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


def check_unique(entries, root, describe=repr):
    """Refuse an image listed twice, in one split or in two: a test episode must never hold a training image."""
    seen = {}
    for split, key in entries:
        if key in seen:
            where = f"twice in the {split} split" if seen[key] == split else f"in both the {seen[key]} and {split} splits"
            raise UserError(f"{root}: {describe(key)} is listed {where}; every image must be in one split, once")
        seen[key] = split


def check_disjoint_classes(splits, root):
    seen = {}
    for split, images in splits.items():
        for class_name in dict.fromkeys(image.class_name for image in images):
            if class_name in seen:
                raise UserError(f"{root}: class {class_name!r} is in both the {seen[class_name]} and {split} splits")
            seen[class_name] = split
