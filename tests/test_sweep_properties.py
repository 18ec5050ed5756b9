"""Every sweep file, whatever it holds, gets a plan or one line: a property-based test (hypothesis).

Three families of sweep files are generated: valid ones (every field drawn from what is allowed), nearly valid
ones (a valid file with one or two fields replaced by an odd value), and hostile ones (odd types, odd strings
and odd keys in every field, huge or empty grid axes, text that is not YAML at all). For each, ``rayrs sweep
FILE --dry-run`` must either print a plan (exit 0) or exit 1 with exactly one line and no traceback; it never
writes anything, and it returns within a time and memory bound. Valid files must give a plan.

The examples are derandomised (the same ones on every run, drawn from the test's name), hypothesis keeps no
example database, and its caches (Unicode tables) go to the system's temporary folder, not the repository.
"""

from __future__ import annotations

import functools
import os
import string
import tempfile
import time
from pathlib import Path
from typing import Any

# Read by hypothesis when it first needs its cache folder (default: ./.hypothesis in the repository).
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "rayrs-hypothesis"))

import yaml  # noqa: E402
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from rayrs.attacks import THREAT_MODELS
from rayrs.cli import app
from rayrs.config import AXIS_ALIASES, COMPARISONS, Experiment, TrialConfig, _section_model
from rayrs.methods import METHODS

runner = CliRunner()
SECONDS = 20.0  # per file: a valid plan costs well under a second once the models' FLOPs are counted
PEAK_BYTES = 256 * 2**20  # growth of the peak resident memory while one file is read and planned
SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,  # the bound is asserted below, with room for a loaded 2-core machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- valid sweep files ---------------------------------------------------------------------------------------------
COMPARISON_KINDS = list(COMPARISONS)


@st.composite
def valid_sweeps(draw: st.DrawFn) -> dict[str, Any]:
    """A sweep file that is valid: small digits WRNs, eps inside the threat model's range, distinct grid values."""
    threat_model = draw(st.sampled_from(list(THREAT_MODELS)))
    default = THREAT_MODELS[threat_model].defaults["digits"].eps
    epochs = draw(st.integers(1, 4))
    sweep: dict[str, Any] = {
        "name": draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)),
        "data": {"dataset": "digits"},
        "model": {"arch": "wrn", "depth": draw(st.sampled_from([10, 16])), "width": draw(st.integers(1, 2))},
        "train": {
            "method": draw(st.sampled_from([m for m in METHODS if m != "standard"])),
            "threat_model": threat_model,
            "eps": draw(st.sampled_from([default, default / 2, f"{default * 255:g}/255"])),
            "epochs": epochs,
            "lr": draw(st.floats(1e-4, 1.0)),
            "seed": draw(st.integers(0, 2**32 - 1)),
        },
    }
    axes = draw(st.lists(st.sampled_from(["seed", "width", "train.lr", "epochs"]), unique=True, max_size=2))
    values = {
        "seed": st.lists(st.integers(0, 99), min_size=1, max_size=3, unique=True),
        "width": st.lists(st.integers(1, 2), min_size=1, max_size=2, unique=True),
        "train.lr": st.lists(st.sampled_from([0.01, 0.05, 0.1, 0.2]), min_size=1, max_size=3, unique=True),
        "epochs": st.lists(st.integers(epochs, epochs + 2), min_size=1, max_size=2, unique=True),
    }
    if axes:
        sweep["grid"] = {axis: draw(values[axis]) for axis in axes}
    kinds = draw(st.lists(st.sampled_from(COMPARISON_KINDS), max_size=3))
    sweep["compare"] = [
        {"kind": kind, "measures": draw(st.lists(st.sampled_from(["cka", "procrustes", "svcca"]), min_size=1, unique=True))}
        for kind in kinds
    ]
    return sweep


# -- odd values --------------------------------------------------------------------------------------------------------
ODD_STRINGS = st.one_of(
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=30),  # any Unicode but lone surrogates
    st.sampled_from(["", " ", "..", ".", "/", "../../etc", "~", "null", "8/0", "1e999", "-0", "nan", ".inf", "true",
                     "[x]", "[/]", "{}", "<!--", "</script>", "\x00", "a\nb", "s3://b/p", "file://tmp/x", "%s%n",
                     "${HOME}", "\u202e", "a" * 300, "block1", "standard", "cross_layer", "all", "final"]),
)
ODD_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    ODD_STRINGS,
)
ODD_VALUES = st.recursive(
    ODD_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(ODD_STRINGS, inner, max_size=4)),
    max_leaves=12,
)


def field_paths(model: type = Experiment, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every settable field of a sweep file, nested sections included (``("train", "attack", "steps")``)."""
    paths = []
    for name, field in model.model_fields.items():
        paths.append((*prefix, name))
        section = _section_model(field.annotation)
        if section is not None:
            paths.extend(field_paths(section, (*prefix, name)))
    return paths


FIELDS = [path for path in field_paths() if path[-1] not in ("max_trials", "max_jobs")]  # raising them is deliberate


def set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        if not isinstance(tree.get(part), dict):
            tree[part] = {}
        tree = tree[part]
    tree[path[-1]] = value


@st.composite
def nearly_valid_sweeps(draw: st.DrawFn) -> dict[str, Any]:
    """A valid sweep file with one or two fields (anywhere, nested ones too) replaced by an odd value."""
    sweep = draw(valid_sweeps())
    for path in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=2, unique=True)):
        set_path(sweep, path, draw(ODD_VALUES))
    return sweep


GRID_AXES = st.one_of(
    st.sampled_from(sorted(AXIS_ALIASES)),
    st.sampled_from([".".join(p) for p in field_paths(TrialConfig)]),
    ODD_STRINGS,
)


@st.composite
def hostile_sweeps(draw: st.DrawFn) -> Any:
    """Odd types and strings in every field, odd keys, and grids with huge, empty or odd axes."""
    sweep: dict[Any, Any] = {}
    for path in draw(st.lists(st.sampled_from(FIELDS), max_size=8, unique=True)):
        set_path(sweep, path, draw(ODD_VALUES))
    if draw(st.booleans()):
        sweep[draw(ODD_STRINGS)] = draw(ODD_VALUES)  # an unknown key, possibly an odd one
    if draw(st.booleans()):
        # Up to 3 axes of 0..40 values: empty axes, and grids of 64,000 trials, among them.
        axes = draw(st.lists(GRID_AXES, max_size=3, unique=True))
        sweep["grid"] = {axis: draw(st.lists(ODD_SCALARS, max_size=draw(st.sampled_from([0, 1, 3, 40])))) for axis in axes}
    if draw(st.booleans()):
        # Valid values on big axes: up to 40^3 = 64,000 trials, each of them fine on its own.
        big = {"seed": list(range(40)), "train.lr": [0.001 * (i + 1) for i in range(40)], "epochs": list(range(1, 41)),
               "eval.test_subset": list(range(1, 41))}
        sweep["grid"] = {axis: big[axis] for axis in draw(st.lists(st.sampled_from(list(big)), min_size=1, max_size=3, unique=True))}
    if draw(st.booleans()):
        # An alias bomb: safe_dump writes each shared list once and refers to it (&id001 ... *id001).
        bomb: Any = draw(ODD_SCALARS)
        for _ in range(draw(st.integers(1, 7))):
            bomb = [bomb] * 10
        set_path(sweep, draw(st.sampled_from([("grid", "train.lr"), *FIELDS])), bomb)
    if draw(st.booleans()):
        sweep["compare"] = draw(st.lists(
            st.fixed_dictionaries({"kind": st.one_of(st.sampled_from(COMPARISON_KINDS), ODD_STRINGS)},
                                  optional={key: ODD_VALUES for key in ("trials", "pairs", "models", "epochs", "layers",
                                                                        "probes", "measures")}),
            max_size=3,
        ))
    return draw(st.one_of(st.just(sweep), ODD_VALUES))  # now and then not even a mapping


@st.composite
def huge_sweeps(draw: st.DrawFn) -> dict[str, Any]:
    """A valid sweep file made huge: valid values on big grid axes (1,600 to 10^6 trials), or an alias bomb."""
    sweep = draw(valid_sweeps())
    if draw(st.booleans()):
        size = draw(st.sampled_from([40, 100]))
        big = {"seed": list(range(size)), "train.lr": [0.001 * (i + 1) for i in range(size)],
               "epochs": list(range(1, size + 1)), "eval.test_subset": list(range(1, size + 1))}
        sweep["grid"] = {axis: big[axis] for axis in draw(st.lists(st.sampled_from(list(big)), min_size=2, max_size=3, unique=True))}
    else:
        bomb: Any = [0.1]
        for _ in range(draw(st.integers(5, 7))):  # 10^5 to 10^7 values once expanded
            bomb = [bomb] * 10
        sweep["grid"] = {"train.lr": bomb}
    return sweep


def as_yaml(sweep: Any) -> str:
    return yaml.safe_dump(sweep, allow_unicode=True, sort_keys=False)


NOT_YAML = st.one_of(
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=200),
    st.text(string.printable, max_size=200),
    st.sampled_from(["train: {eps: [0.1\n", "\t- a", "a: b: c", "&a [*a]", "!!python/object/apply:os.system ['true']",
                     "grid: &g {seed: [0, *g]}", "--- a\n--- b\n", "%YAML 9.9\n---\na: 1"]),
)


# -- the property --------------------------------------------------------------------------------------------------------
def peak_memory() -> int:
    """This process's peak resident memory since the last `reset_peak_memory`, in bytes (Linux's VmHWM)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def reset_peak_memory() -> int:
    """Start a new peak at the current resident memory (what tracemalloc would measure, without slowing torch's
    Python code tenfold); returns it."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset the peak resident set size (Linux >= 4.0)
    return peak_memory()


@functools.cache
def warm() -> None:
    """The one-time costs (torch's meta registrations, FLOP counting of the valid family's models), paid once
    and untimed: the bound is on what a sweep file costs, not on the first import."""
    for depth, width in ((10, 1), (10, 2), (16, 1), (16, 2)):
        text = f"name: warm\nmodel: {{depth: {depth}, width: {width}}}\ngrid: {{method: [standard, pgd, trades, fast]}}\n"
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "warm.yaml").write_text(text)
            result = runner.invoke(app, ["sweep", str(Path(folder) / "warm.yaml"), "--dry-run", "--results", folder])
            assert result.exit_code == 0, result.output


def dry_run(text: str) -> tuple[int, str, str]:
    """``rayrs sweep FILE --dry-run --results R`` on ``text``; asserts the property, returns (exit, stdout, stderr)."""
    warm()
    with tempfile.TemporaryDirectory(prefix="rayrs-property-") as folder:
        path = Path(folder) / "sweep.yaml"
        path.write_text(text, encoding="utf-8")
        results = Path(folder) / "results"
        before = reset_peak_memory()
        started = time.perf_counter()
        result = runner.invoke(app, ["sweep", str(path), "--dry-run", "--results", str(results)], terminal_width=200)
        seconds = time.perf_counter() - started
        grown = peak_memory() - before
        written = sorted(p.name for p in Path(folder).iterdir())
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"a bug, not a user's mistake: {result.exception!r} for\n{text}"
    )
    assert result.exit_code in (0, 1), (result.exit_code, result.output)
    if result.exit_code == 1:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{result.stderr!r} for\n{text}"
    assert "Traceback" not in result.output
    assert written == ["sweep.yaml"], f"a dry run wrote {written}"
    assert seconds < SECONDS, f"{seconds:.1f} s for\n{text}"
    assert grown < PEAK_BYTES, f"{grown / 2**20:.0f} MiB for\n{text}"
    return result.exit_code, result.stdout, result.stderr


@settings(SETTINGS, max_examples=12)
@given(valid_sweeps())
def test_a_valid_sweep_file_gets_a_plan(sweep):
    code, out, err = dry_run(as_yaml(sweep))
    assert code == 0, err
    assert "GPU-hours" in out and "comparison jobs" in out


@settings(SETTINGS, max_examples=40)
@given(nearly_valid_sweeps())
def test_a_nearly_valid_sweep_file_gets_a_plan_or_one_line(sweep):
    dry_run(as_yaml(sweep))


@settings(SETTINGS, max_examples=40)
@given(hostile_sweeps())
def test_a_hostile_sweep_file_gets_a_plan_or_one_line(sweep):
    dry_run(as_yaml(sweep))


@settings(SETTINGS, max_examples=6)
@given(huge_sweeps())
def test_a_huge_sweep_file_is_refused_within_the_bounds(sweep):
    code, _, err = dry_run(as_yaml(sweep))
    assert code == 1 and ("max_trials" in err or "YAML aliases expand" in err), err


@settings(SETTINGS, max_examples=20)
@given(NOT_YAML)
def test_text_that_is_barely_yaml_gets_a_plan_or_one_line(text):
    dry_run(text)
