"""CSV loading and validation (`digits.data`), on small files built from real rows of the bundled sample."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from digits import data
from digits.data import FIX_HINT, PIXEL_COLUMNS, TEST_COLUMNS, TRAIN_COLUMNS, DataError
from digits.sample import build_sample

SAMPLE_ZIP = Path(__file__).resolve().parents[1] / "data" / "sample" / "digit-recognizer.zip"
N_ROWS = 5  # data rows in the small CSVs: lines 2..6
BOM = b"\xef\xbb\xbf"


def _split(raw: bytes) -> tuple[bytes, list[bytes]]:
    lines = raw.rstrip(b"\n").split(b"\n")
    return lines[0], lines[1:]


@pytest.fixture(scope="module")
def sample() -> dict[str, tuple[bytes, list[bytes]]]:
    """Header and data lines (bytes, no newline) of each CSV in the bundled sample zip."""
    with zipfile.ZipFile(SAMPLE_ZIP) as archive:
        return {name: _split(archive.read(name)) for name in ("train.csv", "test.csv", "sample_submission.csv")}


def write_csv(
    path: Path,
    header: bytes,
    rows: list[bytes],
    *,
    newline: bytes = b"\n",
    bom: bool = False,
    final_newline: bool = True,
) -> Path:
    content = newline.join([header, *rows]) + (newline if final_newline else b"")
    path.write_bytes((BOM if bom else b"") + content)
    return path


def small(sample, name: str, n: int = N_ROWS) -> tuple[bytes, list[bytes]]:
    header, rows = sample[name]
    return header, list(rows[:n])


def set_cell(row: bytes, columns: tuple[str, ...], column: str, value: bytes) -> bytes:
    cells = row.split(b",")
    cells[columns.index(column)] = value
    return b",".join(cells)


def values(row: bytes) -> list[int]:
    return [int(cell) for cell in row.split(b",")]


def check_error(
    error: DataError,
    path: Path,
    line: int | None = None,
    column: str | None = None,
    words: tuple[str, ...] = (),
    hint: str = FIX_HINT,
) -> None:
    message = str(error)
    assert str(path) in message
    if line is not None:
        assert re.search(rf"\bline {line}\b", message), message
    if column is not None:
        assert f"'{column}'" in message, message
    for word in words:
        assert word in message, message
    assert hint in message, message


# ---------------------------------------------------------------- valid files


@pytest.mark.parametrize(
    ("newline", "bom"),
    [(b"\n", False), (b"\r\n", False), (b"\n", True), (b"\r\n", True)],
    ids=["LF", "CRLF", "BOM", "BOM+CRLF"],
)
def test_load_train_valid(tmp_path, sample, newline, bom):
    header, rows = small(sample, "train.csv")
    path = write_csv(tmp_path / "train.csv", header, rows, newline=newline, bom=bom)
    train = data.load_train(path)
    assert train.images.shape == (N_ROWS, 28, 28, 1)
    assert train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64
    assert train.labels.tolist() == [values(row)[0] for row in rows]
    # Row-major: pixel{28*r + c} is image[r, c].
    for image, row in zip(train.images, rows, strict=True):
        assert np.array_equal(image[:, :, 0], np.array(values(row)[1:]).reshape(28, 28))
    pixels = values(rows[0])[1:]
    k = next(i for i, v in enumerate(pixels) if v and pixels[(i % 28) * 28 + i // 28] != v)  # not transpose-proof
    assert train.images[0, k // 28, k % 28, 0] == pixels[k]


@pytest.mark.parametrize(
    ("newline", "bom"),
    [(b"\n", False), (b"\r\n", False), (b"\n", True), (b"\r\n", True)],
    ids=["LF", "CRLF", "BOM", "BOM+CRLF"],
)
def test_load_test_valid(tmp_path, sample, newline, bom):
    header, rows = small(sample, "test.csv")
    path = write_csv(tmp_path / "test.csv", header, rows, newline=newline, bom=bom)
    images = data.load_test(path)
    assert images.shape == (N_ROWS, 28, 28, 1)
    assert images.dtype == np.uint8
    for image, row in zip(images, rows, strict=True):
        assert np.array_equal(image[:, :, 0], np.array(values(row)).reshape(28, 28))


def test_load_train_without_final_newline(tmp_path, sample):
    header, rows = small(sample, "train.csv")
    path = write_csv(tmp_path / "train.csv", header, rows, final_newline=False)
    assert len(data.load_train(path).labels) == N_ROWS


# ---------------------------------------------------------------- file-level errors


def test_missing_file(tmp_path):
    path = tmp_path / "train.csv"
    with pytest.raises(DataError) as info:
        data.load_train(path)
    check_error(info.value, path, words=("not found",), hint="make download")


@pytest.mark.parametrize("content", [b"", b"\n", BOM], ids=["empty", "newline-only", "BOM-only"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "train.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        data.load_train(path)
    check_error(info.value, path, words=("empty",))


@pytest.mark.parametrize("final_newline", [True, False])
@pytest.mark.parametrize("name", ["train.csv", "test.csv"])
def test_header_only(tmp_path, sample, name, final_newline):
    header, _ = sample[name]
    path = write_csv(tmp_path / name, header, [], final_newline=final_newline)
    load = data.load_train if name == "train.csv" else data.load_test
    with pytest.raises(DataError) as info:
        load(path)
    check_error(info.value, path, words=("no data rows",))


# ---------------------------------------------------------------- header errors (line 1)


def _drop_last_column(header, rows):
    return header.rsplit(b",", 1)[0], [row.rsplit(b",", 1)[0] for row in rows]


def _extra_column(header, rows):
    return header + b",extra", [row + b",0" for row in rows]


def _swap_columns(header, rows):
    return header.replace(b",pixel3,pixel4,", b",pixel4,pixel3,"), rows


def _duplicate_column(header, rows):
    return header.replace(b",pixel5,", b",pixel4,"), rows


HEADER_CASES = {
    "missing-column": (_drop_last_column, "pixel783", ("missing column",)),
    "extra-column": (_extra_column, "extra", ("unexpected column",)),
    "swapped-columns": (_swap_columns, "pixel4", ("out of order", "'pixel3'")),
    "duplicated-column": (_duplicate_column, "pixel4", ("twice",)),
}


@pytest.mark.parametrize("name", ["train.csv", "test.csv"])
@pytest.mark.parametrize("case", HEADER_CASES)
def test_header_errors(tmp_path, sample, name, case):
    mutate, column, words = HEADER_CASES[case]
    header, rows = mutate(*small(sample, name))
    path = write_csv(tmp_path / name, header, rows)
    load = data.load_train if name == "train.csv" else data.load_test
    with pytest.raises(DataError) as info:
        load(path)
    check_error(info.value, path, line=1, column=column, words=words)


def test_label_column_in_test_csv(tmp_path, sample):
    path = write_csv(tmp_path / "test.csv", *small(sample, "train.csv"))
    with pytest.raises(DataError) as info:
        data.load_test(path)
    check_error(info.value, path, line=1, column="label", words=("must not have labels",))


# ---------------------------------------------------------------- cell and row errors


CELL_CASES = {  # case -> (column, bad value, words in the message)
    "text": ("pixel400", b"abc", ("not a number",)),
    "float": ("pixel400", b"12.5", ("decimal",)),
    "negative-pixel": ("pixel400", b"-3", ("outside 0..255",)),
    "pixel-256": ("pixel400", b"256", ("outside 0..255",)),
    "pixel-huge": ("pixel400", b"99999999999999999999", ("out of range",)),
    "missing-value": ("pixel400", b"", ("missing value",)),
    "missing-first-value": ("pixel0", b"", ("missing value",)),
    "missing-last-value": ("pixel783", b"", ("missing value",)),
    "label-10": ("label", b"10", ("outside 0..9",)),
    "label-minus-1": ("label", b"-1", ("outside 0..9",)),
    "label-float": ("label", b"3.0", ("decimal",)),
    "label-missing": ("label", b"", ("missing value",)),
}


@pytest.mark.parametrize("row_index", [0, 2, N_ROWS - 1], ids=["first-row", "middle-row", "last-row"])
@pytest.mark.parametrize(
    ("case", "name"),
    [
        (case, name)
        for case in CELL_CASES
        for name in ("train.csv", "test.csv")
        if CELL_CASES[case][0] in (TRAIN_COLUMNS if name == "train.csv" else TEST_COLUMNS)
    ],
)
def test_cell_errors(tmp_path, sample, case, name, row_index):
    column, value, words = CELL_CASES[case]
    columns = TRAIN_COLUMNS if name == "train.csv" else TEST_COLUMNS
    header, rows = small(sample, name)
    rows[row_index] = set_cell(rows[row_index], columns, column, value)
    path = write_csv(tmp_path / name, header, rows)
    load = data.load_train if name == "train.csv" else data.load_test
    with pytest.raises(DataError) as info:
        load(path)
    check_error(info.value, path, line=row_index + 2, column=column, words=words)


def test_range_error_reports_first_bad_cell(tmp_path, sample):
    header, rows = small(sample, "train.csv")
    rows[3] = set_cell(rows[3], TRAIN_COLUMNS, "pixel10", b"300")
    rows[1] = set_cell(rows[1], TRAIN_COLUMNS, "pixel700", b"999")
    path = write_csv(tmp_path / "train.csv", header, rows)
    with pytest.raises(DataError) as info:
        data.load_train(path)
    check_error(info.value, path, line=3, column="pixel700", words=("999", "2 such value"))


def _truncate_after_comma(rows):
    return [*rows[:-1], rows[-1][: rows[-1].rindex(b",", 0, len(rows[-1]) // 2) + 1]]


def _truncate_mid_value(rows):
    last = rows[-1]
    cut = next(m.start() + 1 for m in re.finditer(rb"\d\d+", last))  # inside the first multi-digit value
    return [*rows[:-1], last[:cut]]


def _extra_value(index):
    return lambda rows: [row + b",0" if i == index else row for i, row in enumerate(rows)]


ROW_CASES = {  # case -> (change to the rows, bad line, final newline, words)
    "truncated-after-comma": (_truncate_after_comma, N_ROWS + 1, False, ("too few values", "truncated")),
    "truncated-mid-value": (_truncate_mid_value, N_ROWS + 1, False, ("too few values", "truncated")),
    "too-few-middle": (lambda rows: [rows[0], rows[1].rsplit(b",", 1)[0], *rows[2:]], 3, True, ("too few values",)),
    "too-many-first": (_extra_value(0), 2, True, ("too many values",)),
    "too-many-middle": (_extra_value(2), 4, True, ("too many values",)),
    "too-many-last": (_extra_value(N_ROWS - 1), N_ROWS + 1, True, ("too many values",)),
    "too-many-every-row": (lambda rows: [row + b",0" for row in rows], 2, True, ("too many values",)),
    "empty-line": (lambda rows: [rows[0], b"", *rows[1:]], 3, True, ("empty line",)),
    "blank-line": (lambda rows: [rows[0], rows[1], b"  ", *rows[2:]], 4, True, ("empty line",)),
}


@pytest.mark.parametrize("name", ["train.csv", "test.csv"])
@pytest.mark.parametrize("case", ROW_CASES)
def test_row_errors(tmp_path, sample, case, name):
    mutate, line, final_newline, words = ROW_CASES[case]
    header, rows = small(sample, name)
    path = write_csv(tmp_path / name, header, mutate(rows), final_newline=final_newline)
    load = data.load_train if name == "train.csv" else data.load_test
    with pytest.raises(DataError) as info:
        load(path)
    check_error(info.value, path, line=line, words=words)


@pytest.mark.parametrize("name", ["train.csv", "test.csv"])
def test_duplicated_header_line(tmp_path, sample, name):
    header, rows = small(sample, name)
    path = write_csv(tmp_path / name, header, [*rows[:2], header, *rows[2:]])
    load = data.load_train if name == "train.csv" else data.load_test
    with pytest.raises(DataError) as info:
        load(path)
    first_column = "label" if name == "train.csv" else "pixel0"
    check_error(info.value, path, line=4, column=first_column, words=("header again",))


@pytest.mark.parametrize(
    ("newline", "bom"), [(b"\r\n", False), (b"\n", True), (b"\r\n", True)], ids=["CRLF", "BOM", "BOM+CRLF"]
)
@pytest.mark.parametrize("case", ["range", "text", "empty-line", "too-few"])
def test_line_numbers_with_crlf_and_bom(tmp_path, sample, case, newline, bom):
    header, rows = small(sample, "train.csv")
    if case == "range":
        rows[2] = set_cell(rows[2], TRAIN_COLUMNS, "pixel7", b"256")
    elif case == "text":
        rows[2] = set_cell(rows[2], TRAIN_COLUMNS, "pixel7", b"x")
    elif case == "empty-line":
        rows.insert(2, b"")
    else:
        rows[2] = rows[2].rsplit(b",", 1)[0]
    path = write_csv(tmp_path / "train.csv", header, rows, newline=newline, bom=bom)
    with pytest.raises(DataError) as info:
        data.load_train(path)
    check_error(info.value, path, line=4, column=None if case in ("empty-line", "too-few") else "pixel7")


# ---------------------------------------------------------------- sample_submission.csv


def test_load_sample_submission_valid(tmp_path, sample):
    path = write_csv(tmp_path / "sample_submission.csv", *small(sample, "sample_submission.csv"))
    assert data.load_sample_submission(path).tolist() == list(range(1, N_ROWS + 1))


@pytest.mark.parametrize(
    ("ids", "line", "found"),
    [([1, 2, 4, 5, 6], 4, 4), ([0, 1, 2, 3, 4], 2, 0), ([1, 2, 3, 5, 4], 5, 5), ([1, 2, 3, 4, 4], 6, 4)],
    ids=["gap", "starts-at-0", "swapped", "repeated"],
)
def test_sample_submission_ids_must_count(tmp_path, ids, line, found):
    path = write_csv(tmp_path / "sample_submission.csv", b"ImageId,Label", [b"%d,0" % i for i in ids])
    with pytest.raises(DataError) as info:
        data.load_sample_submission(path)
    check_error(info.value, path, line=line, column="ImageId", words=(f"found {found}", "1..N"))


def test_sample_submission_wrong_header(tmp_path):
    path = write_csv(tmp_path / "sample_submission.csv", b"ImageId,label", [b"1,0"])
    with pytest.raises(DataError) as info:
        data.load_sample_submission(path)
    check_error(info.value, path, line=1, column="Label")


# ---------------------------------------------------------------- verify_folder


def _write_folder(folder: Path, sample, train_rows: int, test_rows: int, submission_rows: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.csv", train_rows), ("test.csv", test_rows), ("sample_submission.csv", submission_rows)):
        write_csv(folder / name, *small(sample, name, n))
    return folder


def test_verify_folder_on_bundled_sample(tmp_path):
    with zipfile.ZipFile(SAMPLE_ZIP) as archive:
        archive.extractall(tmp_path)
    check = data.verify_folder(tmp_path)
    assert check.rows == {"train.csv": 3000, "test.csv": 1000, "sample_submission.csv": 1000}
    assert len(check.warnings) == 3  # row counts only: every class is present
    for name, warning in zip(check.rows, check.warnings, strict=True):
        assert warning.startswith(f"{name} has ")


def test_verify_folder_small_counts_are_warnings(tmp_path, sample):
    folder = _write_folder(tmp_path, sample, 20, 7, 7)
    check = data.verify_folder(folder)
    assert check.rows == {"train.csv": 20, "test.csv": 7, "sample_submission.csv": 7}
    assert any("train.csv has 20 rows" in w and "42,000" in w for w in check.warnings)
    assert any("test.csv has 7 rows" in w and "28,000" in w for w in check.warnings)
    missing = sorted(set(range(10)) - {values(row)[0] for row in sample["train.csv"][1][:20]})
    assert any(f"no rows of class(es) {missing}" in w for w in check.warnings) == bool(missing)


@pytest.mark.parametrize("submission_rows", [6, 8])
def test_verify_folder_submission_rows_must_match_test(tmp_path, sample, submission_rows):
    folder = _write_folder(tmp_path, sample, 10, 7, submission_rows)
    with pytest.raises(DataError) as info:
        data.verify_folder(folder)
    check_error(info.value, folder / "sample_submission.csv", words=(f"has {submission_rows} rows", "test.csv has 7"))


@pytest.mark.parametrize("name", ["train.csv", "test.csv", "sample_submission.csv"])
def test_verify_folder_missing_file(tmp_path, sample, name):
    folder = _write_folder(tmp_path, sample, 10, 7, 7)
    (folder / name).unlink()
    with pytest.raises(DataError) as info:
        data.verify_folder(folder)
    check_error(info.value, folder / name, words=("not found",), hint="make download")


# ---------------------------------------------------------------- digits.sample.build_sample


def test_build_sample_format_stratification_and_reproducibility(tmp_path, sample):
    source = tmp_path / "source.zip"
    source.write_bytes(SAMPLE_ZIP.read_bytes())
    out = tmp_path / "out" / "digit-recognizer.zip"
    summary = build_sample(source, out, train_rows=500, test_rows=200)

    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == ["train.csv", "test.csv", "sample_submission.csv"]
        assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in archive.infolist())
        built = {name: archive.read(name) for name in archive.namelist()}
    for name, raw in built.items():
        assert raw.endswith(b"\n") and b"\r" not in raw
        assert _split(raw)[0] == sample[name][0]  # same header
    train_header, train_rows = _split(built["train.csv"])
    test_header, test_rows = _split(built["test.csv"])
    assert (len(train_rows), len(test_rows)) == (500, 200)
    assert built["sample_submission.csv"] == b"ImageId,Label\n" + b"".join(b"%d,0\n" % i for i in range(1, 201))

    # Rows are copied byte for byte and keep their original order.
    for name, rows in (("train.csv", train_rows), ("test.csv", test_rows)):
        position = {row: i for i, row in enumerate(sample[name][1])}
        indexes = [position[row] for row in rows]
        assert indexes == sorted(indexes) and len(set(indexes)) == len(rows)

    # Stratified: each class within 1 of its share of the source.
    source_counts = np.bincount([values(row)[0] for row in sample["train.csv"][1]], minlength=10)
    counts = np.bincount([values(row)[0] for row in train_rows], minlength=10)
    expected = source_counts * 500 / source_counts.sum()
    assert np.all(np.abs(counts - expected) <= 1), (counts, expected)
    assert summary["class_counts"] == counts.tolist()
    assert summary["train_rows"] == 500 and summary["test_rows"] == 200
    assert summary["bytes"] == out.stat().st_size

    # The result loads and validates like the real thing.
    folder = tmp_path / "extracted"
    with zipfile.ZipFile(out) as archive:
        archive.extractall(folder)
    assert data.verify_folder(folder).rows == {"train.csv": 500, "test.csv": 200, "sample_submission.csv": 200}

    # Rebuilding is byte-identical; no temporary files are left beside the output.
    again = tmp_path / "again.zip"
    build_sample(source, again, train_rows=500, test_rows=200)
    assert again.read_bytes() == out.read_bytes()
    build_sample(source, out, train_rows=500, test_rows=200)
    assert again.read_bytes() == out.read_bytes()
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_pixel_columns_are_row_major_names():
    assert PIXEL_COLUMNS[:3] == ("pixel0", "pixel1", "pixel2") and len(PIXEL_COLUMNS) == 784
