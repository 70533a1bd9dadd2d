import json
import os
import subprocess
import sys

import pytest

from export.errors import ModelVersionError, RepositoryError, VersionExistsError
from export.repository import STAGING_PREFIX, ModelRepository


def fill_with(text):
    def fill(staging):
        (staging / "model.onnx").write_text(text)
        return {"note": text}
    return fill


def test_versions_number_from_one_and_the_newest_is_loaded(tmp_path):
    repo = ModelRepository(tmp_path)
    assert repo.versions("m") == [] and repo.next_version("m") == 1
    for expected in (1, 2, 3):
        published = repo.publish("m", repo.next_version("m"), fill_with(f"v{expected}"))
        assert published.version == expected and (tmp_path / "m" / str(expected) / "model.onnx").exists()
    assert repo.versions("m") == [1, 2, 3]
    assert repo.load("m").version == 3 and repo.load("m").metadata["note"] == "v3"
    assert repo.load("m", 1).metadata["note"] == "v1"
    repo.publish("m", 7, fill_with("v7"))
    assert repo.next_version("m") == 8


def test_an_existing_version_is_refused_and_left_untouched(tmp_path):
    repo = ModelRepository(tmp_path)
    repo.publish("m", 1, fill_with("first"))
    with pytest.raises(VersionExistsError, match="m version 1 already exists"):
        repo.publish("m", 1, fill_with("second"))
    assert (tmp_path / "m" / "1" / "model.onnx").read_text() == "first"


def test_a_failure_while_writing_leaves_no_version_and_no_staging(tmp_path):
    repo = ModelRepository(tmp_path)

    def fails(staging):
        (staging / "model.onnx").write_text("half")
        raise RuntimeError("parity check failed")

    with pytest.raises(RuntimeError):
        repo.publish("m", 1, fails)
    assert repo.versions("m") == [] and os.listdir(tmp_path / "m") == []


def test_metadata_records_file_hashes_and_verify_catches_a_corrupt_file(tmp_path):
    repo = ModelRepository(tmp_path)
    published = repo.publish("m", 1, fill_with("weights"))
    assert set(published.metadata["files"]) == {"model.onnx"}
    repo.load("m", 1, verify=True)
    (published.path / "model.onnx").write_text("weighs")
    with pytest.raises(ModelVersionError, match="model.onnx is corrupt"):
        repo.load("m", 1, verify=True)
    (published.path / "model.onnx").unlink()
    with pytest.raises(ModelVersionError, match="model.onnx is missing"):
        published.verify()


def test_staging_of_a_dead_export_is_removed_but_a_live_one_is_kept(tmp_path):
    repo = ModelRepository(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_dir = tmp_path / "m" / f"{STAGING_PREFIX}1-{dead.stdout.strip()}-abc"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live_dir = tmp_path / "m" / f"{STAGING_PREFIX}2-{live.pid}-abc"
        for folder in (dead_dir, live_dir):
            folder.mkdir(parents=True)
            (folder / "model.onnx").write_text("partial")
        assert repo.remove_stale_staging("m") == [dead_dir]
        assert live_dir.exists() and not dead_dir.exists()
        assert repo.versions("m") == []  # staging folders are never versions
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize("where", ["file", "proc"])
def test_a_repository_that_cannot_be_written_is_a_clear_error(tmp_path, where):
    if where == "file":
        (tmp_path / "taken").write_text("a file, not a folder")
        root = tmp_path / "taken" / "repo"
    else:
        root = "/proc/scan-repo"  # not writable, even for root
    with pytest.raises(RepositoryError, match="is not writable"):
        ModelRepository(root).ensure_writable("m")


@pytest.mark.parametrize("name", ["", "..", ".hidden", "a/b"])
def test_model_names_must_be_plain_folder_names(tmp_path, name):
    with pytest.raises(RepositoryError, match="not a plain folder name"):
        ModelRepository(tmp_path).versions(name)


def test_loading_what_is_not_there_names_what_is(tmp_path):
    repo = ModelRepository(tmp_path)
    with pytest.raises(ModelVersionError, match="no published version of model 'm'"):
        repo.load("m")
    repo.publish("m", 2, fill_with("x"))
    with pytest.raises(ModelVersionError, match=r"has no version 5 .*\(it has \[2\]\)"):
        repo.load("m", 5)
    for bad in (0, 2**63):
        with pytest.raises(RepositoryError, match=r"version must be within 1\.\.9223372036854775807"):
            repo.publish("m", bad, fill_with("x"))


def test_folders_that_only_look_like_versions_are_not_versions(tmp_path):
    repo = ModelRepository(tmp_path)
    repo.publish("m", 1, fill_with("x"))
    for name in ("²", "٣", "007", str(2**63), "10" * 20):  # isdigit() accepts them all; none is a version
        (tmp_path / "m" / name).mkdir()
    assert repo.versions("m") == [1] and repo.next_version("m") == 2
    assert repo.publish("m", repo.next_version("m"), fill_with("y")).version == 2


def test_a_version_without_recorded_hashes_fails_verification(tmp_path):
    repo = ModelRepository(tmp_path)
    version = repo.publish("m", 1, fill_with("x"))
    metadata = json.loads((version.path / "metadata.json").read_text())
    del metadata["files"]
    (version.path / "metadata.json").write_text(json.dumps(metadata))
    (version.path / "model.onnx").write_text("tampered")
    repo.load("m", 1)  # listing it is fine
    with pytest.raises(ModelVersionError, match="records no SHA-256 of model.onnx"):
        repo.load("m", 1, verify=True)
