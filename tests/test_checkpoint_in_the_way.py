"""A folder where ``checkpoints/last.pt`` should be is named as such, with the way on
(move it, then ``resume`` continues from ``previous.pt``), not taken for a run that "has
not saved one yet". Real runs, real folders."""

from __future__ import annotations

import os
import subprocess
import sys

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DYNAMTL = [sys.executable, "-m", "dynamtl.cli"]


def dynamtl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*DYNAMTL, *args], env=ENV, capture_output=True, text=True, timeout=600)


def test_a_folder_in_place_of_last_pt_is_named_and_the_way_on_works(tmp_path):
    run = tmp_path / "run"
    trained = dynamtl("train", "--benchmark", "drift", "--limit", "200", "--epochs", "2", "--threads", "1", "--quiet",
                      "--out", str(run))
    assert trained.returncode == 0, trained.stderr
    (run / "results.json").unlink()  # an unfinished run: resume rebuilds it from its checkpoint
    last = run / "checkpoints" / "last.pt"
    last.unlink()
    last.mkdir()
    refused = dynamtl("resume", str(run), "--quiet")
    assert refused.returncode == 1, refused.stderr
    assert "Traceback" not in refused.stderr
    assert f"{last} is not a file" in refused.stderr, refused.stderr
    assert "has not saved one yet" not in refused.stderr
    assert f"`{' '.join(DYNAMTL)} resume {run}` continues from {last.with_name('previous.pt')}" in refused.stderr
    assert last.is_dir()  # left as it is
    last.rename(tmp_path / "moved")
    resumed = dynamtl("resume", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert (run / "results.json").is_file() and last.is_file()


def test_a_damaged_previous_pt_asked_for_leads_to_the_intact_last_pt(tmp_path):
    run = tmp_path / "run"
    trained = dynamtl("train", "--benchmark", "drift", "--limit", "200", "--epochs", "2", "--threads", "1", "--quiet",
                      "--out", str(run))
    assert trained.returncode == 0, trained.stderr
    (run / "results.json").unlink()  # an unfinished run: resume rebuilds it from its checkpoint
    previous = run / "checkpoints" / "previous.pt"
    previous.write_bytes(previous.read_bytes()[:1000])
    refused = dynamtl("resume", str(run), "--checkpoint", "previous", "--quiet")
    assert refused.returncode == 1, refused.stderr
    assert f"the checkpoint {previous} is damaged" in refused.stderr
    assert "No intact checkpoint is left" not in refused.stderr, refused.stderr
    way_on = f"resume from it with `{' '.join(DYNAMTL)} resume {run}`"
    assert f"The last checkpoint {previous.with_name('last.pt')} is intact: {way_on}" in refused.stderr
    resumed = dynamtl("resume", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert (run / "results.json").is_file()


def test_a_file_in_place_of_the_checkpoints_folder_is_named_and_the_logs_are_kept(tmp_path):
    run = tmp_path / "run"
    trained = dynamtl("train", "--benchmark", "drift", "--limit", "200", "--epochs", "2", "--threads", "1", "--quiet",
                      "--out", str(run))
    assert trained.returncode == 0, trained.stderr
    (run / "results.json").unlink()  # an unfinished run: resume rebuilds it from its checkpoint
    steps = (run / "steps.jsonl").read_bytes()
    checkpoints = run / "checkpoints"
    checkpoints.rename(tmp_path / "away")
    checkpoints.write_text("not a folder")
    refused = dynamtl("resume", str(run), "--quiet")
    assert refused.returncode == 1, refused.stderr
    assert f"{checkpoints} is not a folder (a file is in its place): move it out of the way" in refused.stderr
    assert "starting the run over" not in refused.stderr
    assert (run / "steps.jsonl").read_bytes() == steps  # not rebuilt to step 0
    checkpoints.unlink()
    (tmp_path / "away").rename(checkpoints)
    resumed = dynamtl("resume", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert (run / "results.json").is_file()
