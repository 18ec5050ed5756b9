"""What this run shows, in one sentence per figure, computed from the same rows the figure draws.

Each function takes the experiment's frames (metrics, similarity, summary) and returns a sentence that puts
this run's numbers, with their 95% intervals in brackets, next to the paper's finding. A sentence says "as in
the paper" only when the interval of the effect the paper reports excludes no effect (`analysis.uncertainty`'s
`verdict`: a sign or a strict ordering beyond the interval; a tie is never agreement), "unlike the paper" when
it excludes it on the other side, and otherwise that the difference is not distinguishable at this sample size
and what would resolve it. Where the results hold no uncertainty (files written before rayrs recorded it) it
says so and makes no comparison. The functions raise `NoData` (or return "") when there is nothing to say.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import polars as pl

from analysis import uncertainty
from analysis.adversarial import TRANSFER_CATEGORIES
from analysis.layers import with_blocks
from analysis.load import (
    BENIGN,
    NoData,
    attach_trials,
    format_eps,
    last_epoch,
    probe_kind,
    threat_model_name,
    trial_info,
)
from analysis.measures import MEASURE_NAMES, measure_costs, measure_pairs, rank_agreement
from analysis.summary import block_structure_by_config, configurations, convergence_by_block
from analysis.table1 import table1_frame
from analysis.uncertainty import Estimate, Verdict, all_verdicts, difference, format_estimate, mean_of, verdict

MOST = 6  # configurations named in one sentence at most

# What would resolve an undetermined comparison, by where its uncertainty comes from.
MORE_PROBES = "more probe images (`cka.probe_size`) or more seeds"
MORE_TEST_IMAGES = "more test images (`eval.test_subset`) or more seeds"
MORE_EPOCHS = "more probe images, more seeds, or more (or more frequent) epochs"
NO_INTERVAL = "no interval in these results (written before rayrs recorded uncertainties), so no comparison with the paper"


def judged(outcome: Verdict, holds: str, fails: str, resolve: str) -> str:
    """The end of a "This run:" sentence for a comparison with the paper: ``holds`` + "as in the paper" when the
    interval agrees, ``fails`` + "unlike the paper" when it contradicts it, else "not distinguishable"."""
    if outcome == "agrees":
        return f"{holds}, as in the paper"
    if outcome == "disagrees":
        return f"{fails}, unlike the paper"
    if outcome == "undetermined":
        return f"not distinguishable at this sample size: {resolve} would resolve it"
    return NO_INTERVAL


def _list(pairs: list[tuple[str, str]]) -> str:
    shown = ", ".join(f"{name} {value}" for name, value in pairs[:MOST])
    return shown + (f" (and {len(pairs) - MOST} more)" if len(pairs) > MOST else "")


def _points(estimate: Estimate) -> str:
    """An accuracy difference in points, "9.2 points [5.1, 13.3]"."""
    text = f"{100 * estimate.value:.1f} points"
    if estimate.has_interval:
        text += f" [{100 * estimate.lower:.1f}, {100 * estimate.upper:.1f}]"
    return text


def _estimate(row: dict, value: str = "value", lower: str = "lower", upper: str = "upper") -> Estimate:
    return Estimate(row[value], row[lower], row[upper], row.get("interval"))


def rows_estimate(rows: pl.DataFrame) -> Estimate:
    """The mean ``value`` of similarity ``rows`` (one set of models on one probe's images), with the jackknife
    interval of the mean (the mean of each replicate) where every row has its replicates."""
    rows = uncertainty.with_uncertainty(rows)
    value = rows["value"].mean()
    if rows.is_empty() or value is None:
        return Estimate(float("nan"))
    if rows["jackknife"].is_null().any() or rows["jackknife"].list.len().n_unique() != 1:
        return Estimate(value)
    replicates = rows.select(pl.col("jackknife").list.to_array(rows["jackknife"].list.len()[0])).to_series()
    return uncertainty.from_replicates(value, replicates.to_numpy().mean(axis=0).tolist())


def per_trials_estimate(rows: pl.DataFrame, by: Iterable[str] = ("model_a", "model_b")) -> Estimate:
    """The mean over groups of ``rows`` (each model or pair of models, e.g. seeds) of each group's mean, with
    `analysis.uncertainty.over_seeds`' interval (a single group keeps its jackknife interval)."""
    groups = [rows_estimate(group) for _, group in rows.group_by(list(by), maintain_order=True)]
    return uncertainty.over_seeds(groups)


def _ranges_ordered(first: Estimate, second: Estimate) -> Verdict:
    """Is ``first`` strictly before ``second`` beyond their ranges ("agrees"), strictly after ("disagrees")?"""
    if not (first.has_interval and second.has_interval):
        return "no interval"
    if first.upper < second.lower:
        return "agrees"
    if first.lower > second.upper:
        return "disagrees"
    return "undetermined"


# -- Table 1 and the accuracy curves ------------------------------------------------------------------------
def table1_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    table = table1_frame(metrics).filter(checkpoint="last")

    def number(row: dict, column: str, points: bool = False) -> str:
        estimate = _estimate(row, column, f"{column}_lower", f"{column}_upper")
        return _points(estimate) if points else format_estimate(estimate, ".1f", percent=True)

    parts = [
        (
            row["config"],
            f"benign test {number(row, 'benign_test')}, robust test {number(row, 'robust_test')} "
            f"(robust Δ {number(row, 'robust_gap')})",
        )
        for row in table.iter_rows(named=True)
    ]
    sentence = "Last epoch: " + "; ".join(f"{name}: {text}" for name, text in parts[:MOST]) + "."
    standard, robust = table.filter(~pl.col("robust")), table.filter(pl.col("robust"))
    if standard.height and robust.height:

        def pooled(rows: pl.DataFrame, column: str) -> Estimate:
            return mean_of([_estimate(r, column, f"{column}_lower", f"{column}_upper") for r in rows.to_dicts()])

        cost = difference(pooled(standard, "benign_test"), pooled(robust, "benign_test"))
        gap = difference(pooled(robust, "robust_gap"), pooled(standard, "robust_gap"))
        kept = difference(pooled(robust, "robust_test"), pooled(standard, "robust_test"))
        sentence += (
            f" Robust models keep {_points(kept)} more robust test accuracy than standard ones: "
            f"{judged(verdict(kept), 'robust training buys robustness', 'robust training buys none', MORE_TEST_IMAGES)}."
            f" They lose {_points(cost)} of benign test accuracy: "
            f"{judged(verdict(cost), 'a cost', 'a gain', MORE_TEST_IMAGES)}; and their robust generalisation gap is "
            f"larger by {_points(gap)}: {judged(verdict(gap), 'larger', 'smaller', MORE_TEST_IMAGES)}."
        )
    return sentence


def accuracy_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    gaps = configurations(summary, "best_last_gap").filter((pl.col("method") != "standard") & (pl.col("eps") > 0))
    if gaps.is_empty():
        return "No robust model in this run, so no robust overfitting to look for."
    rows = gaps.to_dicts()
    drops = [(row["config"], _points(_estimate(row))) for row in rows]
    outcomes = {row["config"]: verdict(_estimate(row)) for row in rows}
    sentence = (
        "Robust test accuracy lost between the best epoch and the last (95% interval allowing for the best epoch "
        "being picked on the same test images): " + _list(drops) + " — "
    )
    overfit = [config for config, outcome in outcomes.items() if outcome == "agrees"]
    if overfit:
        return sentence + f"robust overfitting in {', '.join(overfit)}, as Rice et al. and the paper report."
    if any(outcome == "no interval" for outcome in outcomes.values()):
        return sentence + NO_INTERVAL + "."
    return sentence + (
        "no loss distinguishable from none at this sample size (the paper and Rice et al. report robust overfitting "
        f"in longer training): {MORE_TEST_IMAGES} would resolve it."
    )


# -- Figs 2, 3 and the block-structure score ------------------------------------------------------------------
def cross_layer_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    scores = block_structure_by_config(summary)
    if scores.is_empty():
        raise NoData("no block-structure scores")
    pairs = [(row["config"], format_estimate(_estimate(row, "mean"))) for row in scores.iter_rows(named=True)]
    sentence = "Block-structure score (neighbours − far layers): " + _list(pairs)
    outcomes = []
    for (dataset,), group in scores.group_by(["dataset"], maintain_order=True):
        standard = [_estimate(r, "mean") for r in group.filter(pl.col("eps") == 0).to_dicts()]
        robust = group.filter(pl.col("eps") > 0).to_dicts()
        if not standard:
            continue
        for row in robust:
            same_width = [
                _estimate(r, "mean") for r in group.filter((pl.col("eps") == 0) & (pl.col("width") == row["width"])).to_dicts()
            ]
            outcomes.append(verdict(difference(_estimate(row, "mean"), mean_of(same_width or standard)), expected=-1))
    if outcomes:
        sentence += " — " + judged(all_verdicts(outcomes), "robust is lower", "robust is higher", MORE_PROBES)
    return sentence + "."


def eps_width_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    scores = configurations(summary, "block_structure").drop_nulls("eps")
    scores = scores.filter(
        (pl.col("eps") == 0) | ((pl.col("method") == "pgd") & pl.col("threat_model").is_in(["linf", None]))
    )
    cells = {
        (width, eps): mean_of([_estimate(r) for r in group.to_dicts()])
        for (width, eps), group in scores.group_by("width", "eps", maintain_order=True)
    }
    widths = sorted({w for w, _ in cells}, key=lambda w: (w is None, w))
    all_eps = sorted({e for _, e in cells})
    if len(all_eps) < 2 and len(widths) < 2:
        raise NoData("one eps and one width")
    parts, outcomes = [], []
    for width in widths:
        values = [(eps, cells[width, eps]) for eps in all_eps if (width, eps) in cells]
        outcomes += [verdict(difference(b, a), expected=-1) for (_, a), (_, b) in zip(values, values[1:])]
        parts.append(f"width {width}: " + ", ".join(f"ε={format_eps(e)} {format_estimate(v)}" for e, v in values))
    sentence = "Block-structure score (PGD-AT, ℓ∞) " + "; ".join(parts)
    if outcomes:
        sentence += " — " + judged(all_verdicts(outcomes), "it falls as ε grows", "it rises with ε", MORE_PROBES)
    if len(widths) > 1:
        spread = max(
            max(cells[w, e].value for w in widths if (w, e) in cells) - min(cells[w, e].value for w in widths if (w, e) in cells)
            for e in all_eps
        )
        sentence += f"; width moves it by at most {spread:.2f} at any ε"
    return sentence + "."


def block_structure_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    scores = block_structure_by_config(summary)
    if scores.is_empty():
        raise NoData("no scores")
    low, high = scores.sort("mean").row(0, named=True), scores.sort("mean").row(-1, named=True)
    return (
        f"Scores range from {format_estimate(_estimate(high, 'mean'))} ({high['config']}) to "
        f"{format_estimate(_estimate(low, 'mean'))} ({low['config']}); the paper's figures show the block structure "
        "fading as ε grows (the Fig 3 sentence tests it)."
    )


def cross_model_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    rows = attach_trials(similarity.filter(kind="cross_model", measure="cka", probe_a=BENIGN, probe_b=BENIGN), metrics)
    mixed = rows.filter(pl.col("robust_a") != pl.col("robust_b"))
    if mixed.is_empty():
        raise NoData("no non-robust vs robust rows")
    within = configurations(summary, "cka_neighbours")["value"].mean()
    mean = per_trials_estimate(mixed)
    diagonal = per_trials_estimate(mixed.filter(pl.col("layer_a") == pl.col("layer_b")))
    sentence = (
        f"Mean CKA between a non-robust and a robust model's layers: {format_estimate(mean)} over all pairs, "
        f"{format_estimate(diagonal)} between same-index layers"
    )
    if within is not None:
        sentence += f" (neighbouring layers within one model: {within:.2f})"
    low = judged(verdict(diagonal.shifted(-0.5), expected=-1), "below 0.5", "above 0.5", MORE_PROBES)
    return sentence + f" — {low}."


# -- Figs 4, 5 ------------------------------------------------------------------------------------------------
def benign_vs_adversarial_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    rows = similarity.filter(kind="benign_vs_adversarial", measure="cka").filter(pl.col("layer_a") == pl.col("layer_b"))
    rows = attach_trials(last_epoch(rows), metrics, sides="a").with_columns(
        depth=pl.col("layer_a") / pl.col("layer_a").max().over("model_a")
    )
    if rows.is_empty():
        raise NoData("no diagonal rows")
    named: dict[bool, dict[str, Estimate]] = {}
    for (robust,), group in rows.filter(pl.col("robust_a").is_not_null()).group_by(["robust_a"]):
        named[robust] = {
            "early": per_trials_estimate(group.filter(pl.col("depth") <= 1 / 3), by=["model_a"]),
            "late": per_trials_estimate(group.filter(pl.col("depth") >= 2 / 3), by=["model_a"]),
        }
    parts = [
        f"{'robust' if key else 'non-robust'}: first third {format_estimate(r['early'])}, last third "
        f"{format_estimate(r['late'])}"
        for key, r in sorted(named.items())
    ]
    sentence = "CKA(benign, adversarial) — " + "; ".join(parts)
    if True in named and False in named:
        outcome = all_verdicts(
            [
                verdict(difference(named[True]["late"], named[False]["late"])),
                verdict(difference(named[False]["early"], named[False]["late"])),
            ]
        )
        sentence += " — " + judged(
            outcome,
            "early layers barely move and robust networks stay closer at the end",
            "the order is reversed",
            MORE_PROBES,
        )
    return sentence + "."


def transferability_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    rows = _categorised(attach_trials(similarity.filter(kind="transfer", measure="transfer_accuracy"), metrics))
    rows = rows.filter(pl.col("model_a") != pl.col("model_b"))
    if rows.is_empty():
        raise NoData("no transfer between different models")
    lower, upper = uncertainty.wilson_bounds(pl.col("value"), pl.col("n_examples"))
    rows = rows.with_columns(lower=lower, upper=upper, interval=pl.lit("wilson"))
    means = {
        category: mean_of([_estimate(r) for r in group.to_dicts()])
        for (category,), group in rows.group_by(["category"], maintain_order=True)
    }
    parts = [(c, format_estimate(means[c], ".0f", percent=True)) for c in TRANSFER_CATEGORIES if c in means]
    sentence = "Target accuracy on transferred adversarial examples (lower = transfers better): " + _list(parts)
    least = "robust → non-robust"
    if least in means and len(means) > 1:
        outcome = all_verdicts(verdict(difference(means[least], other)) for c, other in means.items() if c != least)
        sentence += " — " + judged(outcome, f"{least} transfers least", f"{least} does not transfer least", MORE_PROBES)
    return sentence + "."


def transfer_cka_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    rows = similarity.filter(kind="transfer", measure="cka").filter(
        (pl.col("layer_a") == pl.col("layer_b")) & (pl.col("model_a") != pl.col("model_b"))
    )
    rows = _categorised(attach_trials(rows, metrics)).filter(pl.col("layer_a") == 1)
    if rows.is_empty():
        raise NoData("no transfer CKA at the second layer")
    means = {
        category: per_trials_estimate(group)
        for (category,), group in rows.group_by(["category"], maintain_order=True)
    }
    sentence = "CKA(source, target) at the second layer: " + _list(
        [(c, format_estimate(means[c])) for c in TRANSFER_CATEGORIES if c in means]
    )
    lowest = "robust → non-robust"
    if lowest in means and len(means) > 1:
        outcome = all_verdicts(verdict(difference(other, means[lowest])) for c, other in means.items() if c != lowest)
        sentence += " — " + judged(
            outcome, "it drops right after the first layer from robust to non-robust", f"{lowest} is not the lowest",
            MORE_PROBES,
        )
    return sentence + "."


# -- Figs 6, 25 -----------------------------------------------------------------------------------------------
def convergence_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    """Fig 6's sentence: when each block converges; then, for trials with CKA-guided freezing, `freezing_finding`."""
    freezing = freezing_finding(metrics)
    blocks = convergence_by_block(summary)
    if blocks.is_empty():
        if freezing:
            return freezing
        raise NoData("no convergence epochs")
    threshold = summary.filter(statistic="convergence_epoch")["threshold"].max()
    parts, outcomes = [], []
    for (config,), group in blocks.group_by(["config"], maintain_order=True):
        estimates = [_estimate(r, "mean") for r in group.to_dicts()]
        outcomes.append(_ranges_ordered(estimates[0], estimates[-1]) if len(estimates) > 1 else "undetermined")
        parts.append(
            f"{config}: "
            + ", ".join(f"{b} {format_estimate(e, '.1f')}" for b, e in zip(group["block"].to_list(), estimates))
        )
    ordering = judged(
        all_verdicts(outcomes),
        "early layers converge first (strictly, beyond the ranges)",
        "later layers converge first",
        MORE_EPOCHS,
    )
    return (
        f"Epoch from which CKA to the final epoch stays ≥ {threshold:g} (mean per block; in brackets the earliest and "
        f"latest epochs its CKA values' 95% intervals allow): " + "; ".join(parts[:MOST]) + f" — {ordering}."
    ) + (f" {freezing}" if freezing else "")


def freezing_finding(metrics: pl.DataFrame) -> str:
    """One sentence per trial with CKA-guided freezing (`rayrs.freezing`): the epoch each residual block trained
    frozen from, the share of the training's weight-gradient work that freezing skipped, and the check's measured
    time. "" when no trial used it.

    The skipped share is counted, not timed: each epoch's ``frozen_macs_share`` (the frozen layers' share of the
    model's multiply-accumulates, which is also their share of a training step's weight-gradient work), averaged
    over the trial's epochs (each epoch takes the same number of steps). What that is in seconds depends on the
    method (attack steps have no weight gradients to skip): `benchmarks/guided_freezing.py` measures it.
    """
    if "block_frozen_from" not in metrics.columns:
        return ""
    guided = metrics.filter(pl.col("block_frozen_from").is_not_null())
    if guided.is_empty():
        return ""
    labels = dict(trial_info(guided).select("trial", "label").iter_rows())
    sentences = []
    for (trial,), rows in guided.sort("epoch").group_by(["trial"], maintain_order=True):
        last = rows.row(-1, named=True)
        frozen = [(block, epoch) for block, epoch in zip(last["freeze_blocks"], last["block_frozen_from"]) if epoch is not None]
        if frozen:
            blocks = ", ".join(f"{block} from epoch {epoch}" for block, epoch in frozen)
            text = f"{labels.get(trial, trial)} (CKA-guided freezing) trained {blocks} frozen"
            shares = rows["frozen_macs_share"].to_list()
            if all(share is not None for share in shares):
                text += (f", skipping {100 * sum(shares) / len(shares):.1f}% of its {len(shares)} epochs' weight-gradient work "
                         "(multiply-accumulates counted, not timed)")
        else:
            text = f"{labels.get(trial, trial)} (CKA-guided freezing) froze no block in {rows.height} epochs"
        check, epoch = rows["freeze_check_seconds"].drop_nulls().sum(), rows["epoch_seconds"].drop_nulls().sum()
        if epoch > 0:
            text += f"; the check took {100 * check / epoch:.1f}% of its epochs' measured time"
        sentences.append(text + ".")
    return " ".join(sentences)


def convergence_epoch_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    epochs = configurations(summary, "convergence_epoch").with_columns(
        depth=pl.col("layer") / pl.col("layer").max().over("config")
    )
    if epochs.is_empty():
        raise NoData("no convergence epochs")

    def median(rows: pl.DataFrame) -> Estimate:
        if rows["lower"].is_null().any():
            return Estimate(rows["value"].median())
        return Estimate(rows["value"].median(), rows["lower"].median(), rows["upper"].median(), "threshold_band")

    early = median(epochs.filter(pl.col("depth") <= 1 / 3))
    late = median(epochs.filter(pl.col("depth") >= 2 / 3))
    ordering = judged(_ranges_ordered(early, late), "early layers settle first", "early layers settle later", MORE_EPOCHS)
    return (
        f"Median convergence epoch: first third of the layers {format_estimate(early, 'g')}, last third "
        f"{format_estimate(late, 'g')} — {ordering}."
    )


def epoch_heatmap_finding(metrics: pl.DataFrame, similarity: pl.DataFrame, summary: pl.DataFrame) -> str:
    rows = similarity.filter(kind="cross_epoch", measure="cka").filter(pl.col("epoch_a") != pl.col("epoch_b"))
    rows = with_blocks(rows.with_columns(probe=probe_kind("probe_a")), sides="a")
    if rows.is_empty():
        raise NoData("no off-diagonal epochs")
    order = rows.group_by("block_a").agg(pl.col("layer_a").min().alias("first")).sort("first")["block_a"].to_list()
    parts = []
    for probe in ("benign", "adversarial"):
        of_probe = rows.filter(probe=probe)
        present = [b for b in order if b in set(of_probe["block_a"])]
        if not present:
            continue
        first, last = (rows_estimate(of_probe.filter(block_a=b)) for b in (present[0], present[-1]))
        parts.append(f"{probe}: {present[0]} {format_estimate(first)}, {present[-1]} {format_estimate(last)}")
    return (
        "Mean CKA between different epochs of the same layer — "
        + "; ".join(parts)
        + " (lower = the layer moved more during training)."
    )


# -- Fig 7, App. B.1 ------------------------------------------------------------------------------------------
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
        means = {name: per_trials_estimate(group) for (name,), group in other.group_by(["other"], maintain_order=True)}
        if not means:
            continue
        ranked = sorted(means.items(), key=lambda item: -item[1].value)
        parts.append(
            f"vs {threat_model_name(reference)}: "
            + ", ".join(f"{threat_model_name(t)} {format_estimate(v)}" for t, v in ranked)
        )
        if closest_in_paper in means and len(means) > 1:
            outcome = all_verdicts(
                verdict(difference(means[closest_in_paper], v)) for t, v in means.items() if t != closest_in_paper
            )
            name = threat_model_name(closest_in_paper)
            checks.append(
                f"{threat_model_name(reference)}'s closest is {name} ({why}): "
                + judged(outcome, f"{name} is closest", f"{name} is not closest", MORE_PROBES)
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
    agree = all(abs(rho) >= 0.7 for rho, _ in agreement.values() if not math.isnan(rho))
    return (
        "Spearman rank correlation: "
        + "; ".join(parts)
        + f" — the measures {'rank' if agree else 'do not rank'} these layer pairs alike (|ρ| ≥ 0.7). Descriptive "
        "only: Procrustes and SVCCA values carry no uncertainty (one minibatch), so no interval backs a comparison "
        "with the paper's finding that the three measures agree."
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


def _categorised(rows: pl.DataFrame) -> pl.DataFrame:
    robust = {True: "robust", False: "non-robust"}
    rows = rows.filter(pl.col("robust_a").is_not_null() & pl.col("robust_b").is_not_null())
    return rows.with_columns(
        category=pl.col("robust_a").replace_strict(robust, return_dtype=pl.String)
        + " → "
        + pl.col("robust_b").replace_strict(robust, return_dtype=pl.String)
    )
