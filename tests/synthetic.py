"""A small, schema-valid results tree holding every comparison kind: a test fixture, and a way to try the report.

    uv run python tests/synthetic.py /tmp/demo && uv run rayrs analyze /tmp/demo

Nothing here is measured: the numbers are made up to look like the paper's findings, so that every figure
has rows and every caption has something to say (which is why it lives with the tests, not in `analysis`; the
report's functions are checked on real digits runs in ``tests/test_analysis_real.py``). Each CKA value and
transfer accuracy carries a made-up but realistic uncertainty, as rayrs writes it (`rayrs.schema`): a
``std_error`` of the size a 512-image probe gives (`standard_error`) and 20 jackknife replicates whose spread
is exactly that standard error; each accuracy was "measured" on 512 images. A WRN-10-style network of `LAYERS` (26 layers: stem conv,
three one-block stages, head), 17 trials: standard and PGD-AT (ε = 2/255, 8/255) at widths 1 and 2 over two
seeds, TRADES at 8/255, and ℓ2 / Snow / Gabor robust models; 6 epochs each.

- cross_layer: block structure that fades as ε grows (`cross_layer_cka`), for every trial at its last epoch.
- cross_model: standard vs PGD-AT (Fig 2d) and robust models of different threat models (Fig 7).
- benign_vs_adversarial: benign and adversarial representations agree in early layers only, or (robust) until
  the last few (Fig 4).
- transfer: among standard and PGD-AT models of both widths, with ``transfer_accuracy`` rows (Fig 5).
- cross_epoch: every layer (and each residual block's output, `EPOCH_LAYERS`) at every epoch vs the final
  epoch, and the epoch x epoch matrix of 4 layers; benign probes, and for one PGD-AT model also adversarial
  ones, crafted at each epoch (Figs 6, 25).
- procrustes and svcca beside cka for two trials' cross_layer comparisons (App. B.1).
"""

from __future__ import annotations

import math
import sys
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from analysis.load import BENIGN
from rayrs import storage as layout
from rayrs.schema import JACKKNIFE_FIELD, METRICS_SCHEMA, SECONDS_FIELD, SIMILARITY_SCHEMA, STD_ERROR_FIELD
from rayrs.similarity.cka import JACKKNIFE_GROUPS
from rayrs.storage import Storage

EPOCHS = 6
EXPERIMENT = "synthetic"
PROBE = 512  # probe images of every comparison, and images of every accuracy


def wrn_layers(blocks: bool = False) -> list[tuple[str, str]]:
    """``(name, type)`` of each compared layer of a WRN-10 (one block per stage), in execution order; with
    ``blocks``, each residual block's output too (type ``block``, after the block's last operation)."""
    layers = [("conv1", "conv")]
    for stage in (1, 2, 3):
        block = f"block{stage}.0"
        layers += [
            (f"{block}.bn1", "bn"),
            (f"{block}.relu1", "act"),
            (f"{block}.conv1", "conv"),
            (f"{block}.bn2", "bn"),
            (f"{block}.relu2", "act"),
            (f"{block}.conv2", "conv"),
            (f"{block}.shortcut", "conv"),
        ] + ([(block, "block")] if blocks else [])
    return layers + [("bn", "bn"), ("relu", "act"), ("pool", "pool"), ("fc", "linear")]


LAYERS = wrn_layers()
EPOCH_LAYERS = wrn_layers(blocks=True)  # a cross_epoch comparison's default layer types add the block outputs
STAGE = [0] + [s for s in (1, 2, 3) for _ in range(7)] + [4] * 4  # block index of each layer, 0 = stem, 4 = head


def trial_name(method: str, eps: float, width: int, seed: int, threat_model: str = "linf") -> str:
    robust = f"{method}{round(eps * 255)}" if method != "standard" else "standard"
    suffix = "" if threat_model == "linf" else f"-{threat_model}"
    return f"{robust}-w{width}-s{seed}{suffix}"


# (method, eps, width, seed, threat_model) of every trial.
TRIALS: list[tuple[str, float, int, int, str]] = (
    [("standard", 0.0, w, s, "linf") for w in (1, 2) for s in (0, 1)]
    + [("pgd", e, w, s, "linf") for e in (2 / 255, 8 / 255) for w in (1, 2) for s in (0, 1)]
    + [("trades", 8 / 255, 1, s, "linf") for s in (0, 1)]
    + [("pgd", eps, 1, 0, tm) for tm, eps in (("l2", 0.5), ("snow", 0.0625), ("gabor", 12.5 / 255))]
)
NAMES = {trial_name(*t): t for t in TRIALS}
STANDARD, PGD8, TRADES8 = (
    trial_name("standard", 0, 1, 0),
    trial_name("pgd", 8 / 255, 1, 0),
    trial_name("trades", 8 / 255, 1, 0),
)


def _noise(*key: object, scale: float = 0.02) -> float:
    """Small reproducible noise in [-scale, scale], a function of ``key`` (e.g. the trial and layer pair)."""
    return scale * (2 * (zlib.crc32(repr(key).encode()) / 2**32) - 1)


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))


def _strength(trial: str) -> float:
    """How robust a trial is, 0 (standard) to 1 (ε = 8/255 or a non-ℓ∞ robust model)."""
    method, eps, _, _, threat_model = NAMES[trial]
    if method == "standard":
        return 0.0
    return 1.0 if threat_model != "linf" else min(1.0, eps * 255 / 8)


# -- the made-up measures ------------------------------------------------------------------------------------
def cross_layer_cka(trial: str, i: int, j: int) -> float:
    """Block structure: bright within a stage, dark across; robust training brightens far-apart pairs."""
    if i == j:
        return 1.0
    width = NAMES[trial][2]
    near = 0.9 - 0.01 * abs(i - j)
    far = (0.15 + 0.03 * width) + 0.55 * _strength(trial) - 0.004 * abs(i - j)
    value = near if STAGE[i] == STAGE[j] else far
    return _clip(value + _noise(trial, i, j))


def cross_model_cka(a: str, b: str, i: int, j: int) -> float:
    """Low between a standard and a robust model; between threat models, ℓp alike and Snow close to Gabor."""
    tm_a, tm_b = NAMES[a][4], NAMES[b][4]
    families = {"linf": "lp", "l2": "lp", "snow": "texture", "gabor": "texture"}
    if (_strength(a) == 0) != (_strength(b) == 0):
        peak = 0.25
    elif tm_a == tm_b:
        peak = 0.9
    elif families[tm_a] == families[tm_b]:
        peak = 0.75
    else:
        peak = 0.4
    return _clip(peak * math.exp(-abs(i - j) / 6) * (1 - 0.3 * max(i, j) / len(LAYERS)) + _noise(a, b, i, j))


def benign_vs_adversarial_cka(trial: str, i: int, j: int) -> float:
    """Equal early on; a standard network diverges after the first third, a robust one only in the head."""
    depth = len(LAYERS)
    start = depth // 3 if _strength(trial) == 0 else depth - 5
    floor = 0.05 if _strength(trial) == 0 else 0.6
    diagonal = 1.0 if i < start else floor + (1 - floor) * math.exp(-(i - start) / 2)
    return _clip(diagonal * math.exp(-abs(i - j) / 5) + _noise(trial, i, j, "adv"))


def transfer_cka(source: str, target: str, i: int, j: int) -> float:
    """High early then dropping when source and target are alike; robust -> standard drops after layer 1."""
    robust_source, robust_target = _strength(source) > 0, _strength(target) > 0
    if robust_source and not robust_target:
        diagonal = 0.95 if i == 0 else 0.2
    else:
        diagonal = 0.95 - 0.6 * i / len(LAYERS)
    return _clip(diagonal * math.exp(-abs(i - j) / 5) + _noise(source, target, i, j))


def transfer_accuracy(source: str, target: str) -> float:
    """The target's accuracy on the source's adversarial examples (Fig 5a's values)."""
    robust_source, robust_target = _strength(source) > 0, _strength(target) > 0
    if source == target:
        return 0.45 if robust_target else 0.0
    table = {(False, False): 0.1, (False, True): 0.8, (True, True): 0.5, (True, False): 0.85}
    return table[(robust_source, robust_target)] + _noise(source, target, scale=0.03)


def cross_epoch_cka(trial: str, layer: int, epoch_a: int, epoch_b: int, probe: str) -> float:
    """Early layers settle after an epoch or two, late ones near the end; adversarial probes wander more."""
    settle = 1 + (EPOCHS - 1) * (layer / (len(EPOCH_LAYERS) - 1)) ** 2
    progress = [min(1.0, e / settle) for e in (epoch_a, epoch_b)]
    wander = 0.25 if probe != BENIGN else 0.1
    drift = wander * layer / len(EPOCH_LAYERS) if epoch_a != epoch_b else 0.0
    value = 1 - 0.8 * abs(progress[0] - progress[1]) - drift
    return _clip(value + (_noise(trial, layer, epoch_a, epoch_b, probe) if epoch_a != epoch_b else 0.0))


# -- rows ----------------------------------------------------------------------------------------------------
def similarity_row(
    kind: str,
    a: str,
    b: str,
    i: int,
    j: int,
    value: float,
    *,
    epoch_a: int = EPOCHS,
    epoch_b: int = EPOCHS,
    probe_a: str = BENIGN,
    probe_b: str = BENIGN,
    measure: str = "cka",
    job: str = "job",
    layers: list[tuple[str, str]] = LAYERS,
) -> dict:
    """One `rayrs.schema.SIMILARITY_SCHEMA` row; layer -1 is the "output" of a ``transfer_accuracy`` row."""
    name_a, type_a = layers[i] if i >= 0 else ("output", "output")
    name_b, type_b = layers[j] if j >= 0 else ("output", "output")
    return {
        "kind": kind,
        "measure": measure,
        "model_a": a,
        "epoch_a": epoch_a,
        "probe_a": probe_a,
        "model_b": b,
        "epoch_b": epoch_b,
        "probe_b": probe_b,
        "layer_a": i,
        "layer_b": j,
        "name_a": name_a,
        "name_b": name_b,
        "type_a": type_a,
        "type_b": type_b,
        "value": value,
        "n_examples": PROBE,
        "passes": 3,
        "job": job,
    }


def all_pairs(kind: str, a: str, b: str, cka: Callable[[int, int], float], job: str, **fields) -> list[dict]:
    """Every layer pair (i, j) of a comparison of ``a`` and ``b``, valued by ``cka(i, j)``."""
    n = len(LAYERS)
    return [similarity_row(kind, a, b, i, j, cka(i, j), job=job, **fields) for i in range(n) for j in range(n)]


def adversarial_probe(trial: str, epoch: int = EPOCHS) -> str:
    """The probe id of the evaluation attack's examples crafted on ``trial`` after ``epoch`` (rayrs.schema)."""
    method, eps, _, _, threat_model = NAMES[trial]
    return f"adversarial:{trial}@{epoch}:{threat_model}:{eps if eps else 8 / 255:.6g}:20"


def metrics_rows(trial: str) -> list[dict]:
    """``EPOCHS`` rows of `METRICS_SCHEMA`: robust models trade benign for robust accuracy and overfit late."""
    method, eps, width, seed, threat_model = NAMES[trial]
    s = _strength(trial)
    rows = []
    for epoch in range(1, EPOCHS + 1):
        t = epoch / EPOCHS
        peak = 1 - abs(epoch - EPOCHS / 2) / EPOCHS  # robust test accuracy peaks mid-training (Rice et al.)
        rows.append(
            {
                "experiment": EXPERIMENT,
                "trial": trial,
                "dataset": "cifar10",
                "arch": "wrn",
                "depth": 10,
                "width": width,
                "method": method,
                "threat_model": threat_model,
                "eps": eps,
                "seed": seed,
                "epoch": epoch,
                "lr": 0.1 if epoch <= EPOCHS // 2 else 0.01,
                "train_objective": 2.0 - t,
                "eval_eps": 8 / 255,
                "train_clean_acc": 0.6 + 0.4 * t - 0.05 * s,
                "train_clean_loss": 1.5 - t,
                "train_robust_acc": (0.3 + 0.6 * t) * s,
                "train_robust_loss": 2.3 - (1.5 * t) * (0.3 + s),
                "test_clean_acc": 0.55 + 0.38 * t - 0.07 * s + _noise(trial, epoch, "clean"),
                "test_clean_loss": 1.6 - 0.8 * t,
                "test_robust_acc": 0.45 * peak * s,
                "test_robust_loss": 2.2 - 0.4 * peak * s,
                "train_examples": PROBE,
                "test_examples": PROBE,
                "epoch_seconds": 10.0 * (1 + 9 * (method != "standard")) * width,
            }
        )
    best = max(rows, key=lambda row: (row["test_robust_acc"], -row["epoch"]))["epoch"]  # as rayrs.catalog picks it
    return [row | {"best_epoch": best} for row in rows]


def similarity_files() -> dict[tuple[str, str], list[dict]]:
    """``(kind, job) -> rows`` of every comparison in the tree."""
    files: dict[tuple[str, str], list[dict]] = {}
    for trial in NAMES:  # Figs 2, 3
        files["cross_layer", trial] = all_pairs(
            "cross_layer", trial, trial, lambda i, j, t=trial: cross_layer_cka(t, i, j), trial
        )
    for trial in (STANDARD, PGD8):  # App. B.1: the same comparisons with the other two measures
        # Procrustes is a distance in [0, 2] (0 = same) as rayrs.similarity.measures computes it; SVCCA a similarity.
        for measure, transform in (
            ("procrustes", lambda v: 2 * (1 - v) ** 0.8),
            ("svcca", lambda v: _clip(0.2 + 0.7 * v)),
        ):
            files["cross_layer", f"{trial}-{measure}"] = [
                row
                | {
                    "measure": measure,
                    "value": max(0.0, transform(row["value"]) + _noise(trial, measure, row["layer_a"], row["layer_b"])),
                    "job": f"{trial}-{measure}",
                }
                for row in files["cross_layer", trial]
            ]
    tm = {t[4]: trial_name(*t) for t in TRIALS if t[4] != "linf"} | {"linf": PGD8}
    pairs = [
        (STANDARD, PGD8),
        (tm["linf"], tm["l2"]),
        (tm["linf"], tm["snow"]),
        (tm["linf"], tm["gabor"]),
        (tm["snow"], tm["l2"]),
        (tm["gabor"], tm["snow"]),
        (tm["linf"], trial_name("pgd", 8 / 255, 1, 1)),
    ]
    for a, b in pairs:  # Figs 2d, 7
        files["cross_model", f"{a}-vs-{b}"] = all_pairs(
            "cross_model", a, b, lambda i, j, a=a, b=b: cross_model_cka(a, b, i, j), f"{a}-vs-{b}"
        )
    for trial in (STANDARD, trial_name("standard", 0, 1, 1), PGD8, trial_name("pgd", 8 / 255, 1, 1)):  # Fig 4
        files["benign_vs_adversarial", trial] = all_pairs(
            "benign_vs_adversarial",
            trial,
            trial,
            lambda i, j, t=trial: benign_vs_adversarial_cka(t, i, j),
            trial,
            probe_b=adversarial_probe(trial),
        )
    models = [trial_name(m, e, w, 0) for m, e in (("standard", 0), ("pgd", 8 / 255)) for w in (1, 2)]
    for source in models:  # Fig 5
        for target in models:
            job = f"{source}-to-{target}"
            probe = adversarial_probe(source)
            rows = all_pairs(
                "transfer",
                source,
                target,
                lambda i, j, s=source, t=target: transfer_cka(s, t, i, j),
                job,
                probe_a=probe,
                probe_b=probe,
            )
            rows.append(
                similarity_row(
                    "transfer",
                    source,
                    target,
                    -1,
                    -1,
                    transfer_accuracy(source, target),
                    measure="transfer_accuracy",
                    probe_a=probe,
                    probe_b=probe,
                    job=job,
                )
            )
            files["transfer", job] = rows
    for trial in (
        STANDARD,
        trial_name("standard", 0, 1, 1),
        PGD8,
        trial_name("pgd", 8 / 255, 1, 1),
        TRADES8,
        trial_name("trades", 8 / 255, 1, 1),
    ):  # Figs 6, 25
        # As rayrs' cross_epoch comparison stores them: every layer at every epoch vs the final epoch (Fig 6), and
        # the epoch x epoch matrix (one triangle) of 4 evenly spaced layers (Fig 25); an adversarial probe is
        # crafted on each epoch's own checkpoint. Pairs (e, final) of a matrix layer appear in both.
        kinds = [BENIGN] + (["adversarial"] if trial == PGD8 else [])
        matrix = {round(i * (len(EPOCH_LAYERS) - 1) / 3) for i in range(4)}
        pairs = [
            (layer, ea, eb)
            for layer in range(len(EPOCH_LAYERS))
            for ea in range(1, EPOCHS + 1)
            for eb in range(1, EPOCHS + 1)
            if eb == EPOCHS or (layer in matrix and ea <= eb)
        ]
        files["cross_epoch", trial] = [
            similarity_row(
                "cross_epoch",
                trial,
                trial,
                layer,
                layer,
                cross_epoch_cka(trial, layer, ea, eb, kind),
                epoch_a=ea,
                epoch_b=eb,
                probe_a=BENIGN if kind == BENIGN else adversarial_probe(trial, ea),
                probe_b=BENIGN if kind == BENIGN else adversarial_probe(trial, eb),
                job=trial,
                layers=EPOCH_LAYERS,
            )
            for kind in kinds
            for layer, ea, eb in pairs
        ]
    return files


# Made-up compute seconds of one comparison job, per measure (the `seconds` column rayrs writes), in the
# proportions benchmarks/measures.py measures on a CPU: Procrustes ~10x CKA, SVCCA ~8x.
JOB_SECONDS = {"cka": 1.0, "procrustes": 10.0, "svcca": 8.0, "transfer_accuracy": 0.5}


def standard_error(row: dict) -> float | None:
    """A realistic standard error of a row's value: a transfer accuracy's binomial one over `PROBE` images; for
    CKA about what the jackknife gives on a 512-image probe (largest mid-range, 0 for a layer with itself);
    none for Procrustes and SVCCA (rayrs computes them on one minibatch, without replicates)."""
    value = row["value"]
    if row["measure"] == "transfer_accuracy":
        return math.sqrt(value * (1 - value) / PROBE)
    if row["measure"] != "cka":
        return None
    if value >= 1.0:
        return 0.0
    return 0.004 + 0.04 * value * (1 - value)


def uncertainty_columns(
    job: str, rows: list[dict], error_of: Callable[[dict], float | None] | None = None
) -> dict[str, list]:
    """``std_error`` and ``jackknife`` for ``rows``: per row `JACKKNIFE_GROUPS` replicates around its value whose
    delete-a-group jackknife standard error is exactly ``error_of(row)`` (default `standard_error`; None: no
    uncertainty), drawn from a generator seeded by the job, then centred and scaled."""
    generator = np.random.default_rng(zlib.crc32(job.encode()))
    errors, replicates = [], []
    count = JACKKNIFE_GROUPS
    for row in rows:
        error = (error_of or standard_error)(row)
        errors.append(error)
        if error is None:
            replicates.append(None)
            continue
        noise = generator.standard_normal(count)
        noise -= noise.mean()
        scale = math.sqrt((count - 1) / count * float(np.square(noise).sum()))
        replicates.append((row["value"] + noise * (error / scale)).tolist())
    return {STD_ERROR_FIELD.name: errors, JACKKNIFE_FIELD.name: replicates}


def frame_with_uncertainty(
    job: str, rows: list[dict], error_of: Callable[[dict], float | None] | None = None
) -> pl.DataFrame:
    """``rows`` (`similarity_row` dicts) as a Polars frame with `uncertainty_columns`, as `analysis.load` reads them."""
    table = pa.Table.from_pylist(rows, schema=SIMILARITY_SCHEMA)
    for name, values in uncertainty_columns(job, rows, error_of).items():
        field = STD_ERROR_FIELD if name == STD_ERROR_FIELD.name else JACKKNIFE_FIELD
        table = table.append_column(field, pa.array(values, type=field.type))
    return pl.from_arrow(table)


def write_metrics(results: Storage, rows: Iterable[dict]) -> None:
    results.write_table(layout.METRICS, pa.Table.from_pylist(list(rows), schema=METRICS_SCHEMA))


def write_similarity(
    results: Storage, kind: str, job: str, rows: list[dict], extra: dict[str, list] | None = None
) -> None:
    """``rows`` as ``similarity/<kind>/<job>.parquet``, their ``job`` column set to ``job`` as in a real file;
    ``extra`` columns (e.g. ``seconds``) appended as given."""
    table = pa.Table.from_pylist([row | {"job": job} for row in rows], schema=SIMILARITY_SCHEMA)
    types = {field.name: field.type for field in (SECONDS_FIELD, STD_ERROR_FIELD, JACKKNIFE_FIELD)}
    for name, values in (extra or {}).items():
        table = table.append_column(name, pa.array(values, type=types.get(name)))
    results.write_table(layout.similarity(kind, job), table)


def write_results(root: str | Path, kinds: Iterable[str] | None = None) -> Storage:
    """Write the synthetic experiment under ``root``: metrics.parquet and the similarity files of ``kinds``
    (every kind when None). Returns the `Storage` to hand to `analysis.report.render_report`."""
    results = Storage(root)
    write_metrics(results, (row for trial in NAMES for row in metrics_rows(trial)))
    for (kind, job), rows in similarity_files().items():
        if kinds is None or kind in kinds:
            seconds = JOB_SECONDS[rows[0]["measure"]]
            extra = {SECONDS_FIELD.name: [seconds] * len(rows)} | uncertainty_columns(job, rows)
            write_similarity(results, kind, job, rows, extra=extra)
    return results


def _main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python tests/synthetic.py RESULTS_FOLDER")
    results = write_results(argv[0])
    print(f"wrote a synthetic experiment to {results.root}; render it with: uv run rayrs analyze {results.root}")


if __name__ == "__main__":
    _main(sys.argv[1:])
