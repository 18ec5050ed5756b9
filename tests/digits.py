"""Small digits trials shared by the tests: a spec builder, a checkpoint loader, trials trained in parallel."""

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import torch

from rayrs.checkpoint import load_weights
from rayrs.config import TrialConfig, TrialSpec
from rayrs.train import build_for, load_trial_data


def digits_spec(name: str, **sections) -> TrialSpec:
    """A digits trial (WRN-10-2, 8 epochs of standard training) with ``sections`` overriding its settings."""
    config = {
        "data": {"dataset": "digits"},
        "model": {"arch": "wrn", "depth": 10, "width": 2},
        "train": {"method": "standard", "eps": 0, "epochs": 8, "batch_size": 64, "lr": 0.05, "attack": {"steps": 5}},
        "eval": {"eps": 0.1, "attack": {"steps": 10}, "train_subset": 256, "test_subset": 450},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return TrialSpec(name=name, experiment="test", config=TrialConfig.model_validate(config), axes={})


def load_trained(storage, spec) -> torch.nn.Module:
    """The final checkpoint of ``spec`` as an eval-mode model on the CPU."""
    data = load_trial_data(spec.config, "cpu")
    model = build_for(spec.config, data, "cpu")
    model.load_state_dict(load_weights(storage, spec.name, spec.config.train.epochs))
    return model.eval()


def _train_one(spec: TrialSpec, root: str, threads: int) -> None:
    from rayrs.storage import Storage
    from rayrs.train import train_trial

    torch.set_num_threads(threads)
    train_trial(spec, Storage(root), "cpu")


def train_in_processes(specs: list[TrialSpec], root: str, processes: int = 2, threads: int = 1) -> None:
    """Train ``specs`` under the results folder ``root``, ``processes`` trials at a time, each in its own fresh
    (spawned) process on ``threads`` CPU threads. A trial's bits depend on its spec and its thread count only
    (its initialisation is seeded by the spec's seed, `rayrs.sources`; its epochs' draws by
    `rayrs.train.epoch_generator`), so they are those of training the specs one after another on ``threads``
    threads; independent one-thread trials on 2 cores take about half the time this way."""
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done in [pool.submit(_train_one, spec, root, threads) for spec in specs]:
            done.result()
