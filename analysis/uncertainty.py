"""The 95% interval of every number the report shows, and the rule that turns an interval into a claim.

A number comes as an `Estimate`: its value, a 95% interval (``lower``, ``upper``; None where the results hold no
uncertainty, e.g. files written before rayrs recorded it: never a made-up one), how the interval was made
(``method``, one of `METHODS`) and, for a number computed from CKA values of one set of models, its delete-a-group
jackknife replicates (``replicates``: the number computed again on replicate g of every value it comes from,
`rayrs.schema`'s ``jackknife`` column).

Where each interval comes from:

- **Accuracy** (a fraction of n evaluated images): the Wilson score interval (Wilson 1927), which keeps its
  coverage near 0 and 1 where the textbook p ± z·sqrt(p(1 − p)/n) collapses to a point (a non-robust model's
  0% robust accuracy). n is ``train_examples`` / ``test_examples`` (`rayrs.schema`), ``n_examples`` for a
  transfer accuracy (whose jackknife interval would also collapse at 0% or 100%: Wilson is used there too).
- **CKA and numbers derived from CKA values of the same probe** (a mean over layers, a block-structure score, a
  difference between two models on one probe): the delete-a-group jackknife, value ± t(G − 1, 0.975) · SE, SE
  from the G replicates (`rayrs.similarity.cka.jackknife_std_error`). The groups are the same probe images in
  every job on a probe, so replicate g of a derived number is that number computed from replicate g of each
  value (`Estimate.replicates` carries them through sums, means and differences).
- **Over seeds** (`over_seeds`, a configuration trained with 2+ seeds): the mean, with the union of two
  intervals: the t interval of the seed values (mean ± t(n − 1, 0.975) · sd / sqrt(n): training variability
  on this probe / test subset) and the per-value interval of the mean (the jackknife of the mean's replicates
  where every seed has them, else the mean of the seeds' bounds: the sampling of the probe / test images,
  which the seeds share and so cannot show). Either alone can be too narrow: seeds that agree exactly (as
  convergence epochs often do) give a zero-width t interval, and the per-value one ignores training noise.
  A single trial keeps its own interval.
- **A difference of two numbers** (`difference`): the jackknife of the paired replicates where both sides have
  them (one probe: the replicates line up); otherwise Newcombe's / Zou & Donner's MOVER combination of the two
  intervals, L = d − sqrt((a − l_a)² + (u_b − b)²), U = d + sqrt((u_a − a)² + (b − l_b)²) (for two Wilson
  intervals this is Newcombe 1998's method 10). MOVER treats the two sides as independent; two models measured
  on the same test or probe images make positively correlated errors, which makes it conservative.

The claim rule (`verdict`): a finding that needs a sign or an ordering holds only when the interval of the
difference excludes zero on that side ("as in the paper"), contradicts it when it excludes zero on the other
side ("unlike the paper"), and is otherwise not distinguishable at this sample size. Ties are never agreement.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import polars as pl
from scipy import stats

CONFIDENCE = 0.95
Z95 = float(stats.norm.ppf(0.5 + CONFIDENCE / 2))  # 1.96

# How an interval was made (the ``interval`` column of summary.parquet).
METHODS = {
    "wilson": "Wilson score interval of a binomial proportion",
    "jackknife": "delete-a-group jackknife over the probe's 20 example groups, value ± t(19) SE",
    "seeds": "mean over seeds: t interval of the seed values united with the per-value interval of the mean",
    "mover": "difference of two estimates: Newcombe / Zou-Donner MOVER from the two intervals",
    "simultaneous": "max over epochs of simultaneous (Bonferroni) intervals of each epoch minus the last",
    "threshold_band": "first epochs from which the 95% band's upper / lower edge stays above the threshold",
}

Verdict = Literal["agrees", "disagrees", "undetermined", "no interval"]


@dataclass(frozen=True)
class Estimate:
    """A number with its 95% interval. ``lower``/``upper`` None: no uncertainty is known (not zero)."""

    value: float
    lower: float | None = None
    upper: float | None = None
    method: str | None = None
    replicates: tuple[float, ...] | None = None  # jackknife replicates, only where the interval is the jackknife's
    seeds: int = 1  # trials (seeds) the value is the mean of

    @property
    def has_interval(self) -> bool:
        return self.lower is not None and self.upper is not None

    def shifted(self, offset: float) -> Estimate:
        """The estimate of value + ``offset`` (a known constant: the interval moves with it)."""
        return replace(
            self,
            value=self.value + offset,
            lower=None if self.lower is None else self.lower + offset,
            upper=None if self.upper is None else self.upper + offset,
            replicates=None if self.replicates is None else tuple(r + offset for r in self.replicates),
        )


# -- binomial ----------------------------------------------------------------------------------------------
def wilson(fraction: float, n: int | None, confidence: float = CONFIDENCE) -> tuple[float | None, float | None]:
    """Wilson score interval of a proportion ``fraction`` of ``n`` trials; (None, None) without ``n``."""
    if n is None or n <= 0 or fraction is None or math.isnan(fraction):
        return None, None
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    centre = (fraction + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(max(fraction * (1 - fraction), 0.0) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy(fraction: float, n: int | None, confidence: float = CONFIDENCE) -> Estimate:
    """An accuracy measured on ``n`` images, with its Wilson interval (none without ``n``)."""
    lower, upper = wilson(fraction, n, confidence)
    return Estimate(fraction, lower, upper, "wilson" if lower is not None else None)


def wilson_bounds(fraction: pl.Expr, n: pl.Expr, z: float = Z95) -> tuple[pl.Expr, pl.Expr]:
    """The Wilson interval as Polars expressions (null where ``n`` is null), for whole columns of accuracies."""
    n = n.cast(pl.Float64)
    centre = (fraction + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((fraction * (1 - fraction)).clip(lower_bound=0) / n + z * z / (4 * n * n)).sqrt() / (1 + z * z / n)
    return (centre - half).clip(lower_bound=0.0), (centre + half).clip(upper_bound=1.0)


# -- jackknife ---------------------------------------------------------------------------------------------
def jackknife_std_error(replicates: Sequence[float]) -> float:
    """sqrt((G − 1) / G · Σ_g (θ_g − mean θ)²) (Efron & Stein 1981; `rayrs.similarity.cka.jackknife_std_error`)."""
    values = np.asarray(replicates, dtype=np.float64)
    count = values.shape[0]
    return float(np.sqrt((count - 1) / count * np.square(values - values.mean()).sum()))


def jackknife_t(groups: int, confidence: float = CONFIDENCE) -> float:
    """t(G − 1) quantile of a jackknife interval over G groups (2.093 for 20 groups at 95%)."""
    return float(stats.t.ppf(0.5 + confidence / 2, groups - 1))


def from_replicates(value: float, replicates: Sequence[float] | None, confidence: float = CONFIDENCE) -> Estimate:
    """``value`` with its jackknife interval from ``replicates`` (no interval when there are none)."""
    if replicates is None or len(replicates) < 2 or any(r is None or math.isnan(r) for r in replicates):
        return Estimate(value)
    half = jackknife_t(len(replicates), confidence) * jackknife_std_error(replicates)
    return Estimate(value, value - half, value + half, "jackknife", tuple(float(r) for r in replicates))


def from_std_error(value: float, std_error: float | None, groups: int = 20, confidence: float = CONFIDENCE) -> Estimate:
    """A similarity value with its jackknife interval from its stored ``std_error`` (none where it is null)."""
    if std_error is None or math.isnan(std_error) or value is None:
        return Estimate(value)
    half = jackknife_t(groups, confidence) * std_error
    return Estimate(value, value - half, value + half, "jackknife")


def mean_of(estimates: Sequence[Estimate]) -> Estimate:
    """The mean of estimates of ONE set of models on one probe (e.g. a layer mean): the jackknife of the mean
    replicates where all have them, else the mean of the bounds (perfectly correlated errors: conservative)."""
    if len(estimates) == 1:
        return estimates[0]
    value = float(np.mean([e.value for e in estimates]))
    if all(e.replicates is not None for e in estimates) and len({len(e.replicates) for e in estimates}) == 1:
        return from_replicates(value, np.mean([e.replicates for e in estimates], axis=0).tolist())
    if all(e.has_interval for e in estimates):
        lower = float(np.mean([e.lower for e in estimates]))
        upper = float(np.mean([e.upper for e in estimates]))
        return Estimate(value, lower, upper, estimates[0].method)
    return Estimate(value)


# -- over seeds --------------------------------------------------------------------------------------------
def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, lower, upper): the t interval of the mean of ``values`` (2 or more)."""
    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean())
    half = float(stats.t.ppf(0.5 + confidence / 2, len(data) - 1) * data.std(ddof=1) / math.sqrt(len(data)))
    return mean, mean - half, mean + half


def over_seeds(
    estimates: Sequence[Estimate], confidence: float = CONFIDENCE, bounds: tuple[float, float] | None = None
) -> Estimate:
    """The mean of one configuration's trials (one per seed), with the interval of the module's rule: a single
    trial keeps its own; 2+ take the union of the t interval over seeds and the per-value interval of the mean.
    ``bounds``: the range the number lives in (an accuracy's [0, 1]), to which the t interval is clipped."""
    estimates = [e for e in estimates if e.value is not None and not math.isnan(e.value)]
    if not estimates:
        return Estimate(float("nan"))
    if len(estimates) == 1:
        return estimates[0]
    mean, lower, upper = t_interval([e.value for e in estimates], confidence)
    if bounds is not None:
        lower, upper = max(lower, bounds[0]), min(upper, bounds[1])
    measured = mean_of(estimates)
    if measured.has_interval:
        lower, upper = min(lower, measured.lower), max(upper, measured.upper)
    return Estimate(mean, lower, upper, "seeds", seeds=len(estimates))


# -- differences and claims --------------------------------------------------------------------------------
def difference(a: Estimate, b: Estimate) -> Estimate:
    """a − b with its interval: paired jackknife replicates where both sides have them, else MOVER."""
    value = a.value - b.value
    if a.replicates is not None and b.replicates is not None and len(a.replicates) == len(b.replicates):
        return from_replicates(value, [x - y for x, y in zip(a.replicates, b.replicates)])
    if not (a.has_interval and b.has_interval):
        return Estimate(value)
    lower = value - math.hypot(a.value - a.lower, b.upper - b.value)
    upper = value + math.hypot(a.upper - a.value, b.value - b.lower)
    return Estimate(value, lower, upper, "mover")


def verdict(effect: Estimate, expected: Literal[1, -1] = 1) -> Verdict:
    """Does ``effect`` have the paper's sign (``expected``: +1 positive, −1 negative) beyond its interval?

    "agrees" when the interval excludes zero on the expected side, "disagrees" when it excludes zero on the
    other, "undetermined" when it holds zero (a tie included), "no interval" when there is none to judge by.
    """
    if not effect.has_interval:
        return "no interval"
    lower, upper = (effect.lower, effect.upper) if expected == 1 else (-effect.upper, -effect.lower)
    if lower > 0:
        return "agrees"
    if upper < 0:
        return "disagrees"
    return "undetermined"


def all_verdicts(verdicts: Iterable[Verdict]) -> Verdict:
    """One verdict for a finding made of several comparisons: it agrees only if every one does, disagrees if
    any one does (beyond its interval), has no interval if any lacks one, and is undetermined otherwise."""
    verdicts = list(verdicts)
    if not verdicts:
        return "no interval"
    if "disagrees" in verdicts:
        return "disagrees"
    if "no interval" in verdicts:
        return "no interval"
    if all(v == "agrees" for v in verdicts):
        return "agrees"
    return "undetermined"


# -- best epoch vs last ------------------------------------------------------------------------------------
def best_minus_last(per_epoch: Sequence[Estimate], confidence: float = CONFIDENCE) -> Estimate:
    """How much higher the best epoch is than the last, max_e θ_e − θ_last, from the epochs' differences to the
    last one (``per_epoch``: one `Estimate` of θ_e − θ_last per earlier epoch, each made at the Bonferroni level
    1 − (1 − ``confidence``)/K for K earlier epochs; see `bonferroni`).

    Why not the best epoch's own interval: the best epoch is chosen on the same test images, and the largest of
    K noisy differences is biased upward (a model that stopped improving still shows a positive "gap"). The K
    intervals hold together with probability ≥ ``confidence``, and then max_e θ_e − θ_last lies between the
    largest lower and the largest upper bound; since the last epoch is itself a candidate the gap is ≥ 0, so
    both bounds are clipped at 0. A robust-overfitting claim needs the lower bound above 0.
    """
    if not per_epoch:
        return Estimate(0.0, 0.0, 0.0, "simultaneous")
    value = max(0.0, max(e.value for e in per_epoch))
    if not all(e.has_interval for e in per_epoch):
        return Estimate(value)
    lower = max(0.0, max(e.lower for e in per_epoch))
    upper = max(0.0, max(e.upper for e in per_epoch))
    return Estimate(value, lower, upper, "simultaneous", seeds=per_epoch[0].seeds)


def bonferroni(comparisons: int, confidence: float = CONFIDENCE) -> float:
    """The confidence of each of ``comparisons`` intervals that hold together with ``confidence``."""
    return 1 - (1 - confidence) / max(1, comparisons)


# -- words ---------------------------------------------------------------------------------------------------
def format_estimate(estimate: Estimate, spec: str = ".2f", percent: bool = False) -> str:
    """"0.42 [0.38, 0.46]" (or "87.6% [84.1, 90.5]"); the bare value where there is no interval."""
    scale, unit = (100, "%") if percent else (1, "")

    def number(value: float) -> str:
        text = f"{scale * value:{spec}}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"

    text = f"{number(estimate.value)}{unit}"
    if estimate.has_interval:
        text += f" [{number(estimate.lower)}, {number(estimate.upper)}]"
    return text


# -- similarity rows ---------------------------------------------------------------------------------------
def with_uncertainty(similarity: pl.DataFrame) -> pl.DataFrame:
    """``similarity`` with ``std_error`` and ``jackknife`` columns, null where the rows lack them (files written
    before rayrs recorded them, or frames built without them)."""
    missing = {"std_error": pl.Float64, "jackknife": pl.List(pl.Float64)}
    return similarity.with_columns(
        pl.lit(None, dtype=dtype).alias(name) for name, dtype in missing.items() if name not in similarity.columns
    )


def interval_columns(value: str = "value", std_error: str = "std_error", groups: int = 20) -> list[pl.Expr]:
    """``lower`` and ``upper``: each row's jackknife interval from its ``std_error`` (null where it is null)."""
    half = jackknife_t(groups) * pl.col(std_error)
    return [(pl.col(value) - half).alias("lower"), (pl.col(value) + half).alias("upper")]


def with_bounds(similarity: pl.DataFrame) -> pl.DataFrame:
    """``similarity`` rows with ``lower`` and ``upper``, each value's 95% interval: a transfer accuracy's Wilson
    interval over its ``n_examples`` images, any other value's jackknife interval from its ``std_error``; null
    where the rows hold no uncertainty (Procrustes, SVCCA, older files)."""
    rows = with_uncertainty(similarity)
    wilson_lower, wilson_upper = wilson_bounds(pl.col("value"), pl.col("n_examples"))
    jackknife_lower, jackknife_upper = interval_columns()
    accuracy = pl.col("measure") == "transfer_accuracy"
    return rows.with_columns(
        lower=pl.when(accuracy).then(wilson_lower).otherwise(jackknife_lower),
        upper=pl.when(accuracy).then(wilson_upper).otherwise(jackknife_upper),
    )


def over_seeds_frame(
    rows: pl.DataFrame, keys: Sequence[str], confidence: float = CONFIDENCE, bounds: tuple[float, float] | None = None,
    first: Sequence[str] = (),
) -> pl.DataFrame:
    """`over_seeds` for whole frames: one row per group of ``keys`` (its rows: one per trial, e.g. the seeds of
    a configuration), with ``value`` their mean, ``lower`` / ``upper`` its 95% interval (a single row keeps its
    own ``lower`` / ``upper``; 2+ rows the union of the t interval over them and the mean of their bounds,
    clipped to ``bounds``), ``seeds`` the number of rows, and the first value of each ``first`` column."""
    grouped = rows.group_by(list(keys), maintain_order=True).agg(
        *(pl.col(column).first() for column in first),
        pl.col("value").mean(),
        pl.col("value").std().alias("_sd"),
        pl.len().alias("seeds"),
        pl.col("lower").mean().alias("_lower"),
        pl.col("upper").mean().alias("_upper"),
        (pl.col("lower").is_null() | pl.col("upper").is_null()).any().alias("_missing"),
    )
    quantiles = {n: float(stats.t.ppf(0.5 + confidence / 2, n - 1)) for n in grouped["seeds"].unique() if n > 1}
    half = (
        pl.col("seeds").replace_strict(quantiles, default=None, return_dtype=pl.Float64)
        * pl.col("_sd")
        / pl.col("seeds").cast(pl.Float64).sqrt()
    )
    seed_lower, seed_upper = pl.col("value") - half, pl.col("value") + half
    if bounds is not None:
        seed_lower, seed_upper = seed_lower.clip(lower_bound=bounds[0]), seed_upper.clip(upper_bound=bounds[1])
    measured_lower = pl.when(pl.col("_missing")).then(None).otherwise(pl.col("_lower"))
    measured_upper = pl.when(pl.col("_missing")).then(None).otherwise(pl.col("_upper"))
    return grouped.with_columns(
        lower=pl.when(pl.col("seeds") == 1).then(measured_lower).otherwise(pl.min_horizontal(seed_lower, measured_lower)),
        upper=pl.when(pl.col("seeds") == 1).then(measured_upper).otherwise(pl.max_horizontal(seed_upper, measured_upper)),
    ).drop("_sd", "_lower", "_upper", "_missing")
