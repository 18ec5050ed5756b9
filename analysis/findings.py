"""What this run shows, in one sentence per figure, computed from the same rows the figure draws.

Each function takes the experiment's frames (metrics, similarity, summary) and returns a sentence that puts
this run's numbers next to the paper's finding, e.g. "block-structure score: standard 0.65, PGD-AT ε=8/255
0.19 — robust is lower, as in the paper". They raise `NoData` (or return "") when there is nothing to say.
"""

from __future__ import annotations

import polars as pl

from analysis.adversarial import TRANSFER_CATEGORIES
from analysis.layers import with_blocks
from analysis.load import BENIGN, NoData, attach_trials, format_eps, last_epoch, probe_kind, threat_model_name
from analysis.measures import MEASURE_NAMES, measure_costs, measure_pairs, rank_agreement
from analysis.summary import block_structure_by_config, convergence_by_block
from analysis.table1 import table1_frame

MOST = 6  # configurations named in one sentence at most


def _as_in_paper(holds: bool) -> str:
    return "as in the paper" if holds else "unlike the paper"


def _list(pairs: list[tuple[str, str]]) -> str:
    shown = ", ".join(f"{name} {value}" for name, value in pairs[:MOST])
    return shown + (f" (and {len(pairs) - MOST} more)" if len(pairs) > MOST else "")


def table1_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    table = table1_frame(metrics).filter(checkpoint="last")
    parts = [
        (
            row["config"],
            f"benign test {row['benign_test']:.1%}, robust test {row['robust_test']:.1%} (robust Δ {row['robust_gap']:.1%})",
        )
        for row in table.iter_rows(named=True)
    ]
    sentence = "Last epoch: " + "; ".join(f"{name}: {text}" for name, text in parts[:MOST]) + "."
    standard, robust = table.filter(~pl.col("robust")), table.filter(pl.col("robust"))
    if standard.height and robust.height:
        cost = standard["benign_test"].mean() - robust["benign_test"].mean()
        gaps = robust["robust_gap"].mean() > standard["robust_gap"].mean()
        sentence += (
            f" Robust models lose {100 * cost:.1f} points of benign test accuracy ({_as_in_paper(cost > 0)}) and have "
            f"{'the larger' if gaps else 'a smaller'} robust generalisation gap ({_as_in_paper(gaps)})."
        )
    return sentence


def accuracy_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    table = table1_frame(metrics).filter(pl.col("robust"))
    if table.is_empty():
        return "No robust model in this run, so no robust overfitting to look for."
    wide = table.pivot(on="checkpoint", index="config", values="robust_test")
    drops = [(row["config"], f"{100 * (row['best'] - row['last']):.1f} points") for row in wide.iter_rows(named=True)]
    overfit = any(row["best"] - row["last"] > 0.005 for row in wide.iter_rows(named=True))
    return (
        "Robust test accuracy lost between the best epoch and the last: "
        + _list(drops)
        + " — "
        + (
            "robust overfitting, as Rice et al. and the paper report."
            if overfit
            else "no robust overfitting in this run."
        )
    )


def cross_layer_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    scores = block_structure_by_config(summary)
    if scores.is_empty():
        raise NoData("no block-structure scores")
    pairs = [(row["config"], f"{row['mean']:.2f}") for row in scores.iter_rows(named=True)]
    standard = scores.filter(pl.col("eps") == 0)["mean"]
    robust = scores.filter(pl.col("eps") > 0)["mean"]
    sentence = "Block-structure score (neighbours − far layers): " + _list(pairs)
    if standard.len() and robust.len():
        lower = robust.mean() < standard.mean()
        sentence += f" — robust is {'lower' if lower else 'not lower'}, {_as_in_paper(lower)}"
    return sentence + "."


def cross_model_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    rows = attach_trials(similarity.filter(kind="cross_model", measure="cka", probe_a=BENIGN, probe_b=BENIGN), metrics)
    mixed = rows.filter(pl.col("robust_a") != pl.col("robust_b"))
    if mixed.is_empty():
        raise NoData("no non-robust vs robust rows")
    within = summary.filter(statistic="cka_neighbours")["value"].mean()
    mean, diagonal = mixed["value"].mean(), mixed.filter(pl.col("layer_a") == pl.col("layer_b"))["value"].mean()
    sentence = f"Mean CKA between a non-robust and a robust model's layers: {mean:.2f} over all pairs, {diagonal:.2f} between same-index layers"
    if within is not None:
        sentence += f" (neighbouring layers within one model: {within:.2f})"
    return sentence + f" — {'low' if diagonal < 0.5 else 'not low'}, {_as_in_paper(diagonal < 0.5)}."


def eps_width_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    scores = (
        summary.filter(statistic="block_structure")
        .drop_nulls("eps")
        .filter(pl.col("method").is_in(["standard", "pgd"]) | (pl.col("eps") == 0))
    )
    by = scores.group_by("width", "eps").agg(pl.col("value").mean()).sort("width", "eps")
    if by["eps"].n_unique() < 2 and by["width"].n_unique() < 2:
        raise NoData("one eps and one width")
    parts, falls = [], True
    for (width,), group in by.group_by(["width"], maintain_order=True):
        values = group["value"].to_list()
        falls &= all(b <= a + 0.01 for a, b in zip(values, values[1:]))
        parts.append(
            f"width {width}: "
            + ", ".join(f"ε={format_eps(e)} {v:.2f}" for e, v in group.select("eps", "value").iter_rows())
        )
    spread = by.group_by("eps").agg((pl.col("value").max() - pl.col("value").min()).alias("spread"))["spread"].max()
    sentence = "Block-structure score (PGD-AT) " + "; ".join(parts)
    sentence += f" — it {'falls' if falls else 'does not fall'} as ε grows ({_as_in_paper(falls)})"
    if by["width"].n_unique() > 1:
        sentence += f"; width moves it by at most {spread:.2f} at any ε"
    return sentence + "."


def benign_vs_adversarial_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    rows = similarity.filter(kind="benign_vs_adversarial", measure="cka").filter(pl.col("layer_a") == pl.col("layer_b"))
    rows = attach_trials(last_epoch(rows), metrics, sides="a").with_columns(
        depth=pl.col("layer_a") / pl.col("layer_a").max().over("model_a")
    )
    if rows.is_empty():
        raise NoData("no diagonal rows")
    summary_rows = rows.group_by("robust_a").agg(
        early=pl.col("value").filter(pl.col("depth") <= 1 / 3).mean(),
        late=pl.col("value").filter(pl.col("depth") >= 2 / 3).mean(),
    )
    named = {r["robust_a"]: r for r in summary_rows.iter_rows(named=True)}
    parts = [
        f"{'robust' if key else 'non-robust'}: first third {r['early']:.2f}, last third {r['late']:.2f}"
        for key, r in named.items()
        if key is not None
    ]
    sentence = "CKA(benign, adversarial) — " + "; ".join(parts)
    if True in named and False in named:
        holds = named[True]["late"] > named[False]["late"] and named[False]["early"] > named[False]["late"]
        sentence += f" — early layers barely move and robust networks stay close to the end, {_as_in_paper(holds)}"
    return sentence + "."


def transferability_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    rows = _categorised(attach_trials(similarity.filter(kind="transfer", measure="transfer_accuracy"), metrics))
    rows = rows.filter(pl.col("model_a") != pl.col("model_b"))
    means = dict(rows.group_by("category").agg(pl.col("value").mean()).iter_rows())
    if not means:
        raise NoData("no transfer between different models")
    parts = [(c, f"{means[c]:.0%}") for c in TRANSFER_CATEGORIES if c in means]
    sentence = "Target accuracy on transferred adversarial examples (lower = transfers better): " + _list(parts)
    if "robust → non-robust" in means and len(means) > 1:
        least = max(means, key=means.get) == "robust → non-robust"
        sentence += f" — robust → non-robust transfers {'least' if least else 'not least'}, {_as_in_paper(least)}"
    return sentence + "."


def transfer_cka_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    rows = similarity.filter(kind="transfer", measure="cka").filter(
        (pl.col("layer_a") == pl.col("layer_b")) & (pl.col("model_a") != pl.col("model_b"))
    )
    rows = _categorised(attach_trials(rows, metrics))
    second = rows.filter(pl.col("layer_a") == 1).group_by("category").agg(pl.col("value").mean())
    means = dict(second.iter_rows())
    if not means:
        raise NoData("no transfer CKA at the second layer")
    sentence = "CKA(source, target) at the second layer: " + _list(
        [(c, f"{means[c]:.2f}") for c in TRANSFER_CATEGORIES if c in means]
    )
    if "robust → non-robust" in means and len(means) > 1:
        drops = min(means, key=means.get) == "robust → non-robust"
        sentence += (
            f" — it drops right after the first layer from robust to non-robust, {_as_in_paper(drops)}"
            if drops
            else f" — {_as_in_paper(False)}, robust → non-robust is not the lowest"
        )
    return sentence + "."


def convergence_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    blocks = convergence_by_block(summary)
    if blocks.is_empty():
        raise NoData("no convergence epochs")
    threshold = summary.filter(statistic="convergence_epoch")["threshold"].max()
    parts, early_first = [], True
    for (config,), group in blocks.group_by(["config"], maintain_order=True):
        values = group["mean"].to_list()
        early_first &= values[0] <= values[-1]
        parts.append(f"{config}: " + ", ".join(f"{b} {m:.1f}" for b, m in group.select("block", "mean").iter_rows()))
    return (
        f"Epoch from which CKA to the final epoch stays ≥ {threshold:g} (mean per block): "
        + "; ".join(parts[:MOST])
        + f" — early layers converge first, {_as_in_paper(early_first)}."
    )


def epoch_heatmap_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    rows = similarity.filter(kind="cross_epoch", measure="cka").filter(pl.col("epoch_a") != pl.col("epoch_b"))
    rows = with_blocks(rows.with_columns(probe=probe_kind("probe_a")), sides="a")
    if rows.is_empty():
        raise NoData("no off-diagonal epochs")
    means = (
        rows.group_by("probe", "block_a")
        .agg(pl.col("value").mean(), pl.col("layer_a").min().alias("first"))
        .sort("probe", "first", descending=[True, False])
    )
    parts = []
    for (probe,), group in means.group_by(["probe"], maintain_order=True):
        first, last = group.row(0, named=True), group.row(-1, named=True)
        parts.append(f"{probe}: {first['block_a']} {first['value']:.2f}, {last['block_a']} {last['value']:.2f}")
    return (
        "Mean CKA between different epochs of the same layer — "
        + "; ".join(parts)
        + " (lower = the layer moved more during training)."
    )


def threat_model_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    rows = attach_trials(similarity.filter(kind="cross_model", measure="cka", probe_a=BENIGN, probe_b=BENIGN), metrics)
    rows = rows.filter(pl.col("robust_a") & pl.col("robust_b") & (pl.col("layer_a") == pl.col("layer_b")))
    expected = {"linf": ("l2", "ℓp models alike"), "snow": ("gabor", "Snow closest to Gabor")}  # the paper's Fig 7
    parts, checks = [], []
    for reference, (closest_in_paper, why) in expected.items():
        involved = rows.filter((pl.col("threat_model_a") == reference) | (pl.col("threat_model_b") == reference))
        other = involved.with_columns(
            other=pl.when(pl.col("threat_model_a") == reference)
            .then(pl.col("threat_model_b"))
            .otherwise(pl.col("threat_model_a"))
        ).filter(pl.col("other") != reference)
        means = other.group_by("other").agg(pl.col("value").mean()).sort("value", descending=True)
        if means.is_empty():
            continue
        parts.append(
            f"vs {threat_model_name(reference)}: "
            + ", ".join(f"{threat_model_name(t)} {v:.2f}" for t, v in means.iter_rows())
        )
        closest = means["other"][0]
        if closest_in_paper in means["other"].to_list():
            checks.append(
                f"{threat_model_name(reference)}'s closest is {threat_model_name(closest)} ({why}: {_as_in_paper(closest == closest_in_paper)})"
            )
    if not parts:
        raise NoData("no threat-model pairs")
    return (
        "Mean same-layer CKA between robust models, most similar first — "
        + "; ".join(parts)
        + ("; " + "; ".join(checks) if checks else "")
        + "."
    )


def agreement_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    agreement = rank_agreement(measure_pairs(similarity))
    parts = [f"ρ(CKA, {MEASURE_NAMES[m]}) = {rho:.2f} over {n} layer pairs" for m, (rho, n) in agreement.items()]
    agree = all(abs(rho) >= 0.7 for rho, _ in agreement.values())
    return (
        "Spearman rank correlation: "
        + "; ".join(parts)
        + f" — the measures {'agree' if agree else 'disagree'} on which layers are alike, {_as_in_paper(agree)}."
    )


def cost_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    seconds = dict(measure_costs(similarity).select("measure", "seconds").iter_rows())
    if "cka" not in seconds or not seconds["cka"]:
        raise NoData("no CKA timing")
    parts = [
        f"{MEASURE_NAMES[m]} {seconds[m] / seconds['cka']:.1f}× CKA's time"
        for m in ("procrustes", "svcca")
        if m in seconds
    ]
    return "Cost per comparison: " + "; ".join(parts) + " (paper: Procrustes 10×, SVCCA 30×)."


def block_structure_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    scores = block_structure_by_config(summary)
    if scores.is_empty():
        raise NoData("no scores")
    low, high = scores.sort("mean").row(0, named=True), scores.sort("mean").row(-1, named=True)
    return (
        f"Scores range from {high['mean']:.2f} ({high['config']}) to {low['mean']:.2f} ({low['config']}); "
        f"the paper's figures show the block structure fading as ε grows."
    )


def convergence_epoch_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    epochs = summary.filter(statistic="convergence_epoch").with_columns(
        depth=pl.col("layer") / pl.col("layer").max().over("trial")
    )
    if epochs.is_empty():
        raise NoData("no convergence epochs")
    early = epochs.filter(pl.col("depth") <= 1 / 3)["value"].median()
    late = epochs.filter(pl.col("depth") >= 2 / 3)["value"].median()
    return f"Median convergence epoch: first third of the layers {early:g}, last third {late:g} — early layers settle {'first' if early <= late else 'later'}, {_as_in_paper(early <= late)}."


def _categorised(rows: pl.DataFrame) -> pl.DataFrame:
    robust = {True: "robust", False: "non-robust"}
    rows = rows.filter(pl.col("robust_a").is_not_null() & pl.col("robust_b").is_not_null())
    return rows.with_columns(
        category=pl.col("robust_a").replace_strict(robust, return_dtype=pl.String)
        + " → "
        + pl.col("robust_b").replace_strict(robust, return_dtype=pl.String)
    )
