"""Build the small real sample shipped in `data/sample/` from a copy of the competition's zip.

In:  the competition's `digit-recognizer.zip` (Kaggle's exact format).
Out: `data/sample/digit-recognizer.zip` with the same three files and headers, holding a seeded,
     label-stratified subset of train.csv and a seeded random subset of test.csv; rows are copied
     byte for byte and keep their original order. Anyone can rebuild it from their own copy:

    make sample SOURCE=path/to/digit-recognizer.zip
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from digits import fileio, paths


def _lines(archive: zipfile.ZipFile, name: str) -> tuple[bytes, list[bytes]]:
    data = archive.read(name)
    lines = data.rstrip(b"\n").split(b"\n")
    return lines[0], lines[1:]


def build_sample(source_zip: Path, out_zip: Path, train_rows: int = 3000, test_rows: int = 1000, seed: int = 0) -> dict:
    with zipfile.ZipFile(source_zip) as archive:
        train_header, train_lines = _lines(archive, "train.csv")
        test_header, test_lines = _lines(archive, "test.csv")
        submission_header, _ = _lines(archive, "sample_submission.csv")
    labels = np.array([int(line.split(b",", 1)[0]) for line in train_lines])
    train_index, _ = train_test_split(np.arange(len(labels)), train_size=train_rows, stratify=labels, random_state=seed)
    rng = np.random.default_rng(seed)
    test_index = rng.choice(len(test_lines), size=test_rows, replace=False)
    train_index, test_index = np.sort(train_index), np.sort(test_index)

    def csv(header: bytes, rows: list[bytes]) -> bytes:
        return b"\n".join([header, *rows]) + b"\n"

    files = {
        "train.csv": csv(train_header, [train_lines[i] for i in train_index]),
        "test.csv": csv(test_header, [test_lines[i] for i in test_index]),
        # Kaggle's sample submission predicts 0 for every image; keep that convention.
        "sample_submission.csv": csv(submission_header, [b"%d,0" % (i + 1) for i in range(test_rows)]),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, data in files.items():
            # A fixed timestamp makes the zip byte-identical when rebuilt from the same source.
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data, compresslevel=9)
    fileio.write_bytes(out_zip, buffer.getvalue())
    counts = np.bincount(labels[train_index], minlength=10).tolist()
    return {
        "train_rows": len(train_index),
        "test_rows": len(test_index),
        "class_counts": counts,
        "bytes": out_zip.stat().st_size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="the competition's digit-recognizer.zip")
    parser.add_argument("--out", type=Path, default=paths.SAMPLE_ZIP)
    parser.add_argument("--train-rows", type=int, default=3000)
    parser.add_argument("--test-rows", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    summary = build_sample(args.source, args.out, args.train_rows, args.test_rows, args.seed)
    print(
        f"wrote {args.out} ({summary['bytes'] / 1e6:.2f} MB): {summary['train_rows']} train rows "
        f"(per class {summary['class_counts']}), {summary['test_rows']} test rows"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
