"""Write files and folders so that a reader never sees half of one: write to a temporary
name beside the target, then rename (atomic on POSIX within one file system). And read back
reproml's own checkpoints without unpickling anything but tensors and plain values."""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from reproml.errors import UserError


def umask_mode(mode):
    """`mode` less the process umask (temporary files are created private; outputs should not be)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextmanager
def atomic_path(target):
    """Yield a temporary path beside `target`; on success rename it onto `target`. A write
    error (a full disk, a quota) is a UserError naming `target`, which keeps its old contents."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, target)
    except OSError as exc:
        raise UserError(f"{target}: could not write it ({exc.strerror or exc}); "
                        "its previous version, if any, is unchanged") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_dir(target):
    """Yield a temporary folder beside `target`; on success it replaces `target` whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, umask_mode(0o777))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_torch(path, obj):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checked(path, expected_format, what):
    """A checkpoint written by reproml, unpickling only tensors and plain values; a missing,
    unreadable or foreign file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: not a readable checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != expected_format:
        raise UserError(f"{path}: not a reproml {what} (expected format {expected_format})")
    return ckpt
