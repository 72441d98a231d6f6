"""Write files and folders so that a reader never sees half of one: write to a temporary name
beside the target, then rename (atomic on POSIX within one file system). A temporary left by a
process that was killed is removed by the next writer of the same target. A folder is replaced
only when the caller recognises it as its own; an output folder is held by one process at a time.
And read back reproml's own checkpoints without unpickling anything but tensors and plain values."""

import fcntl
import glob
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from reproml.errors import UserError
from reproml.files import load_torch


def umask_mode(mode):
    """`mode` less the process umask (temporary files are created private; outputs should not be)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def write_error(target, exc):
    return UserError(f"{target}: could not write it ({exc.strerror or exc}); its previous version, if any, is unchanged")


def make_dir(path):
    """Create the folder `path` (and its parents); a file in the way or a missing permission is one line."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot create this folder ({exc.strerror or exc})") from None
    return Path(path)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(target):
    """Remove the temporaries of `target` (".NAME.PID.*.tmp") whose process no longer runs."""
    for path in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        pid = path.name[len(target.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


def temporary_prefix(target):
    return f".{target.name}.{os.getpid()}."


@contextmanager
def atomic_path(target):
    """Yield a temporary path beside `target`; on success rename it onto `target`. A write
    error (a full disk, a quota, a file in the way) is a UserError naming `target`, which keeps
    its old contents."""
    target = Path(target)
    tmp = None
    try:
        make_dir(target.parent)
        remove_stale_temporaries(target)
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(target), suffix=".tmp", dir=target.parent)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, target)
    except OSError as exc:
        raise write_error(target, exc) from None
    finally:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)


def check_not_an_ancestor(target, *protected):
    """Refuse an output folder that is, or holds, one of `protected` (the working directory, a source)."""
    resolved = Path(target).resolve()
    for path, what in protected:
        path = Path(path).resolve()
        if path == resolved or resolved in path.parents:
            raise UserError(f"{target}: is {'' if path == resolved else 'a folder above '}{what}; "
                            "an output folder must be a folder of its own")


@contextmanager
def atomic_dir(target, is_ours):
    """Yield a temporary folder beside `target`; on success it replaces `target` whole. An existing
    `target` is replaced only if it is empty or `is_ours(target)` recognises it (a folder this tool
    wrote before); anything else there is refused, and nothing is deleted."""
    target = Path(target)
    check_not_an_ancestor(target, (Path.cwd(), "the working directory"))
    if target.exists() and not (target.is_dir() and (not any(target.iterdir()) or is_ours(target))):
        raise UserError(f"{target}: already exists and was not written by reproml; choose another output folder "
                        "or remove it yourself")
    make_dir(target.parent)
    remove_stale_temporaries(target)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(target), suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise write_error(target, exc) from None
    try:
        yield tmp
        os.chmod(tmp, umask_mode(0o777))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as exc:
        raise write_error(target, exc) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def same_file(path, handle):
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


@contextmanager
def exclusive(output, beside=False):
    """Hold the output folder `output` for this process: a second process that asks for it meanwhile is
    refused with one line naming the holder. The lock is the kernel's, so it ends with the process
    however the process ends. It is the file `output`/.lock, or with `beside` (for a folder that is
    replaced whole) `.NAME.lock` next to it; the holder removes the lock file again where nothing
    else is in the folder it made (or always, beside)."""
    output = Path(output)
    created = not output.exists()
    lock_file = output.parent / f".{output.name}.lock" if beside else output / ".lock"
    make_dir(lock_file.parent)
    try:
        handle = open(lock_file, "a+")
    except OSError as exc:
        raise write_error(lock_file, exc) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not same_file(lock_file, handle):  # its holder removed it as we opened it: it is taken anew
                raise BlockingIOError
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserError(f"{output}: in use by {holder}; wait for it to finish, or use another output folder") \
                from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
            yield output
        finally:
            if beside:
                lock_file.unlink(missing_ok=True)
            elif created and output.is_dir() and os.listdir(output) == [".lock"]:
                lock_file.unlink()
                output.rmdir()


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
    ckpt = load_torch(path, what)
    if not isinstance(ckpt, dict) or ckpt.get("format") != expected_format:
        found = ckpt.get("format") if isinstance(ckpt, dict) else None
        raise UserError(f"{path}: not a reproml {what} (expected format {expected_format}"
                        + (f", found {found}" if found else "") + ")")
    return ckpt
