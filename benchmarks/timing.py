"""Interleaved repeats for the benchmarks: contenders timed in rounds, headline ratios as medians of paired ratios.

Why: on a shared machine, contenders timed one after the other see different load (a `cka.py --quick` run read
`time_over_forward_gram` 2.04 while another process was busy, 0.98 on a quieter run). So every benchmark times
its contenders in ROUNDS, each contender once a round, and a headline ratio A/B is computed within each round,
from an A and a B measured back to back, where a burst of load slows both sides alike. The headline figure is
the MEDIAN of those per-round (paired) ratios, reported with their min and max; every timed figure is reported
as {median, min, max, repeats} over the rounds.

Order within a round: alternating (A B C, then C B A, then A B C, ...), not rotating (A B C, B C A, C A B).
Alternation keeps neighbours neighbours in every round, so a benchmark that lists the two sides of a ratio next
to each other gets them back to back in every round (rotation would split A from C, and any pair across the
wrap-around); and which side of a pair runs first alternates, so a bias of the first or second slot (the
memory or caches the previous contender leaves, another process's burst starting mid-round) falls on each side
in turn. With two contenders the two orders are the same (A B, B A, ...).

Plain Python on purpose: `benchmarks/cka.py`'s parent process must not import torch (its children's peak
memory starts from it), and the arithmetic is unit-tested without timing anything (tests/test_bench_timing.py).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
MIN_ROUNDS = 3  # the fewest rounds whose min-max says anything about the spread (issue 14, section 5)


def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """The contenders in the order round `round_index` (from 0) runs them: as given in even rounds, reversed in odd."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


def schedule(names: Sequence[str], rounds: int) -> list[list[str]]:
    """Every round's order (see `round_order`): A B C, C B A, A B C, ..."""
    return [round_order(names, r) for r in range(rounds)]


def run_rounds(contenders: Mapping[str, Callable[[int], T]], rounds: int,
               on_result: Callable[[int, int, str, T], None] | None = None) -> list[dict[str, T]]:
    """Call every contender once a round, in `schedule` order; return one {name: result} per round.

    contenders: name -> fn(round_index), which times itself (in this process or in a child) and returns its
    figures. on_result(round_index, position, name, result) is called after each call (progress lines).
    """
    results: list[dict[str, T]] = []
    for r, order in enumerate(schedule(list(contenders), rounds)):
        results.append({})
        for position, name in enumerate(order):
            results[r][name] = contenders[name](r)
            if on_result is not None:
                on_result(r, position, name, results[r][name])
    return results


def round_sample(total: int, per_round: int | None, round_index: int, rounds: int) -> list[int]:
    """Which of `total` equal-cost units a slow contender times in round `round_index` (sorted indices).

    For a contender too slow to run whole every round (torch-cka's layer grid: ~10 minutes on 2 CPU cores),
    each round times a sample of its units (rows, epoch pairs) and scales it to the whole; the paired design
    then compares that round's estimate with the other side measured in the same round.
    per_round None: every unit exactly once over the rounds, strided (r, r + R, r + 2R, ...), so each round's
    sample spans the whole range. Otherwise `per_round` units evenly spread, shifted by 1/rounds of their
    spacing each round, so that the rounds time different units (all of them if per_round >= total).
    """
    if per_round is not None and per_round >= total:
        return list(range(total))
    if per_round is None:
        chosen = list(range(round_index % rounds, total, rounds))
        return chosen or [round_index % total]
    spacing = total / per_round
    offset = (round_index % rounds) * spacing / rounds
    return sorted({min(total - 1, math.floor(i * spacing + offset)) for i in range(per_round)})


def stopwatch(fn: Callable[[], T], sync: Callable[[], None] | None = None) -> tuple[float, T]:
    """Wall seconds of one call of fn (with `sync`, e.g. a CUDA synchronise, before and after), and its result."""
    if sync is not None:
        sync()
    started = time.perf_counter()
    result = fn()
    if sync is not None:
        sync()
    return time.perf_counter() - started, result


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def spread(values: Sequence[float | None]) -> dict[str, float | int] | None:
    """{median, min, max, repeats} of the finite values (None where there are none).

    A missing value (a failed round: None, NaN) is left out and `repeats` counts only what was measured.
    """
    kept = [float(v) for v in values if _finite(v)]
    if not kept:
        return None
    return {"median": statistics.median(kept), "min": min(kept), "max": max(kept), "repeats": len(kept)}


def figure_spreads(rounds: Sequence[Mapping[str, float | None]]) -> dict[str, dict[str, float | int] | None]:
    """Every figure's `spread` over the rounds; figures in first-seen order (a round may lack some)."""
    names: dict[str, None] = {}
    for figures in rounds:
        names.update(dict.fromkeys(figures))
    return {name: spread([figures.get(name) for figures in rounds]) for name in names}


@dataclass(frozen=True)
class Ratio:
    """A headline ratio: scale * numerator / denominator, both figures of the same round."""

    numerator: str
    denominator: str
    scale: float = 1.0

    def per_round(self, rounds: Sequence[Mapping[str, float | None]]) -> list[float]:
        """The paired ratio of every round where both figures were measured (finite, denominator not 0)."""
        out = []
        for figures in rounds:
            top, bottom = figures.get(self.numerator), figures.get(self.denominator)
            if _finite(top) and _finite(bottom) and bottom != 0:
                out.append(self.scale * top / bottom)
        return out


def headlines(rounds: Sequence[Mapping[str, float | None]],
              ratios: Mapping[str, Ratio]) -> tuple[dict[str, float | None], dict[str, dict[str, float | int] | None]]:
    """(key -> median of its paired ratios, key -> spread of them) for every headline ratio."""
    spreads = {key: spread(ratio.per_round(rounds)) for key, ratio in ratios.items()}
    return {key: None if s is None else s["median"] for key, s in spreads.items()}, spreads


def describe(s: Mapping[str, float | int] | None, spec: str = ".3g") -> str:
    """'median [min-max, n=R]' for a console line ('—' if not measured)."""
    if s is None:
        return "—"
    return f"{format(s['median'], spec)} [{format(s['min'], spec)}-{format(s['max'], spec)}, n={s['repeats']}]"


def check_rounds(rounds: int) -> None:
    """Refuse fewer than MIN_ROUNDS rounds: a spread needs at least three repeats."""
    if rounds < MIN_ROUNDS:
        raise SystemExit(f"--rounds {rounds}: every figure is a median over at least {MIN_ROUNDS} rounds "
                         f"(its min-max spread needs them); use --rounds {MIN_ROUNDS} or more")


ORDER_NOTE = "alternating: each round runs the contenders in the listed order, the next round in reverse"


def machine() -> dict[str, Any]:
    """The CPU model, its core count and the load average at the call: figures compare only on the same kind
    of machine (`cka.py`'s int8 Gram route, for one, needs a CPU with AMX)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0]}


def emit(summary: Mapping[str, Any], path: str | None) -> None:
    """Print `summary` as the last line (one JSON object) and, with a path, write it there too."""
    text = json.dumps(summary)
    if path:
        with open(path, "w") as out:
            out.write(text + "\n")
    print(text, flush=True)
