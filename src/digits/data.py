"""CSV -> validated tensors.

In:  Kaggle's `train.csv` (`label,pixel0..pixel783`), `test.csv` (`pixel0..pixel783`) and
     `sample_submission.csv` (`ImageId,Label`).
Out: `uint8` images of shape (N, 28, 28, 1) and `int64` labels.

Validation is strict and every error names the file, the line (1 = the header) and the column, and
says what to do. Loading goes through pandas' C parser (the full train.csv in about a second); only
when that fast path sees something off does a line-by-line scan run to find the exact place.
Windows line endings and a UTF-8 byte-order mark are accepted.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

IMAGE_SIDE = 28
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE
NUM_CLASSES = 10
PIXEL_COLUMNS = tuple(f"pixel{i}" for i in range(NUM_PIXELS))
TRAIN_COLUMNS = ("label", *PIXEL_COLUMNS)
TEST_COLUMNS = PIXEL_COLUMNS
SUBMISSION_COLUMNS = ("ImageId", "Label")
KAGGLE_ROWS = {"train.csv": 42_000, "test.csv": 28_000, "sample_submission.csv": 28_000}

BOM = b"\xef\xbb\xbf"
FIX_HINT = "Fetch a fresh copy with `make download FORCE=1` (or fix the file by hand)."


class DataError(ValueError):
    """A data file is missing or malformed. The message says what, where and what to do."""


@dataclass(frozen=True)
class TrainData:
    images: np.ndarray  # (N, 28, 28, 1) uint8, raw 0..255
    labels: np.ndarray  # (N,) int64, 0..9


def load_train(path: str | Path) -> TrainData:
    """Read and validate train.csv."""
    table = _read_table(Path(path), TRAIN_COLUMNS)
    labels = table[:, 0].astype(np.int64)
    pixels = table[:, 1:]
    _check_range(Path(path), table, TRAIN_COLUMNS, column=0, low=0, high=NUM_CLASSES - 1, what="label")
    _check_range(Path(path), table, TRAIN_COLUMNS, column=slice(1, None), low=0, high=255, what="pixel")
    return TrainData(images=_to_images(pixels), labels=labels)


def load_test(path: str | Path) -> np.ndarray:
    """Read and validate test.csv; returns (N, 28, 28, 1) uint8 images."""
    table = _read_table(Path(path), TEST_COLUMNS)
    _check_range(Path(path), table, TEST_COLUMNS, column=slice(None), low=0, high=255, what="pixel")
    return _to_images(table)


def load_sample_submission(path: str | Path) -> np.ndarray:
    """Read and validate sample_submission.csv; returns its ImageId column."""
    table = _read_table(Path(path), SUBMISSION_COLUMNS)
    ids = table[:, 0]
    expected = np.arange(1, len(ids) + 1)
    if not np.array_equal(ids, expected):
        row = int(np.flatnonzero(ids != expected)[0])
        raise DataError(
            f"{path}: line {row + 2}, column 'ImageId': expected {row + 1}, found {ids[row]}; "
            f"ImageId must count 1..N in order. {FIX_HINT}"
        )
    return ids


def _to_images(pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pixels.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE, 1))


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise DataError(f"{path}: file not found. Run `make download` first (or pass the right path).")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a CSV file.")
    data = path.read_bytes()
    if data.startswith(BOM):
        data = data[len(BOM) :]
    if not data.strip():
        raise DataError(f"{path}: the file is empty. {FIX_HINT}")
    return data


def _check_header(path: Path, header_line: bytes, expected: tuple[str, ...]) -> None:
    try:
        header = header_line.decode("utf-8").strip().split(",")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: line 1: the header is not UTF-8 text ({error}). {FIX_HINT}") from None
    header = [name.strip().strip('"') for name in header]
    if tuple(header) == expected:
        return
    where = f"{path}: line 1 (header)"
    if header and header[0] == "label" and expected[0] != "label":
        raise DataError(
            f"{where}: column 1 is 'label', but this file must not have labels "
            f"(a test file starts with 'pixel0'). Did you swap train.csv and test.csv? {FIX_HINT}"
        )
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(f"{where}: column '{name}' appears twice. {FIX_HINT}")
        seen.add(name)
    missing = [name for name in expected if name not in seen]
    extra = [name for name in header if name not in set(expected)]
    if missing:
        raise DataError(f"{where}: missing column(s) {_names(missing)}; expected {_describe(expected)}. {FIX_HINT}")
    if extra:
        raise DataError(f"{where}: unexpected column(s) {_names(extra)}; expected {_describe(expected)}. {FIX_HINT}")
    position = next(i for i, (got, want) in enumerate(zip(header, expected, strict=True)) if got != want)
    raise DataError(
        f"{where}: columns out of order: column {position + 1} is '{header[position]}', "
        f"expected '{expected[position]}'. {FIX_HINT}"
    )


def _read_table(path: Path, expected: tuple[str, ...]) -> np.ndarray:
    """Parse a CSV of non-negative integers with the expected header into an (N, columns) int64 array."""
    data = _read_bytes(path)
    if b"\r" in data[:100_000]:  # Windows line endings: one pass here keeps the line scan below simple
        data = data.replace(b"\r\n", b"\n")
    header_end = data.find(b"\n")
    header_line = data if header_end < 0 else data[:header_end]
    _check_header(path, header_line, expected)
    body = b"" if header_end < 0 else data[header_end + 1 :]
    if not body.strip():
        raise DataError(f"{path}: the file has a header but no data rows. {FIX_HINT}")
    try:
        frame = pd.read_csv(io.BytesIO(data), header=0, skip_blank_lines=False, engine="c", low_memory=False)
        table = frame.to_numpy()
        clean = (
            frame.shape[1] == len(expected)
            and all(dtype == np.int64 for dtype in frame.dtypes)
            and b"\n\n" not in body.rstrip(b"\n")
            # pandas silently turns surplus leading values of the first data row into an index
            and body.count(b",", 0, body.find(b"\n") if b"\n" in body else len(body)) == len(expected) - 1
        )
    except (ValueError, pd.errors.ParserError):
        clean = False
    if not clean:
        _scan_for_error(path, body, expected)
        raise DataError(f"{path}: could not be parsed as a CSV of integers. {FIX_HINT}")  # scan found nothing
    return table


def _scan_for_error(path: Path, body: bytes, expected: tuple[str, ...]) -> None:
    """Walk the data rows to raise a DataError at the first bad cell; slow, used only on the error path."""
    lines = body.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the file's final newline
    for index, raw in enumerate(lines):
        line_number = index + 2
        where = f"{path}: line {line_number}"
        if not raw.strip():
            raise DataError(f"{where}: empty line. Delete it. {FIX_HINT}")
        cells = raw.decode("utf-8", errors="replace").split(",")
        if len(cells) != len(expected):  # before the cells: a line truncated after a comma ends in an empty cell
            problem = "too few values (is the line truncated?)" if len(cells) < len(expected) else "too many values"
            raise DataError(
                f"{where}: {problem}: found {len(cells)}, expected {len(expected)} ({_describe(expected)}). {FIX_HINT}"
            )
        for column, cell in enumerate(cells):
            text = cell.strip()
            name = expected[column]
            if text == "":
                raise DataError(f"{where}, column '{name}': missing value. {FIX_HINT}")
            if text == name:
                raise DataError(
                    f"{where}, column '{name}': found the header again (a duplicated header line). {FIX_HINT}"
                )
            if not (text.isascii() and text.lstrip("-").isdigit()):
                kind = "a decimal number" if _is_float(text) else "not a number"
                raise DataError(f"{where}, column '{name}': {text[:20]!r} is {kind}; expected an integer. {FIX_HINT}")
            if not -(2**63) <= int(text) < 2**63:  # pandas reads these as uint64/text, so no range check sees them
                raise DataError(f"{where}, column '{name}': {text[:20]!r} is far out of range. {FIX_HINT}")


def _check_range(
    path: Path, table: np.ndarray, columns: tuple[str, ...], column, low: int, high: int, what: str
) -> None:
    values = table[:, column]
    bad = (values < low) | (values > high)
    if not bad.any():
        return
    position = np.argwhere(bad)[0]
    row = int(position[0])
    offset = (column.start or 0) if isinstance(column, slice) else column
    col = offset + (int(position[1]) if bad.ndim == 2 else 0)
    raise DataError(
        f"{path}: line {row + 2}, column '{columns[col]}': {what} value {table[row, col]} is outside "
        f"{low}..{high} ({int(bad.sum())} such value(s) in the file). {FIX_HINT}"
    )


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(f"'{name}'" for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _describe(columns: tuple[str, ...]) -> str:
    if len(columns) <= 3:
        return ",".join(columns)
    return f"{len(columns)} columns {columns[0]},{columns[1]},...,{columns[-1]}"


@dataclass(frozen=True)
class FolderCheck:
    rows: dict[str, int]  # data rows per CSV
    warnings: list[str]


def verify_folder(folder: str | Path) -> FolderCheck:
    """Fully validate train.csv, test.csv and sample_submission.csv in `folder` (raises DataError).

    Row counts that differ from the competition's (42,000 / 28,000) are a warning, not an error:
    the bundled sample and other subsets are legitimate.
    """
    folder = Path(folder)
    train = load_train(folder / "train.csv")
    test = load_test(folder / "test.csv")
    submission_ids = load_sample_submission(folder / "sample_submission.csv")
    if len(submission_ids) != len(test):
        raise DataError(
            f"{folder / 'sample_submission.csv'}: has {len(submission_ids)} rows but test.csv has {len(test)}; "
            f"they must agree (one prediction per test image). {FIX_HINT}"
        )
    rows = {"train.csv": len(train.labels), "test.csv": len(test), "sample_submission.csv": len(submission_ids)}
    missing_classes = sorted(set(range(NUM_CLASSES)) - set(np.unique(train.labels).tolist()))
    warnings = [
        f"{name} has {count:,} rows; the competition's has {KAGGLE_ROWS[name]:,} (fine for a sample or subset)"
        for name, count in rows.items()
        if count != KAGGLE_ROWS[name]
    ]
    if missing_classes:
        warnings.append(f"train.csv has no rows of class(es) {missing_classes}")
    return FolderCheck(rows=rows, warnings=warnings)
