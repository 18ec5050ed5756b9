"""The benchmarks' shared timing helper (benchmarks/timing.py): its order of calls and its arithmetic, nothing timed."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

_path = Path(__file__).resolve().parents[1] / "benchmarks" / "timing.py"
_spec = importlib.util.spec_from_file_location("bench_timing", _path)
timing = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = timing  # dataclasses look their module up there
_spec.loader.exec_module(timing)


def test_rounds_alternate_and_keep_neighbours_back_to_back():
    names = ["floor", "rayrs", "pytorch_cka", "torch_cka"]
    order = timing.schedule(names, 4)
    assert order == [names, names[::-1], names, names[::-1]]
    for run in order:
        assert sorted(run) == sorted(names)  # each contender exactly once a round
        # Listed neighbours are measured back to back in every round (rotation would split floor from torch_cka
        # and, in round 2, floor from rayrs).
        for a, b in zip(names, names[1:]):
            assert abs(run.index(a) - run.index(b)) == 1
    # Which side of a pair goes first alternates from round to round.
    firsts = [run.index("floor") < run.index("rayrs") for run in order]
    assert firsts == [True, False, True, False]


def test_run_rounds_calls_in_schedule_order_and_collects_each_round():
    calls = []

    def contender(name):
        def fn(round_index):
            calls.append((round_index, name))
            return {"seconds": 10 * round_index + len(calls)}

        return fn

    seen = []
    results = timing.run_rounds({n: contender(n) for n in ("a", "b", "c")}, 3,
                                on_result=lambda r, k, name, res: seen.append((r, k, name)))
    assert calls == [(0, "a"), (0, "b"), (0, "c"), (1, "c"), (1, "b"), (1, "a"), (2, "a"), (2, "b"), (2, "c")]
    assert seen == [(r, k, name) for (r, name), k in zip(calls, [0, 1, 2] * 3)]
    assert [sorted(round_) for round_ in results] == [["a", "b", "c"]] * 3
    assert results[1]["c"] == {"seconds": 14} and results[2]["a"] == {"seconds": 27}


def test_spread_is_median_min_max_of_what_was_measured():
    assert timing.spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "repeats": 3}
    assert timing.spread([4.0, 1.0, 2.0, 3.0]) == {"median": 2.5, "min": 1.0, "max": 4.0, "repeats": 4}
    # A failed round (None) or a NaN is left out, and repeats says so.
    assert timing.spread([5.0, None, math.nan, 1.0]) == {"median": 3.0, "min": 1.0, "max": 5.0, "repeats": 2}
    assert timing.spread([None, math.inf]) is None
    figures = timing.figure_spreads([{"a": 1.0, "b": 2.0}, {"a": 3.0}, {"a": 2.0, "b": 4.0}])
    assert list(figures) == ["a", "b"]
    assert figures["a"]["median"] == 2.0 and figures["b"] == {"median": 3.0, "min": 2.0, "max": 4.0, "repeats": 2}


def test_headline_is_the_median_of_paired_ratios_not_a_ratio_of_medians():
    # Each round's A and B were measured back to back; in round 3 a burst of load slowed A more than B.
    # Two rounds say A/B = 0.5, the disturbed one 2.0.
    rounds = [{"A": 1.0, "B": 2.0}, {"A": 3.0, "B": 6.0}, {"A": 10.0, "B": 5.0}]
    values, spreads = timing.headlines(rounds, {"a_over_b": timing.Ratio("A", "B")})
    assert values == {"a_over_b": 0.5}
    assert spreads["a_over_b"] == {"median": 0.5, "min": 0.5, "max": 2.0, "repeats": 3}
    # The ratio of the medians would have read 3 / 5 = 0.6: neither a measured pair nor robust to the burst.
    medians = timing.figure_spreads(rounds)
    assert medians["A"]["median"] / medians["B"]["median"] == pytest.approx(0.6)


def test_ratio_scale_and_rounds_missing_a_side():
    # at_step_over_limit = PGD step / ((k + 1) clean steps), k = 10
    ratio = timing.Ratio("pgd", "clean", scale=1 / 11)
    rounds = [{"pgd": 4.4, "clean": 0.5}, {"pgd": 4.0, "clean": None}, {"pgd": 3.3, "clean": 0.5}, {"clean": 0.0, "pgd": 1.0}]
    assert ratio.per_round(rounds) == pytest.approx([0.8, 0.6])  # rounds 2 and 4 have no pair
    values, spreads = timing.headlines(rounds, {"at_step_over_limit": ratio, "missing": timing.Ratio("x", "clean")})
    assert values["at_step_over_limit"] == pytest.approx(0.7) and spreads["at_step_over_limit"]["repeats"] == 2
    assert values["missing"] is None and spreads["missing"] is None


def test_round_sample_spreads_slow_contenders_units_over_the_rounds():
    # Every unit exactly once over the rounds when no per-round count is given (a full torch-cka grid).
    chunks = [timing.round_sample(44, None, r, 3) for r in range(3)]
    assert sorted(sum(chunks, [])) == list(range(44))
    assert all(chunk[0] < 3 and chunk[-1] >= 41 for chunk in chunks)  # each chunk spans the whole grid
    # A fixed count per round: that many distinct units, different ones in each round, spread over the range.
    picks = [timing.round_sample(45, 3, r, 3) for r in range(3)]
    assert picks == [[0, 15, 30], [5, 20, 35], [10, 25, 40]]
    assert timing.round_sample(44, 2, 0, 3) == [0, 22]
    assert timing.round_sample(5, 8, 1, 3) == [0, 1, 2, 3, 4]
    assert timing.round_sample(2, None, 2, 3) == [0]  # fewer units than rounds: no round goes empty


def test_fewer_than_three_rounds_is_refused_with_the_way_out():
    timing.check_rounds(3)
    with pytest.raises(SystemExit, match=r"--rounds 2: .* at least 3 rounds .* use --rounds 3"):
        timing.check_rounds(2)
