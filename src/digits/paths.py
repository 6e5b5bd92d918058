"""Every path the pipeline uses, anchored at the repository root (never the working directory).

`DIGITS_ROOT` overrides the root, so that tests and users can point a whole pipeline at another folder.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("DIGITS_ROOT") or PACKAGE_DIR.parent.parent).resolve()

DATA_DIR = ROOT / "data"
RAW_DIR = DATA_DIR / "raw"  # what `make download` writes; never edited afterwards
SAMPLE_DIR = DATA_DIR / "sample"  # the small real sample shipped in the repo
SAMPLE_ZIP = SAMPLE_DIR / "digit-recognizer.zip"
RUNS_DIR = ROOT / "runs"
SUBMISSIONS_DIR = ROOT / "submissions"

COMPETITION = "digit-recognizer"
ZIP_NAME = f"{COMPETITION}.zip"
CSV_NAMES = ("train.csv", "test.csv", "sample_submission.csv")

# Each fold folder's predictions of the run's holdout rows: the fold's model (its best epoch), the same with TTA,
# and its last epoch's weights. Older runs lack the last two.
HOLDOUT_PROBS = "holdout_probs.npy"
HOLDOUT_TTA_PROBS = "holdout_tta_probs.npy"
HOLDOUT_LAST_EPOCH_PROBS = "holdout_last_epoch_probs.npy"
