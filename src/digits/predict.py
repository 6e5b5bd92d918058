"""Predict the digit in the user's own picture with a trained run.

In:  pictures (PNG, JPEG, BMP, GIF, anything Pillow reads; files, folders, or arrays in a notebook) and
     a finished (or partly finished) run folder `runs/<run>/fold_<k>/model.keras`.
Out: per picture, the ensemble's probabilities (the mean of the run's fold models) and its top 3;
     the CLI prints them as a table and writes `<name>.prepared.png` beside each input: the 28x28
     image exactly as the models saw it, upscaled 8x (nearest) so it is visible.

The models were trained on MNIST, so a picture is prepared the MNIST way (`prepare_image`, pure):
grey, white ink on black, background removed, cropped to the digit, scaled to fit a 20x20 box
keeping the aspect ratio (anti-aliased), then placed in a 28x28 field with its centre of mass at
(14, 14) as LeCun et al. did.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digits import data, fileio, paths
from digits.cli import UserError

# Quiet TensorFlow's C++ start-up chatter unless the user asks for it (as train.py does).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
PREPARED_SUFFIX = ".prepared.png"
PREPARED_SCALE = 8  # the prepared picture is 28x28 upscaled this many times (nearest neighbour)
FIELD = data.IMAGE_SIDE  # 28
BOX = 20  # the digit is scaled to fit a BOX x BOX square, as in MNIST
CENTRE = 14.0  # MNIST's centre of mass, in pixel indices (measured on the sample: 13.995, 13.995)
MARGIN = 2  # output pixels kept around the box for the strokes' soft edges (the digit then spans <= 24)
THIN_STROKE, TARGET_STROKE = 1.4, 2.4  # strokes thinner than this (28x28 pixels) are thickened to the target
MAX_SIDE = 2000  # larger pictures (phone photos) are reduced first: a digit needs far fewer pixels
HOW_TO_DRAW = "draw the digit darker or thicker, alone on a plain background, and try again"


class PredictError(UserError):
    """A picture cannot be used (missing, unreadable, not a picture, blank); the message says what to do."""


# --- reading a picture --------------------------------------------------------------------------------


def load_grey(path: str | Path) -> np.ndarray:
    """Read a picture file as grey levels, float32 (H, W) in 0..1 (0 black, 1 white).

    Transparency is composited on white, palettes (GIF) and 16-bit images are handled, a phone
    photo's EXIF orientation is applied, and only the first frame of an animation is read.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise PredictError(f"{path}: no such file or folder; check the path.")
    if path.is_dir():
        raise PredictError(f"{path}: is a folder; give it to `make predict IMAGE=...`, or name a picture in it.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                with contextlib.suppress(Exception):  # a damaged EXIF block only loses the rotation
                    image = ImageOps.exif_transpose(image)
                return _grey_from_pil(image)
    except UnidentifiedImageError:
        raise PredictError(
            f"{path}: not a picture Pillow can read; save the drawing as PNG or JPEG (or BMP, GIF) and try again."
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PredictError(f"{path}: the picture is too large to open safely; reduce it and try again.") from None
    except PermissionError as error:
        raise PredictError(f"{path}: cannot be read ({error.strerror}); check that you may read it.") from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data inside a known format
        raise PredictError(
            f"{path}: the picture is damaged or truncated ({error}); save it again as PNG or JPEG."
        ) from None


def _grey_from_pil(image) -> np.ndarray:
    from PIL import Image

    if max(image.size) > MAX_SIDE:
        image = image.copy()
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BOX)
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if mode == "F":
            top = max(float(values.max(initial=0)), 1.0)
        return np.clip(values / top, 0, 1).astype(np.float32)
    if mode == "1":
        return np.asarray(image.convert("L"), dtype=np.float32) / 255
    if mode == "P":
        image = image.convert("RGBA")  # a palette may carry transparency (GIF, PNG)
        mode = "RGBA"
    if mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        return _grey_from_array(np.asarray(image))
    if mode != "L":  # RGB, CMYK, YCbCr...: the same luminance as an RGB array would get
        return _grey_from_array(np.asarray(image.convert("RGB")))
    return np.asarray(image, dtype=np.float32) / 255


def _to_unit(values: np.ndarray) -> np.ndarray:
    """Any numeric array to float 0..1: uint8 /255, uint16 /65535, floats as 0..1 (or 0..255 if above 1)."""
    if values.dtype == np.bool_:
        return values.astype(np.float32)
    if values.dtype == np.uint8:
        return values.astype(np.float32) / 255
    if values.dtype == np.uint16:
        return values.astype(np.float32) / 65535
    values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise PredictError("the image array holds NaN or infinite values; pass pixel values 0..255 (or 0..1).")
    top = values.max(initial=0)
    scale = 1.0 if top <= 1 else 255.0 if top <= 255 else 65535.0
    return np.clip(values / scale, 0, 1).astype(np.float32)


def _grey_from_array(array: np.ndarray, name: str = "the image array") -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA, any numeric dtype -> grey float32 (H, W) 0..1."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return _to_unit(array)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise PredictError(
            f"{name}: shape {array.shape} is not a picture; pass (height, width), (height, width, 1), "
            f"(height, width, 3) RGB or (height, width, 4) RGBA."
        )
    unit = _to_unit(array)
    grey = unit[..., 0] * 0.299 + unit[..., 1] * 0.587 + unit[..., 2] * 0.114  # ITU-R 601, as Pillow's "L"
    if array.shape[2] == 4:
        alpha = unit[..., 3]
        composited = grey * alpha + (1 - alpha) * 1.0  # on white paper
        if np.ptp(composited) < 0.05 < np.ptp(alpha):  # e.g. white ink on a transparent canvas: the shape is alpha
            return (1 - alpha).astype(np.float32)
        grey = composited
    return grey.astype(np.float32)


# --- preparing it the MNIST way -----------------------------------------------------------------------


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of values in 0..1 (256 bins)."""
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    mean_low = np.cumsum(hist * centres) / np.maximum(weight_low, 1e-12)
    mean_high = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(weight_high, 1e-12)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def _border(values: np.ndarray) -> np.ndarray:
    height, width = values.shape
    strip = max(1, round(0.03 * min(height, width)))
    return np.concatenate(
        [
            values[:strip].ravel(),
            values[-strip:].ravel(),
            values[strip:-strip, :strip].ravel(),
            values[strip:-strip, -strip:].ravel(),
        ]
    )


def _ink(grey: np.ndarray, name: str) -> np.ndarray:
    """Grey picture -> ink intensity 0..1 (0 background, 1 a stroke's core); only the digit's strokes kept.

    Dark-on-light pictures are inverted (the background is whatever the border shows); the background
    level and its noise are measured on the border (median, MAD; a 3x3 median filter first when it is
    noisy). A stroke must pass a strong threshold (Otsu's, at least 5 noise sigmas and 0.1 above the
    background); speckles (small components) are dropped; weaker pixels connected to the strokes (the
    anti-aliased edges) are kept above the noise floor (hysteresis), everything else is zeroed.
    """
    from scipy import ndimage

    height, width = grey.shape
    raw_border = _border(grey)
    raw_sigma = 1.4826 * float(np.median(np.abs(raw_border - np.median(raw_border))))
    # Denoise only a noisy picture: a median filter would erase a clean 1-pixel pen line.
    smooth = ndimage.median_filter(grey, size=3, mode="nearest") if raw_sigma > 0.01 else grey
    border = _border(smooth)
    if np.median(border) > (smooth.min() + smooth.max()) / 2:  # the background is the light side: dark ink
        smooth, border = 1 - smooth, 1 - border
    background = float(np.median(border))
    sigma = 1.4826 * float(np.median(np.abs(border - background)))
    floor = background + max(3 * sigma, 0.04)
    strong = max(_otsu(smooth), background + 5 * sigma, background + 0.1)
    labels, count = ndimage.label(smooth > strong, structure=np.ones((3, 3)))
    kept = np.zeros(0, dtype=int)
    if count:
        areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        min_area = max(4.0, 1e-4 * height * width, 0.05 * areas.max())
        kept = np.flatnonzero(areas >= min_area) + 1
    if not len(kept):
        raise PredictError(f"{name}: no digit found, the picture is blank or its ink too faint; {HOW_TO_DRAW}.")
    strokes = np.isin(labels, kept)
    weak_labels, _ = ndimage.label(smooth > floor, structure=np.ones((3, 3)))
    touching = np.unique(weak_labels[strokes])
    keep = np.isin(weak_labels, touching[touching > 0])
    ink_level = float(np.percentile(smooth[strokes], 90))
    ink = np.clip((smooth - background) / max(ink_level - background, 1e-6), 0, 1)
    return np.where(keep, ink, 0).astype(np.float32)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of a mask's true pixels, bottom/right exclusive."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(columns[0]), int(rows[-1]) + 1, int(columns[-1]) + 1


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a binary drawing, in pixels: twice its area over its boundary length."""
    from scipy import ndimage

    boundary = int((mask & ~ndimage.binary_erosion(mask)).sum())
    return 2.0 * int(mask.sum()) / max(boundary, 1)


def prepare_image(image, name: str | None = None) -> np.ndarray:
    """A picture (path, PIL image or array) -> (28, 28, 1) uint8, white digit on black, as in MNIST.

    Grey; inverted if dark on light; background and noise removed; cropped to the digit (its strokes'
    half-intensity extent, which is what fills MNIST's box); strokes thinner than MNIST's thickened;
    scaled to fit 20x20 keeping the aspect ratio (Lanczos, anti-aliased); shifted so that its centre of
    mass is at (14, 14) of a 28x28 field. Raises PredictError for a missing, unreadable, non-picture or
    blank input.
    """
    from PIL import Image
    from scipy import ndimage

    if isinstance(image, str | Path):
        name = name or str(image)
        grey = load_grey(image)
    elif isinstance(image, Image.Image):
        grey = _grey_from_pil(image)
    else:
        grey = _grey_from_array(image, name or "the image array")
    name = name or "the image"
    if grey.ndim != 2 or grey.size == 0:
        raise PredictError(f"{name}: the picture is empty (0 pixels); {HOW_TO_DRAW}.")
    ink = _ink(grey, name)
    top, left, bottom, right = _box(ink >= 0.5)
    scale = BOX / max(bottom - top, right - left)
    width = _stroke_width(ink >= 0.5) * scale  # in pixels of the 28x28 result
    if width < THIN_STROKE:  # a fine pen: MNIST strokes are ~2.6 pixels wide (5th percentile 1.75)
        # Grow the strokes by `radius` source pixels with a one-pixel soft edge: a distance transform,
        # fast whatever the radius (unlike a dilation by a disk), on the digit's box only.
        radius = (TARGET_STROKE - width) / 2 / scale
        grow = int(np.ceil(radius)) + 2
        ink = np.pad(ink, grow)[top : bottom + 2 * grow, left : right + 2 * grow]
        distance = ndimage.distance_transform_edt(ink < 0.5)
        ink = np.maximum(ink, np.clip(radius + 0.5 - distance, 0, 1)).astype(np.float32)
        top, left, bottom, right = _box(ink >= 0.5)
        scale = BOX / max(bottom - top, right - left)
    # Resample the box plus a margin of MARGIN output pixels (soft edges) around it, centred on the box.
    out_height = max(1, round((bottom - top) * scale)) + 2 * MARGIN
    out_width = max(1, round((right - left) * scale)) + 2 * MARGIN
    centre_row, centre_column = (top + bottom) / 2, (left + right) / 2
    pad = int(np.ceil(max(out_height, out_width) / scale / 2)) + 2
    padded = np.pad(ink, pad)
    source = (
        centre_column + pad - out_width / scale / 2,
        centre_row + pad - out_height / scale / 2,
        centre_column + pad + out_width / scale / 2,
        centre_row + pad + out_height / scale / 2,
    )
    small = Image.fromarray(padded).resize((out_width, out_height), Image.Resampling.LANCZOS, box=source)
    small = np.clip(np.asarray(small, dtype=np.float64), 0, 1)  # Lanczos rings a little at sharp edges
    if small.max() <= 0:
        raise PredictError(f"{name}: no digit found, the picture is blank or its ink too faint; {HOW_TO_DRAW}.")
    return _centre(small)


def _centre(small: np.ndarray) -> np.ndarray:
    """Place the digit in the 28x28 field with its centre of mass at (14, 14) (integer shift, as MNIST did)."""
    top, left, bottom, right = _box(small >= 0.5 / 255)  # what will show: the margin's zeros can go
    small = small[top:bottom, left:right]
    height, width = small.shape
    total = small.sum()
    com_row = float((small.sum(axis=1) * np.arange(height)).sum() / total)
    com_column = float((small.sum(axis=0) * np.arange(width)).sum() / total)
    top, left = round(CENTRE - com_row), round(CENTRE - com_column)
    # As in MNIST, whatever would fall outside the field is cut (at most the faint edge of a lopsided digit).
    field = np.zeros((FIELD + 2 * height, FIELD + 2 * width), np.float64)
    field[height + top : 2 * height + top, width + left : 2 * width + left] = small
    field = field[height : height + FIELD, width : width + FIELD]
    return np.round(field * 255).astype(np.uint8)[..., None]


# --- the run's ensemble -------------------------------------------------------------------------------


_MODEL_CACHE: dict[tuple, list] = {}


def model_paths(run_dir: Path) -> list[Path]:
    """The finished folds' models of a run (a fold is finished when its report.json exists)."""
    found = sorted(
        (p for p in run_dir.glob("fold_*/model.keras") if (p.parent / "report.json").is_file()),
        key=lambda p: int(p.parent.name.split("_")[1]),
    )
    if not found:
        raise PredictError(
            f"{run_dir}: no finished fold with a model.keras yet; finish it with `make train RUN={run_dir.name}` "
            f"or pick another run with RUN=<name>."
        )
    return found


def load_models(run_dir: Path) -> list:
    """The run's fold models (safe mode), cached per process while the files do not change."""
    import keras

    found = model_paths(Path(run_dir))
    key = tuple((str(p.resolve()), p.stat().st_mtime_ns) for p in found)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = [keras.saving.load_model(p, safe_mode=True) for p in found]
    return _MODEL_CACHE[key]


def ensemble_probs(models: Sequence, prepared: np.ndarray) -> np.ndarray:
    """Mean of the models' probabilities on prepared (N, 28, 28, 1) uint8 images -> (N, 10) float32."""
    from digits.train import predict

    if not len(prepared):
        return np.zeros((0, data.NUM_CLASSES), np.float32)
    return np.mean([predict(model, prepared) for model in models], axis=0).astype(np.float32)


def predict_images(images, run: str | Path | None = None, runs_dir: str | Path = paths.RUNS_DIR) -> np.ndarray:
    """Probabilities (N, 10) for pictures (paths, PIL images or arrays; one or a list) with a run's ensemble.

    A batch of arrays is a list or a 4-D array (N, height, width, channels). `run` is a run name in
    `runs_dir` or a run folder; None means the latest run. In a notebook:
        probs = predict_images(["seven.png", "three.jpg"]); top_k(probs)
    """
    from PIL import Image

    from digits.train import resolve_run_dir

    if isinstance(images, str | Path | Image.Image) or (isinstance(images, np.ndarray) and images.ndim <= 3):
        images = [images]
    prepared = np.stack([prepare_image(item, name=_name(item, i)) for i, item in enumerate(images)])
    run_dir = resolve_run_dir(str(run) if run is not None else None, Path(runs_dir))
    return ensemble_probs(load_models(run_dir), prepared)


def top_k(probs: np.ndarray, k: int = 3) -> list[list[tuple[int, float]]]:
    """Per row of (N, 10) probabilities, the k most likely digits with their probabilities, best first."""
    probs = np.atleast_2d(probs)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(int(d), float(row[d])) for d in best] for row, best in zip(probs, order, strict=True)]


def _name(item, index: int) -> str:
    return str(item) if isinstance(item, str | Path) else f"image {index}"


# --- files and folders --------------------------------------------------------------------------------


def expand_inputs(items: Sequence[str | Path]) -> list[Path]:
    """Files, folders (their PNG/JPEG/BMP/GIF pictures, not *.prepared.png), globs, or comma/space lists."""
    found: list[Path] = []
    for item in items:
        text = str(item).strip()
        tokens = [text] if Path(text).exists() else [t for t in re.split(r"[,\s]+", text) if t]
        for token in tokens:
            path = Path(token).expanduser()
            if path.is_dir():
                pictures = sorted(
                    p
                    for p in path.iterdir()
                    if p.is_file() and p.suffix.lower() in PICTURE_SUFFIXES and not p.name.endswith(PREPARED_SUFFIX)
                )
                if not pictures:
                    raise PredictError(
                        f"{path}: no PNG, JPEG, BMP or GIF picture in this folder; put your drawings there "
                        f"or name the files."
                    )
                found.extend(pictures)
            elif path.exists():
                found.append(path)
            elif glob.has_magic(token) and (matches := sorted(glob.glob(str(path)))):
                found.extend(Path(m) for m in matches if not m.endswith(PREPARED_SUFFIX))
            else:
                raise PredictError(
                    f"{token}: no such file or folder; IMAGE takes pictures, folders, or several separated by "
                    f"commas or spaces."
                )
    if not found:
        raise PredictError("no picture given; e.g. `make predict IMAGE=my_digit.png`.")
    return list(dict.fromkeys(found))  # each picture once, in order


def prepared_path(path: Path, taken: set[Path] | None = None) -> Path:
    """`<folder>/<stem>.prepared.png`, or `<name>.prepared.png` when two inputs share a stem."""
    candidate = path.with_name(path.stem + PREPARED_SUFFIX)
    if taken is not None and candidate in taken:
        candidate = path.with_name(path.name + PREPARED_SUFFIX)
    return candidate


def save_prepared(prepared: np.ndarray, path: Path, scale: int = PREPARED_SCALE) -> None:
    """The prepared 28x28 image, upscaled `scale` times (nearest) so it is visible, written atomically."""
    from PIL import Image

    picture = Image.fromarray(prepared[..., 0]).resize((FIELD * scale, FIELD * scale), Image.Resampling.NEAREST)
    with fileio.atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")


@dataclass
class Prediction:
    source: Path
    probs: np.ndarray  # (10,)
    prepared: np.ndarray  # (28, 28, 1) uint8
    prepared_path: Path | None


def predict_files(items: Sequence[str | Path], run_dir: Path, write_prepared: bool = True) -> list[Prediction]:
    """Prepare every picture (all of them first, so a bad one stops before any model loads), predict, save."""
    files = expand_inputs(items)
    prepared = np.stack([prepare_image(path) for path in files])
    probs = ensemble_probs(load_models(run_dir), prepared)
    results, taken = [], set()
    for path, image, row in zip(files, prepared, probs, strict=True):
        out = None
        if write_prepared:
            out = prepared_path(path, taken)
            taken.add(out)
            save_prepared(image, out)
        results.append(Prediction(path, row, image, out))
    return results


def format_table(results: Sequence[Prediction], k: int = 3) -> str:
    names = [str(r.source) for r in results]
    width = max(len("image"), *(len(n) for n in names))
    ranks = ["1st", "2nd", "3rd", *[f"{i}th" for i in range(4, k + 1)]][:k]
    header = f"{'image':<{width}}  " + "  ".join(f"{rank:<9}" for rank in ranks) + "  prepared"
    lines = [header]
    for name, result in zip(names, results, strict=True):
        cells = "  ".join(f"{digit} {100 * p:5.1f}%" for digit, p in top_k(result.probs, k)[0])
        shown = result.prepared_path.name if result.prepared_path else "-"
        lines.append(f"{name:<{width}}  {cells}  {shown}")
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------------


def _cmd_predict(args: argparse.Namespace) -> int:
    from digits.train import resolve_run_dir

    run_dir = resolve_run_dir(args.run, Path(args.runs_dir))
    results = predict_files(args.images, run_dir, write_prepared=not args.no_prepared)
    folds = len(model_paths(run_dir))
    print(f"run {run_dir.name}: the mean of its {folds} fold model(s)")
    print(format_table(results))
    if not args.no_prepared:
        print(f"each <name>{PREPARED_SUFFIX} beside its picture shows the 28x28 image the models saw (8x).")
    return 0


def register_commands(commands) -> None:
    parser = commands.add_parser("predict", help="predict the digit in your own pictures with a trained run")
    parser.add_argument(
        "images", nargs="+", help="pictures or folders (PNG/JPEG/BMP/GIF); several may be separated by commas"
    )
    parser.add_argument("--run", default=None, help="run name (default: the latest run)")
    parser.add_argument("--runs-dir", default=str(paths.RUNS_DIR))
    parser.add_argument("--no-prepared", action="store_true", help=f"do not write the *{PREPARED_SUFFIX} pictures")
    parser.set_defaults(handler=_cmd_predict)
