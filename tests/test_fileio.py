"""Atomic writes (`digits.fileio`): complete under the final name, or not there at all."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from digits import fileio


class Boom(Exception):
    pass


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


WRITERS = {
    "write_text": lambda path: fileio.write_text(path, "héllo\nworld\n"),
    "write_bytes": lambda path: fileio.write_bytes(path, b"\x00\x01binary"),
    "write_json": lambda path: fileio.write_json(path, {"a": [1, 2], "b": "é"}),
}
EXPECTED = {
    "write_text": "héllo\nworld\n".encode(),
    "write_bytes": b"\x00\x01binary",
    "write_json": (json.dumps({"a": [1, 2], "b": "é"}, indent=2) + "\n").encode(),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_writers_write_complete_file_and_leave_no_temp(tmp_path, writer):
    path = tmp_path / "sub" / "dir" / "out.txt"  # parents are created
    WRITERS[writer](path)
    assert path.read_bytes() == EXPECTED[writer]
    assert names(path.parent) == ["out.txt"]


@pytest.mark.parametrize("writer", WRITERS)
def test_writers_replace_existing_file(tmp_path, writer):
    path = tmp_path / "out.txt"
    path.write_text("old content that is longer than the new one " * 10)
    WRITERS[writer](path)
    assert path.read_bytes() == EXPECTED[writer]
    assert names(tmp_path) == ["out.txt"]


def test_write_text_uses_lf_and_utf8(tmp_path):
    path = tmp_path / "out.txt"
    fileio.write_text(path, "a\nb\r\nπ")
    assert path.read_bytes() == "a\nb\r\nπ".encode()


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
@pytest.mark.parametrize("existing", [None, b"precious old content\n"], ids=["new", "existing"])
def test_atomic_open_failure_leaves_final_untouched_and_no_temp(tmp_path, error, existing):
    path = tmp_path / "out.csv"
    if existing is not None:
        path.write_bytes(existing)
    with pytest.raises(error), fileio.atomic_open(path, "w") as handle:
        handle.write("half of the new content")
        handle.flush()
        raise error()
    if existing is None:
        assert not path.exists()
        assert names(tmp_path) == []
    else:
        assert path.read_bytes() == existing
        assert names(tmp_path) == ["out.csv"]


@pytest.mark.parametrize("existing", [None, "precious old content\n"], ids=["new", "existing"])
def test_write_text_failure_leaves_final_untouched_and_no_temp(tmp_path, existing):
    path = tmp_path / "out.txt"
    if existing is not None:
        path.write_text(existing)
    with pytest.raises(UnicodeEncodeError):
        fileio.write_text(path, "ok so far, then a lone surrogate: \ud800")
    if existing is None:
        assert not path.exists()
        assert names(tmp_path) == []
    else:
        assert path.read_text() == existing
        assert names(tmp_path) == ["out.txt"]


def test_write_json_failure_leaves_existing_file(tmp_path):
    path = tmp_path / "out.json"
    path.write_text('{"old": true}\n')
    with pytest.raises(TypeError):
        fileio.write_json(path, {"not serialisable": object()})
    assert path.read_text() == '{"old": true}\n'
    assert names(tmp_path) == ["out.json"]


@pytest.mark.parametrize("existing", [False, True])
def test_atomic_path_failure_and_success(tmp_path, existing):
    path = tmp_path / "model.keras"
    if existing:
        path.write_bytes(b"old")
    with pytest.raises(Boom), fileio.atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.suffix == ".keras"
        tmp.write_bytes(b"partial")
        raise Boom()
    assert names(tmp_path) == (["model.keras"] if existing else [])
    if existing:
        assert path.read_bytes() == b"old"

    with fileio.atomic_path(path) as tmp:
        tmp.write_bytes(b"new")
        assert not path.exists() or path.read_bytes() == b"old"  # not visible until the block ends
    assert path.read_bytes() == b"new"
    assert names(tmp_path) == ["model.keras"]


def test_without_overwrite_a_new_file_is_written_and_an_existing_one_kept(tmp_path):
    path = tmp_path / "sub.csv"
    fileio.write_text(path, "first\n", overwrite=False)
    assert path.read_text() == "first\n"
    assert names(tmp_path) == ["sub.csv"]

    with pytest.raises(FileExistsError) as caught:
        fileio.write_text(path, "second\n", overwrite=False)

    assert caught.value.filename == str(path)
    assert path.read_text() == "first\n"
    assert names(tmp_path) == ["sub.csv"]  # no temporary file left


def test_without_overwrite_a_file_another_process_wrote_meanwhile_is_kept(tmp_path):
    """The race a check-then-rename loses: the name appears while our file is being written."""
    path = tmp_path / "sub.csv"
    with pytest.raises(FileExistsError), fileio.atomic_path(path, overwrite=False) as tmp:
        tmp.write_text("ours\n")
        path.write_text("theirs\n")  # another `make submission` finished first
    assert path.read_text() == "theirs\n"
    assert names(tmp_path) == ["sub.csv"]
    assert path.stat().st_nlink == 1


@pytest.mark.parametrize("errno_name", ["EPERM", "EINVAL", "EACCES", "EXDEV"])
def test_without_overwrite_on_a_file_system_without_hard_links(tmp_path, monkeypatch, errno_name):
    """os.link refused (FAT, some network shares): the file is still written, and an existing one still kept."""

    def no_links(src, dst, *args, **kwargs):
        raise OSError(getattr(errno, errno_name), "hard links not supported", str(dst))

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "sub.csv"
    fileio.write_text(path, "first\n", overwrite=False)
    with pytest.raises(FileExistsError):
        fileio.write_text(path, "second\n", overwrite=False)
    assert path.read_text() == "first\n"
    assert names(tmp_path) == ["sub.csv"]


def test_without_overwrite_a_full_disk_is_not_taken_for_missing_hard_links(tmp_path, monkeypatch):
    def disk_full(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", disk_full)
    path = tmp_path / "sub.csv"
    with pytest.raises(OSError) as caught:
        fileio.write_text(path, "first\n", overwrite=False)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert names(tmp_path) == []


def test_atomic_path_block_that_removes_its_temp_file(tmp_path):
    path = tmp_path / "x.txt"
    with pytest.raises(FileNotFoundError), fileio.atomic_path(path) as tmp:
        tmp.unlink()
    assert names(tmp_path) == []


@pytest.mark.parametrize("writer", [*WRITERS, "atomic_open", "atomic_path"])
def test_written_files_get_umask_permissions_not_0600(tmp_path, writer):
    path = tmp_path / "out.txt"
    if writer == "atomic_open":
        with fileio.atomic_open(path, "w") as handle:
            handle.write("x")
    elif writer == "atomic_path":
        with fileio.atomic_path(path) as tmp:
            tmp.write_text("x")
    else:
        WRITERS[writer](path)
    reference = tmp_path / "reference.txt"
    reference.write_text("x")  # what a plain open() gives
    assert mode(path) == mode(reference) == 0o666 & ~umask()
    if umask() & 0o044 == 0:
        assert mode(path) != 0o600
