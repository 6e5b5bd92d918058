"""Predicting the user's own pictures: MNIST-style preparation, clear errors, the ensemble, the CLI.

Digits from the bundled sample are re-drawn the way people draw them (black ink on white paper, 6-9x
larger, off-centre, noisy, in colour, as JPEG, GIF, 16-bit PNG, transparent PNG, chalk on a board) and
must come back prepared close to the original 28x28 and be classified like it. Run with `-s` to see
the measured figures.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from digits import cli, predict
from digits.predict import PredictError, prepare_image

REPO = Path(__file__).resolve().parents[1]
CANVAS = (200, 260)  # height, width of the re-drawn pictures
STYLES = ("ink.png", "noisy.png", "blue-on-yellow.jpg", "pencil.gif", "scan16.png", "transparent.png", "chalk.bmp")
MAIN_STYLES = ("ink.png", "noisy.png", "blue-on-yellow.jpg")  # the ones the trained ensemble is measured on


# --- re-drawing a digit as a user would ---------------------------------------------------------------


def redraw(digit: np.ndarray, style: str, rng: np.random.Generator) -> Image.Image:
    """A sample digit (28, 28, 1) as a user's picture: larger (smooth upscale), off-centre, in `style`."""
    side = int(rng.integers(130, 190))  # the 28x28 field; the digit itself is ~20/28 of it
    big = Image.fromarray(digit[..., 0].astype(np.float32) / 255).resize((side, side), Image.Resampling.BICUBIC)
    ink = np.zeros(CANVAS, np.float32)  # 1 where the pen is
    top, left = rng.integers(0, CANVAS[0] - side + 1), rng.integers(0, CANVAS[1] - side + 1)
    ink[top : top + side, left : left + side] = np.clip(np.asarray(big), 0, 1)

    def on(paper, pen, noise=0.0):  # paper and pen colours (grey or RGB), plus Gaussian noise
        paper, pen = np.asarray(paper, np.float32), np.asarray(pen, np.float32)
        amount = ink[..., None] if paper.ndim else ink
        mixed = paper * (1 - amount) + pen * amount
        return np.round(np.clip(mixed + rng.normal(0, noise, mixed.shape), 0, 255)).astype(np.uint8)

    if style == "ink.png":  # black ink on white paper
        return Image.fromarray(on(255, 0))
    if style == "noisy.png":  # a grainy photo of off-white paper
        return Image.fromarray(on(235, 20, noise=18))
    if style == "blue-on-yellow.jpg":  # blue ink on yellow paper, a little noise, JPEG
        return Image.fromarray(on([250, 232, 90], [30, 50, 190], noise=8))
    if style == "pencil.gif":  # grey pencil on grey paper, 256-colour palette
        return Image.fromarray(on(225, 90)).convert("P")
    if style == "scan16.png":  # a 16-bit greyscale scan
        return Image.fromarray(on(255, 0).astype(np.uint16) * 257)  # mode I;16
    if style == "transparent.png":  # black strokes on a transparent canvas (web drawing apps)
        rgba = np.zeros(CANVAS + (4,), np.uint8)
        rgba[..., 3] = np.round(ink * 255).astype(np.uint8)
        return Image.fromarray(rgba)  # mode RGBA
    if style == "chalk.bmp":  # light chalk on a dark green board: already light on dark
        return Image.fromarray(on([40, 70, 50], [235, 235, 225], noise=6))
    raise ValueError(style)


def save(picture: Image.Image, path: Path) -> Path:
    fmt = {".png": "PNG", ".jpg": "JPEG", ".gif": "GIF", ".bmp": "BMP"}[path.suffix]
    picture.save(path, format=fmt, **({"quality": 80} if fmt == "JPEG" else {}))
    return path


def redraw_file(digit: np.ndarray, style: str, rng: np.random.Generator, folder: Path, stem: str) -> Path:
    return save(redraw(digit, style, rng), folder / f"{stem}-{style}")


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


def aligned_correlation(prepared: np.ndarray, original: np.ndarray) -> float:
    """The best correlation over shifts of at most one pixel: the shape, whatever the rounding of the centring."""
    shifts = [(r, c) for r in (-1, 0, 1) for c in (-1, 0, 1)]
    return max(correlation(np.roll(prepared, shift, axis=(0, 1)), original) for shift in shifts)


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    values = image[..., 0].astype(float)
    return (
        float((values.sum(1) * np.arange(28)).sum() / values.sum()),
        float((values.sum(0) * np.arange(28)).sum() / values.sum()),
    )


# --- preparation (no model) ---------------------------------------------------------------------------


def test_an_mnist_digit_comes_back_as_it_is(sample_train):
    originals = sample_train.images[:200]
    scores = [correlation(prepare_image(image), image) for image in originals]
    print(f"\nMNIST digit -> prepare_image: correlation mean {np.mean(scores):.4f}, min {np.min(scores):.4f}")
    assert np.mean(scores) > 0.99


@pytest.mark.parametrize("style", STYLES)
def test_a_redrawn_digit_is_prepared_close_to_the_original(style, sample_train, tmp_path):
    rng = np.random.default_rng(STYLES.index(style))
    raw, aligned, centres = [], [], []
    for index in range(100):
        original = sample_train.images[index]
        prepared = prepare_image(redraw_file(original, style, rng, tmp_path, f"d{index}"))
        assert prepared.shape == (28, 28, 1) and prepared.dtype == np.uint8
        raw.append(correlation(prepared, original))
        aligned.append(aligned_correlation(prepared, original))
        centres.append(centre_of_mass(prepared))
    print(
        f"\n{style:<20} prepared vs original: correlation mean {np.mean(raw):.3f} (min {np.min(raw):.3f}); "
        f"within one pixel of shift {np.mean(aligned):.3f} (min {np.min(aligned):.3f})"
    )
    assert np.mean(raw) > 0.90 and np.mean(aligned) > 0.95
    assert np.min(aligned) > 0.7
    # Centred the MNIST way: the centre of mass at (14, 14), to the nearest pixel.
    assert np.abs(np.array(centres) - 14).max() <= 0.75


def test_paths_pil_images_and_arrays_give_the_same_result(sample_train, tmp_path):
    rng = np.random.default_rng(7)
    picture = redraw(sample_train.images[3], "blue-on-yellow.jpg", rng)
    path = save(picture, tmp_path / "digit.png")  # PNG: lossless, so the three are the same pixels
    from_path = prepare_image(path)
    assert np.array_equal(from_path, prepare_image(str(path)))
    assert np.array_equal(from_path, prepare_image(Image.open(path)))
    assert np.array_equal(from_path, prepare_image(np.asarray(Image.open(path))))
    assert np.array_equal(from_path, prepare_image(np.asarray(Image.open(path)).astype(np.float64) / 255))
    # Light on dark or dark on light: the same digit.
    grey = np.asarray(Image.open(path).convert("L"))
    assert correlation(prepare_image(grey), prepare_image(255 - grey)) > 0.97


def test_a_fine_pen_stroke_is_thickened_to_mnist_width(tmp_path):
    small = Image.new("L", (300, 300), 255)  # a "7", 2 pixels wide on 300: a fine pen in a drawing app
    ImageDraw.Draw(small).line([(80, 60), (220, 60), (130, 250)], fill=0, width=2)
    photo = Image.new("RGB", (4000, 3000), (235, 230, 220))  # a 12-megapixel photo of a felt-tip "7"
    ImageDraw.Draw(photo).line([(1500, 800), (2300, 800), (1800, 2300)], fill=(30, 30, 60), width=40)
    for picture, name in ((small, "seven.png"), (photo, "photo.jpg")):
        prepared = prepare_image(save(picture, tmp_path / name))[..., 0]
        width = predict._stroke_width(prepared >= 128)
        print(f"\n{name}: stroke width after preparation {width:.2f} px (MNIST: median 2.6, 5th percentile 1.75)")
        assert 1.6 <= width <= 3.5 and prepared.max() == 255
        assert np.abs(np.array(centre_of_mass(prepared[..., None])) - 14).max() <= 0.75


def test_a_blank_picture_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(0)
    blanks = {
        "white.png": np.full((120, 160), 255, np.uint8),
        "black.png": np.zeros((28, 28), np.uint8),
        "grainy.jpg": np.clip(rng.normal(230, 12, (300, 300, 3)), 0, 255).astype(np.uint8),
        "shadow.png": np.tile(np.linspace(120, 250, 240), (180, 1)).astype(np.uint8),  # uneven light, no ink
    }
    for name, pixels in blanks.items():
        path = save(Image.fromarray(pixels), tmp_path / name)
        with pytest.raises(PredictError) as caught:
            prepare_image(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: no digit found") and "draw the digit darker" in message


def test_unreadable_inputs_are_clear_errors(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is a shopping list, not a picture\n")
    with pytest.raises(PredictError, match=r"notes\.png: not a picture Pillow can read; save the drawing as PNG"):
        prepare_image(text)
    picture = save(Image.new("L", (64, 64), 255), tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes(picture.read_bytes()[:60])
    with pytest.raises(PredictError, match=r"cut\.png: the picture is damaged or truncated"):
        prepare_image(tmp_path / "cut.png")
    with pytest.raises(PredictError, match=r"missing\.png: no such file or folder"):
        prepare_image(tmp_path / "missing.png")
    with pytest.raises(PredictError, match=r"shape \(5, 5, 7\) is not a picture"):
        prepare_image(np.zeros((5, 5, 7)))
    assert issubclass(PredictError, cli.UserError) and PredictError in cli.user_errors()


def test_inputs_are_files_folders_globs_and_lists(tmp_path):
    folder = tmp_path / "drawings"
    folder.mkdir()
    for name in ("b.png", "a.JPG", "c.gif", "d.bmp", "a.prepared.png", "notes.txt"):
        (folder / name).write_bytes(b"")
    other = tmp_path / "other.png"
    other.write_bytes(b"")
    expected_folder = [folder / name for name in ("a.JPG", "b.png", "c.gif", "d.bmp")]
    assert predict.expand_inputs([folder]) == expected_folder  # pictures only, sorted, no *.prepared.png
    assert predict.expand_inputs([f"{other},{folder / 'b.png'}"]) == [other, folder / "b.png"]
    assert predict.expand_inputs([f"{other} {folder}"]) == [other, *expected_folder]
    assert predict.expand_inputs([str(folder / "*.png")]) == [folder / "b.png"]
    assert predict.expand_inputs([other, str(other)]) == [other]  # each picture once
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PredictError, match=r"empty: no PNG, JPEG, BMP or GIF picture in this folder"):
        predict.expand_inputs([empty])
    with pytest.raises(PredictError, match=r"nope\.png: no such file or folder; IMAGE takes pictures, folders"):
        predict.expand_inputs([f"{other},{tmp_path / 'nope.png'}"])
    # Two inputs sharing a stem do not overwrite each other's prepared picture.
    first = predict.prepared_path(folder / "a.png", set())
    assert first == folder / "a.prepared.png"
    assert predict.prepared_path(folder / "a.JPG", {first}) == folder / "a.JPG.prepared.png"


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "digits", "predict", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def test_cli_refuses_a_blank_or_fake_picture_with_exit_2(tmp_path):
    runs = tmp_path / "runs"
    (runs / "r").mkdir(parents=True)
    (runs / "r" / "config.json").write_text("{}")  # pictures are checked before any model is loaded
    blank = save(Image.new("RGB", (200, 200), (255, 255, 255)), tmp_path / "blank.png")
    fake = tmp_path / "fake.jpg"
    fake.write_text("not a picture")
    for path, expected in ((blank, "no digit found"), (fake, "not a picture Pillow can read")):
        result = run_cli("--run", "r", "--runs-dir", str(runs), str(path))
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"error: {path}: {expected}") and "Traceback" not in result.stderr
        assert not list(tmp_path.glob("*.prepared.png"))


def test_make_predict_passes_images_and_run_and_needs_image():
    dry = subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "-n", "predict", "IMAGE=a.png b.jpg", "RUN=r1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    assert "-m digits predict --run 'r1' 'a.png b.jpg'" in dry.stdout
    missing = subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "predict"], capture_output=True, text=True, check=False
    )
    assert missing.returncode != 0 and "make predict needs IMAGE=" in missing.stdout + missing.stderr


# --- with a trained ensemble --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(shared_runs, tmp_path_factory) -> Path:
    """Run `a` of conftest's SHARED_RUNS (the tiny model, 2 folds), alone in its folder: enough to check what
    the command line and the API do with the models' output."""
    return shared_runs(tmp_path_factory.mktemp("predict_runs"), "a") / "a"


@pytest.fixture(scope="module")
def trained_run(sample_dir, tmp_path_factory) -> Path:
    """The real CNN, 2 folds x 6 epochs on the sample, 10% held out of both folds (about a minute and a half
    alone, nearly three beside other tests: so the one test that needs it is opt-in, `make test-long`)."""
    runs_dir = tmp_path_factory.mktemp("predict_runs")
    command = [
        *(sys.executable, "-m", "digits", "train", "--data-dir", str(sample_dir), "--runs-dir", str(runs_dir)),
        *("--preset", "quick", "--model", "cnn", "--folds", "2", "--epochs", "6", "--holdout", "0.1", "--run", "r"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return runs_dir / "r"


@pytest.mark.slow
@pytest.mark.long
def test_redrawn_digits_are_classified_like_the_originals(trained_run, sample_train, tmp_path):
    """On the held-out digits (never trained on): accuracy of the originals vs the same digits re-drawn."""
    folds = pd.read_csv(trained_run / "folds.csv")
    rows = folds.loc[folds["fold"] == -1, "row_id"].to_numpy()
    originals, labels = sample_train.images[rows], sample_train.labels[rows]
    models = predict.load_models(trained_run)
    original_top = predict.ensemble_probs(models, originals).argmax(1)
    original_accuracy = float((original_top == labels).mean())
    print(f"\n{len(rows)} held-out digits: accuracy of the originals {original_accuracy:.3f}")
    for number, style in enumerate(MAIN_STYLES):
        rng = np.random.default_rng(100 + number)
        files = [
            redraw_file(image, style, rng, tmp_path, f"h{row}") for row, image in zip(rows, originals, strict=True)
        ]
        probs = predict.predict_images(files, run=trained_run)
        assert probs.shape == (len(rows), 10) and np.allclose(probs.sum(1), 1, atol=1e-4)
        top = probs.argmax(1)
        accuracy, agreement = float((top == labels).mean()), float((top == original_top).mean())
        print(
            f"  re-drawn {style:<20} accuracy {accuracy:.3f}  agreement with the originals' predictions {agreement:.3f}"
        )
        assert accuracy >= original_accuracy - 0.04
        assert agreement >= 0.90


@pytest.mark.slow
def test_cli_predicts_files_and_folders_and_writes_prepared_pictures(tiny_run, sample_train, tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / "drawings"
    folder.mkdir()
    in_folder = [redraw_file(sample_train.images[i], style, rng, folder, f"digit{i}") for i, style in enumerate(STYLES)]
    loose = redraw_file(sample_train.images[20], "ink.png", rng, tmp_path, "loose")
    result = run_cli("--run", "a", "--runs-dir", str(tiny_run.parent), f"{folder},{loose}")
    assert result.returncode == 0, result.stderr[-3000:]
    print("\n" + result.stdout)
    lines = result.stdout.splitlines()
    assert lines[0] == "run a: the mean of its 2 fold model(s)"
    assert lines[1].split() == ["image", "1st", "2nd", "3rd", "prepared"]
    inputs = sorted(in_folder) + [loose]
    probs = predict.predict_images(inputs, run=tiny_run)
    for path, row, line in zip(inputs, probs, lines[2 : 2 + len(inputs)], strict=True):
        best = predict.top_k(row)[0]
        shown = path.with_name(path.stem + ".prepared.png")
        expected_cells = [f"{digit} {100 * p:5.1f}%" for digit, p in best]
        assert line.startswith(str(path)) and line.endswith(shown.name)
        assert all(cell in line for cell in expected_cells), (line, expected_cells)
        # The prepared picture, beside its input, is what the models saw: 28x28 upscaled 8x (nearest).
        picture = np.asarray(Image.open(shown))
        assert picture.shape == (224, 224)
        assert np.array_equal(picture[::8, ::8], prepare_image(path)[..., 0])
    assert not list(tmp_path.rglob(".*.tmp*"))  # written atomically: no temporary file left
    # Run again on the folder: the prepared pictures are not taken for inputs.
    again = run_cli("--run", "a", "--runs-dir", str(tiny_run.parent), "--no-prepared", str(folder))
    assert again.returncode == 0 and len(again.stdout.splitlines()) == 2 + len(in_folder)


@pytest.mark.slow
def test_predict_images_takes_arrays_and_defaults_to_the_latest_run(tiny_run, sample_train):
    images = sample_train.images[:5]
    by_run = predict.predict_images(list(images), run="a", runs_dir=tiny_run.parent)
    latest = predict.predict_images(images, runs_dir=tiny_run.parent)  # a 4-D batch, the latest run
    assert np.allclose(by_run, latest, atol=1e-6)
    top = predict.top_k(by_run)
    assert len(top) == 5 and all(len(best) == 3 and best[0][1] >= best[1][1] >= best[2][1] for best in top)


def test_pictures_beside_inputs_are_written_atomically(tmp_path, sample_train):
    out = tmp_path / "x.prepared.png"
    predict.save_prepared(sample_train.images[0], out)
    picture = Image.open(io.BytesIO(out.read_bytes()))
    assert picture.size == (224, 224) and np.array_equal(np.asarray(picture)[::8, ::8], sample_train.images[0][..., 0])
    assert [p.name for p in tmp_path.iterdir()] == ["x.prepared.png"]
