"""Storage writes atomically and checkpoints round-trip through safetensors + JSON, never pickle."""

import json

import pytest
import torch

from rayrs import checkpoint
from rayrs import storage as layout
from rayrs.errors import UserError
from rayrs.storage import Storage


def test_a_write_leaves_the_whole_file_and_no_temporary(tmp_path):
    storage = Storage(tmp_path / "results")
    storage.write_bytes("a/b/c.bin", b"x" * 1000)
    storage.write_bytes("a/b/c.bin", b"new")  # replaced in one rename
    assert storage.read_bytes("a/b/c.bin") == b"new"
    assert [p.name for p in (tmp_path / "results" / "a" / "b").iterdir()] == ["c.bin"]


def test_listings_hide_files_still_being_written(tmp_path):
    storage = Storage(tmp_path)
    storage.write_bytes("similarity/cross_layer/done.parquet", b"1")
    (tmp_path / "similarity" / "cross_layer" / "half.parquet.tmp-1234abcd").write_bytes(b"partial")
    assert storage.list_files("similarity", ".parquet") == ["similarity/cross_layer/done.parquet"]


def test_bad_results_locations_are_refused_in_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"results location .*file is a file, not a folder"):
        Storage(tmp_path / "file")
    with pytest.raises(UserError, match=r"unknown storage scheme 'ftp://'; use a local folder or one of file://, s3://"):
        Storage("ftp://host/results")


def test_an_object_store_gets_each_file_in_one_put_and_reads_it_back(monkeypatch):
    # pyarrow's in-memory filesystem stands in for S3: the same code path (no rename, one output stream).
    import pyarrow as pa
    import pyarrow.fs as pafs

    bucket = pafs._MockFileSystem()
    monkeypatch.setattr(layout, "_KNOWN_SCHEMES", (*layout._KNOWN_SCHEMES, "mock"))
    monkeypatch.setattr(layout, "_filesystem_from_uri", lambda uri: (bucket, uri.split("://", 1)[1].lstrip("/")))
    storage = Storage("mock:///bucket/results").child("exp")
    assert not storage.is_local and storage.root == "mock:///bucket/results/exp"

    table = pa.table({"value": [0.5, 0.25]})
    storage.write_table(layout.similarity("cross_layer", "job1"), table)
    storage.write_json(layout.trial_spec("t"), {"fingerprint": "abc"})

    assert storage.list_files("") == ["similarity/cross_layer/job1.parquet", "trials/t/trial.json"]
    objects = [i.path for i in bucket.get_file_info(pafs.FileSelector("", recursive=True)) if i.type == pafs.FileType.File]
    assert sorted(objects) == ["bucket/results/exp/similarity/cross_layer/job1.parquet", "bucket/results/exp/trials/t/trial.json"]
    assert storage.read_table(layout.similarity("cross_layer", "job1")).equals(table)
    assert storage.read_json(layout.trial_spec("t")) == {"fingerprint": "abc"}
    assert storage.exists(layout.trial_spec("t")) and not storage.exists(layout.trial_spec("u"))
    with pytest.raises(ValueError, match="is not a local folder"):
        storage.local_path()


def test_a_storage_survives_pickling_by_its_root(tmp_path):
    import pickle

    storage = Storage(tmp_path)
    assert pickle.loads(pickle.dumps(storage)).root == storage.root


def test_layout_paths_are_the_documented_ones():
    assert layout.weights("eps0", 3) == "trials/eps0/epoch_0003/model.safetensors"
    assert layout.epoch_meta("eps0", 12) == "trials/eps0/epoch_0012/meta.json"
    assert layout.similarity("cross_layer", "abc") == "similarity/cross_layer/abc.parquet"


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_a_checkpoint_round_trips_weights_optimizer_state_and_metadata(tmp_path):
    storage = Storage(tmp_path)
    model, optimizer = _model_and_optimizer()
    checkpoint.save_epoch(storage, "t", 1, model, optimizer, {"metrics": {"test_clean_acc": 0.5}})
    restored = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    fresh_optimizer = torch.optim.SGD(restored.parameters(), lr=0.1, momentum=0.9)
    meta = checkpoint.restore(storage, "t", 1, restored, fresh_optimizer)
    assert meta["metrics"] == {"test_clean_acc": 0.5} and meta["epoch"] == 1
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, restored.state_dict()[name]), name
    momentum = [fresh_optimizer.state[p]["momentum_buffer"] for p in restored.parameters()]
    assert all(torch.equal(m, optimizer.state[p]["momentum_buffer"]) for m, p in zip(momentum, model.parameters()))
    assert checkpoint.completed_epochs(storage, "t") == [1]


def test_the_same_checkpoint_is_written_as_the_same_bytes(tmp_path):
    # Two runs that train the same bits must write the same files (a resumed run is compared with an uninterrupted
    # one byte for byte). safetensors writes its metadata from a hash map whose order changes from one map to
    # the next, so with two metadata keys 40 writes came out in two byte orders (p(all 40 alike) ~ 2^-39).
    model, optimizer = _model_and_optimizer()
    written = set()
    for attempt in range(40):
        storage = Storage(tmp_path / str(attempt))
        checkpoint.save_epoch(storage, "t", 1, model, optimizer, {})
        written.add((storage.read_bytes(layout.weights("t", 1)), storage.read_bytes(layout.optimizer_state("t", 1))))
    assert len(written) == 1


def test_an_epoch_without_its_meta_json_does_not_exist(tmp_path):
    storage = Storage(tmp_path)
    model, optimizer = _model_and_optimizer()
    checkpoint.save_epoch(storage, "t", 1, model, optimizer, {})
    checkpoint.save_epoch(storage, "t", 2, model, optimizer, {})
    (tmp_path / layout.epoch_meta("t", 2)).unlink()  # a crash between the weights and the commit marker
    assert checkpoint.completed_epochs(storage, "t") == [1]


def test_a_truncated_checkpoint_names_its_path_and_the_way_out(tmp_path):
    storage = Storage(tmp_path)
    model, optimizer = _model_and_optimizer()
    checkpoint.save_epoch(storage, "eps0", 1, model, optimizer, {})
    path = tmp_path / layout.weights("eps0", 1)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(UserError) as caught:
        checkpoint.load_weights(storage, "eps0", 1)
    assert str(path) in str(caught.value) and "--redo eps0" in str(caught.value)


def test_checkpoint_files_are_safetensors_and_json_only(tmp_path):
    storage = Storage(tmp_path)
    model, optimizer = _model_and_optimizer()
    checkpoint.save_epoch(storage, "t", 1, model, optimizer, {"metrics": {}})
    folder = tmp_path / layout.epoch_dir("t", 1)
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.safetensors", "optimizer.safetensors"]
    json.loads((folder / "meta.json").read_text())
    header_length = int.from_bytes((folder / "model.safetensors").read_bytes()[:8], "little")
    json.loads((folder / "model.safetensors").read_bytes()[8 : 8 + header_length])  # safetensors' JSON header
