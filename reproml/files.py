"""Reading the files reproml's tools are given, through one place: every failure of the file system,
of decoding, or of a format (JSON, YAML, CSV, NumPy, torch, zip) becomes a one-line UserError that
names the file and the reason. Anything else is a bug and keeps its traceback.

(Writing goes through reproml.atomic, which names the file it could not write in the same way.)
"""

import csv
import io
import json
import pickle
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import yaml

from reproml.errors import UserError


def reason(exc):
    """Why reading failed, in a few words."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position {exc.start})"
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg} at line {exc.lineno})"
    if isinstance(exc, yaml.YAMLError):
        mark = getattr(exc, "problem_mark", None)
        return f"not valid YAML ({getattr(exc, 'problem', None) or exc}" + (f" at line {mark.line + 1})" if mark else ")")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = (str(exc).strip().splitlines() or [""])[0]
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


# What reading a file can raise because of the file rather than because of a bug in reproml.
FILE_ERRORS = (OSError, UnicodeDecodeError, ValueError, EOFError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError,
               yaml.YAMLError, csv.Error, RuntimeError, NotImplementedError)


@contextmanager
def reading(path, what):
    """Turn a failure while reading `path` (a `what`) into one line naming it."""
    try:
        yield
    except UserError:
        raise
    except FILE_ERRORS as exc:
        raise UserError(f"{path}: cannot read this {what} ({reason(exc)})") from None


def existing(path, what):
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: {what} not found")
    if not path.is_file():
        raise UserError(f"{path}: not a file (expected a {what})")
    return path


def read_text(path, what="text file"):
    with reading(path, what):
        return existing(path, what).read_text(encoding="utf-8")


def read_json(path, what="JSON file", keys=()):
    """A JSON object, checked to hold `keys`."""
    with reading(path, what):
        value = json.loads(read_text(path, what))
    if not isinstance(value, dict):
        raise UserError(f"{path}: not a {what} (expected a JSON object)")
    missing = [key for key in keys if key not in value]
    if missing:
        raise UserError(f"{path}: not a {what} (no {', '.join(missing)})")
    return value


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives the same key twice (which PyYAML would collapse)."""


def construct_unique_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_unique_mapping)


def read_yaml(path, what="YAML file"):
    with reading(path, what):
        return yaml.load(read_text(path, what), Loader=UniqueKeyLoader)


def read_csv(path, what, columns, delimiter=","):
    """The rows of a CSV file as dicts, checked to have `columns`."""
    with reading(path, what):
        rows = list(csv.DictReader(io.StringIO(read_text(path, what), newline=""), delimiter=delimiter))
    if rows and not set(columns) <= set(rows[0]):
        raise UserError(f"{path}: not a {what} (expected the columns {', '.join(columns)})")
    if any(None in row.values() for row in rows):
        raise UserError(f"{path}: not a {what} (a row has fewer fields than the header)")
    return rows


def read_frame(path, what, columns):
    """A CSV file as a pandas DataFrame, checked to have `columns`."""
    import pandas as pd

    with reading(path, what):
        frame = pd.read_csv(existing(path, what), encoding="utf-8", dtype={"image_pool": str})
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: not a {what} (no column {', '.join(missing)})")
    return frame


def load_npz(path, what, keys):
    """The arrays `keys` of a .npz file, no pickles."""
    with reading(path, what), np.load(existing(path, what), allow_pickle=False) as npz:
        return {key: npz[key] for key in keys}


def load_torch(path, what):
    """A file written by torch.save, unpickling only tensors and plain values."""
    existing(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot read this {what} ({reason(exc)})") from None
    except FILE_ERRORS:  # torch's own messages run to many lines about weights_only
        raise UserError(f"{path}: not a readable {what} (cut short, or not written by reproml's torch.save; "
                        "only tensors and plain values are loaded)") from None
