"""Model entries: the networks of a sweep file's ``models:`` list, which rayrs did not train, made ready to be
compared exactly as trained trials are.

An entry (`rayrs.config.ModelEntry`) is described as a trial would be (`rayrs.config.ModelEntrySpec`: its
``config`` gives the probe dataset, the threat model and eps of its adversarial probes, and its last weights
epoch as ``train.epochs``), so every planner of `rayrs.similarity.plan` runs unchanged over trials and entries;
only the run side picks the model source, `rayrs.sources.WeightsFileModel` for an entry (`model_source`).

Its fingerprint (``digest``) is a SHA-256 over its settings and its weights files' bytes: a changed file gives
new comparison job ids and a freshly crafted adversarial probe, never a stale match. Each file's SHA-256 travels
with the entry (``weights_sha256``) to the Ray task, which hashes the bytes it loads and refuses a file replaced
after planning (one line naming it) rather than compute, under the planned job ids, with other weights. At the door
(`model_specs`, before anything is written) every weights file is read as `rayrs.weights` reads it (a file that
needs arbitrary unpickling is refused unread) and loaded into the architecture (mismatched names are named), so
a sweep never starts on weights it cannot use. The sweep records its entries in ``models.json`` (settings,
absolute paths, each file's SHA-256, the digest; `write_models`): `rayrs status`, `rayrs analyze` and
`analysis.load` read them from there, without the weights files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from rayrs import storage as layout
from rayrs.config import Experiment, ModelEntrySpec, TrialSpec, expand, model_entries
from rayrs.errors import UserError
from rayrs.sources import TestImages, WeightsFileModel
from rayrs.storage import DamagedFile, Storage, way_out
from rayrs.weights import load_weights_into, read_weights_hashed


def entry_digest(spec: ModelEntrySpec, files: Mapping[int, str]) -> str:
    """A model entry's fingerprint: SHA-256 over its configuration, classifier width and each epoch's file hash
    (``files``: epoch -> SHA-256), 12 hex digits like a trial's. The paths themselves are left out: moving the
    files keeps the results, as moving a dataset does."""
    canonical = json.dumps({"config": spec.config.fingerprint(), "num_classes": spec.num_classes,
                            "weights": {str(epoch): files[epoch] for epoch in sorted(files)}}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def model_specs(experiment: Experiment, source: str | Path | None = None) -> list[ModelEntrySpec]:
    """The experiment's model entries with their digests, every weights file checked (``source``: the sweep
    file, named first in an error when given).

    Raises:
        UserError: one line naming the entry and the file: a missing file, one that needs arbitrary
            unpickling (refused unread), one that holds no state dict, or one that does not fit the architecture.
    """
    specs = []
    for index, spec in enumerate(model_entries(experiment, source or "sweep")):
        where = f"{f'{source}: ' if source else ''}models.{index} ({spec.name})"
        model = None
        files = {}
        for epoch, path in sorted(spec.weights.items()):
            if not Path(path).is_file():
                raise UserError(f"{where}: weights file {path} does not exist; give the path of a .safetensors or "
                                "PyTorch state dict file (relative paths start at the working directory)")
            try:
                # Refuses a file that needs arbitrary unpickling before running any of it; one read gives both
                # the weights checked here and the hash the task will check its own read against.
                state, files[epoch] = read_weights_hashed(path)
                if model is None:  # built once, on the CPU, for every epoch's file
                    model = WeightsFileModel(**spec.source_settings()).build()
                load_weights_into(model, state, path)
            except UserError as error:
                raise UserError(f"{where}: {error}") from None
            del state
        specs.append(spec.model_copy(update={"digest": entry_digest(spec, files), "weights_sha256": files}))
    return specs


def write_models(storage: Storage, specs: list[ModelEntrySpec]) -> None:
    """Record the entries in ``models.json``: each one's spec, its files' SHA-256 (``weights_sha256``, as
    planned: the files are not read again) and its digest."""
    storage.write_json(layout.MODELS, [spec.model_dump(mode="json") for spec in specs])


def stored_models(storage: Storage, experiment: Experiment) -> list[ModelEntrySpec]:
    """The entries of ``experiment`` as the sweep recorded them in ``models.json`` (none without ``models:``).

    Raises:
        DamagedFile: a missing or unreadable ``models.json``, or one whose entries are not the sweep's.
    """
    if not experiment.models:
        return []
    path = storage.full_path(layout.MODELS)
    if not storage.exists(layout.MODELS):
        raise DamagedFile(f"{path} is missing: the sweep's model entries are unknown; {way_out(layout.MODELS)}")
    try:
        specs = [ModelEntrySpec.model_validate(item) for item in storage.read_json(layout.MODELS)]
    except (ValidationError, TypeError) as error:
        raise DamagedFile(f"{path} is not a list of model entries ({' '.join(str(error).split())[:160]}); "
                          f"{way_out(layout.MODELS)}") from None
    names = [entry.name for entry in experiment.models]
    if [spec.name for spec in specs] != names or any(spec.digest is None for spec in specs):
        raise DamagedFile(f"{path} does not hold the models of {layout.SWEEP_CONFIG} ({', '.join(names)}); "
                          f"{way_out(layout.MODELS)}")
    return specs


def stored_units(storage: Storage, experiment: Experiment, source: str | Path = "sweep") -> list[TrialSpec]:
    """Everything a stored sweep compares: its trials (`rayrs.config.expand`) and its recorded model entries."""
    return [*expand(experiment, source=source), *stored_models(storage, experiment)]


def model_source(spec: ModelEntrySpec, data: TestImages, device: torch.device | str) -> WeightsFileModel:
    """The entry as a model source on ``device``, fitted to ``data`` (the probe dataset: its classes, channels)."""
    return WeightsFileModel(**spec.source_settings(data.num_classes, device))


def describe_models(specs: list[ModelEntrySpec]) -> list[dict[str, Any]]:
    """One row per entry for people (``--dry-run``, ``status``): name, arch, method, threat model, eps, epochs."""
    return [{"model": spec.name, "arch": spec.config.model.arch, "method": spec.config.train.method,
             "threat_model": spec.config.train.threat_model, "eps": spec.config.train.eps,
             "epochs": ", ".join(map(str, spec.kept_epochs))} for spec in specs]


__all__ = ["describe_models", "entry_digest", "model_source", "model_specs", "stored_models",
           "stored_units", "write_models"]
