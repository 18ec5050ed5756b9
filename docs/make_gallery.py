"""Regenerate the README's gallery images from real runs, with the current report code.

    uv run rayrs sweep sweeps/quickstart.yaml        # results/quickstart    (~3 min on 2 cores)
    uv run rayrs sweep sweeps/paper_digits.yaml      # results/paper_digits  (see the README for its time)
    uv run python docs/make_gallery.py [RESULTS]     # RESULTS: the folder holding both (default: results)

Each experiment's report is redrawn from its Parquet files (`rayrs analyze RESULTS/<name> --out TMP --format
png`) and every figure copied here, scaled to at most `MAX_WIDTH` pixels wide and reduced to a 256-colour
palette so that the repository stays small: the paper in miniature under ``docs/gallery/paper_digits/``, the two
quickstart figures the README shows under ``analysis/gallery/``. A figure the report skips is reported and
fails the script (the gallery must show every figure of the paper in miniature).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MAX_WIDTH = 1100
GALLERIES = {
    # experiment -> (where its images go, which figures: None = all)
    "quickstart": (REPO / "analysis" / "gallery", {"accuracy_curves": "quickstart_accuracy.png",
                                                   "cross_layer": "quickstart_cross_layer.png"}),
    "paper_digits": (REPO / "docs" / "gallery" / "paper_digits", None),
}


def shrink(source: Path, target: Path) -> None:
    """``source`` scaled to at most `MAX_WIDTH` wide (Lanczos), as a 256-colour PNG at ``target``."""
    image = Image.open(source).convert("RGB")
    if image.width > MAX_WIDTH:
        image = image.resize((MAX_WIDTH, round(image.height * MAX_WIDTH / image.width)), Image.Resampling.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


def main(results: Path) -> int:
    from analysis.report import FIGURES

    status = 0
    for experiment, (gallery, wanted) in GALLERIES.items():
        with tempfile.TemporaryDirectory() as scratch:
            drawing = subprocess.run(
                [sys.executable, "-m", "rayrs", "analyze", str(results / experiment), "--out", scratch, "--format", "png"]
            )
            if drawing.returncode != 0:  # rayrs analyze said why, in one line
                status = 1
                continue
            drawn = {name: Path(scratch) / f"{name}.png" for name in FIGURES if (Path(scratch) / f"{name}.png").exists()}
            names = wanted or {name: f"{name}.png" for name in FIGURES}
            missing = sorted(set(names) - set(drawn))
            if missing:
                print(f"{experiment}: not drawn: {', '.join(missing)}", file=sys.stderr)
                status = 1
            gallery.mkdir(parents=True, exist_ok=True)
            for name, file in names.items():
                if name in drawn:
                    shrink(drawn[name], gallery / file)
                    print(f"{gallery / file}: {(gallery / file).stat().st_size / 1024:.0f} KiB")
    return status


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "results"))
