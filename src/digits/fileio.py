"""Atomic writes: a file appears under its final name complete, or not at all.

Every artifact is written to a temporary name in the same folder, flushed to disk, then renamed,
so a crash, a Ctrl-C or a full disk never leaves a half-written file where a later stage reads it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # what a full disk looks like


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it to `final` only if the block succeeds.

    For writers that want a path rather than a file object (Keras, matplotlib, numpy). The
    temporary name is hidden (leading dot) and keeps the extension such writers insist on.
    `overwrite=False`: FileExistsError if `final` exists when the file is put in place, even if another
    process created it meanwhile (a hard link, which fails on an existing name, where a rename would replace it).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Writers such as Keras insist on the full extension (".weights.h5"), so keep every suffix.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp" + "".join(final.suffixes), dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        yield tmp
        _fsync_file(tmp)
        if overwrite:
            os.replace(tmp, final)
        else:
            _link_new(tmp, final)
        _fsync_dir(final.parent)
    except OSError as error:
        if error.errno in DISK_FULL_ERRNOS and not error.filename:
            error.filename = str(final)  # a failed write() names no file; the user knows the final name
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _link_new(tmp: Path, final: Path) -> None:
    """Give `tmp`'s complete file the name `final`, which must not exist (FileExistsError otherwise)."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "exists and is never overwritten", str(final)) from None
    except OSError as error:
        if error.errno in DISK_FULL_ERRNOS:
            raise
        # A file system without hard links (FAT, some network shares; the errno varies: EPERM, EINVAL, ENOTSUP,
        # EACCES...): check, then rename (a race remains only there).
        if final.exists():
            raise FileExistsError(errno.EEXIST, "exists and is never overwritten", str(final)) from None
        os.replace(tmp, final)


@contextlib.contextmanager
def atomic_open(final: str | os.PathLike, mode: str = "w", overwrite: bool = True, **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside `final` for writing; rename it into place on success (`atomic_path`)."""
    with atomic_path(final, overwrite) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle


def write_text(final: str | os.PathLike, text: str, overwrite: bool = True) -> None:
    with atomic_open(final, "w", overwrite=overwrite, encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def write_bytes(final: str | os.PathLike, data: bytes) -> None:
    with atomic_open(final, "wb") as handle:
        handle.write(data)


def write_json(final: str | os.PathLike, obj: Any) -> None:
    write_text(final, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_npy(final: str | os.PathLike, array) -> None:
    """np.save, atomically. Serialised in memory first: numpy's own file writes turn a full disk into an
    OSError without an errno ("N requested and M written"), which could not be told from any other failure."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes(final, buffer.getvalue())


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
