"""The ways on that run-folder messages give lead somewhere: a folder where
``checkpoints/last.pt`` should be, or a file in place of ``checkpoints/``, is named with the
way on (not taken for a run that "has not saved one yet"); a damaged ``previous.pt`` asked
for leads to an intact ``last.pt``; a folder in the way of
``checkpoints/checksums.json`` is named as such (not "missing", since ``--trust-checkpoint``
could not record the checksum there); no "previous version kept" for ``config.json`` or a log
when that previous version is a folder; a changed thread count points at ``config.json``
(resume takes it from there), not at ``OMP_NUM_THREADS``. Real runs, real folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DYNAMTL = [sys.executable, "-m", "dynamtl.cli"]


def dynamtl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*DYNAMTL, *args], env=ENV, capture_output=True, text=True, timeout=600)


def unfinished_run(tmp_path):
    run = tmp_path / "run"
    trained = dynamtl("train", "--benchmark", "drift", "--limit", "200", "--epochs", "2", "--threads", "1", "--quiet",
                      "--out", str(run))
    assert trained.returncode == 0, trained.stderr
    (run / "results.json").unlink()  # an unfinished run: resume rebuilds it from its checkpoint
    return run


def test_a_folder_in_place_of_checksums_json_is_named_and_the_way_on_works(tmp_path):
    run = unfinished_run(tmp_path)
    checksums = run / "checkpoints" / "checksums.json"
    checksums.unlink()
    checksums.mkdir()
    refused = dynamtl("resume", str(run), "--quiet")
    assert refused.returncode == 1, refused.stderr
    assert "Traceback" not in refused.stderr
    assert f"{checksums} is not a file (a folder or another non-file is in its place)" in refused.stderr
    assert "is missing" not in refused.stderr
    assert f"Move {checksums} out of the way" in refused.stderr
    trust = f"`{' '.join(DYNAMTL)} resume {run} --trust-checkpoint`"
    assert trust in refused.stderr
    assert checksums.is_dir()  # left as it is
    checksums.rename(tmp_path / "moved")
    resumed = dynamtl("resume", str(run), "--quiet", "--trust-checkpoint")
    assert resumed.returncode == 0, resumed.stderr
    assert (run / "results.json").is_file() and checksums.is_file()


def test_a_folder_in_place_of_config_json_or_steps_jsonl_is_not_called_its_previous_version(tmp_path):
    run = unfinished_run(tmp_path)
    for name in ("config.json", "steps.jsonl"):
        path = run / name
        path.rename(tmp_path / name)
        path.mkdir()
        refused = dynamtl("resume", str(run), "--quiet")
        assert refused.returncode == 1, refused.stderr
        assert f"cannot write {name} in {run}: a folder is in the way of the file" in refused.stderr
        assert "previous version is kept" not in refused.stderr, refused.stderr
        assert f"move {path} out of the way" in refused.stderr
        path.rmdir()
        (tmp_path / name).rename(path)
    resumed = dynamtl("resume", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert (run / "results.json").is_file()


def test_another_thread_count_in_config_json_is_refused_pointing_at_config_json_not_omp_num_threads(tmp_path):
    run = unfinished_run(tmp_path)
    config = run / "config.json"
    recorded = json.loads(config.read_text())
    config.write_text(json.dumps({**recorded, "threads": 2}))
    refused = dynamtl("resume", str(run), "--quiet")
    assert refused.returncode == 1, refused.stderr
    assert "threads: 1 before, 2 now" in refused.stderr
    assert "which resume takes from config.json, not from OMP_NUM_THREADS" in refused.stderr, refused.stderr
    config.write_text(json.dumps(recorded))  # put back as the message says
    resumed = dynamtl("resume", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stderr


def test_an_environment_edited_in_config_json_is_named_and_put_right_on_resume(tmp_path):
    run = unfinished_run(tmp_path)
    config = run / "config.json"
    recorded = json.loads(config.read_text())
    config.write_text(json.dumps({**recorded, "environment": {**recorded["environment"], "torch": "9.9"}}))
    resumed = dynamtl("resume", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{config}: its 'environment' block" in resumed.stderr and "'9.9'" in resumed.stderr, resumed.stderr
    assert json.loads(config.read_text())["environment"] == recorded["environment"]


def test_a_folder_in_place_of_last_pt_is_named_and_the_way_on_works(tmp_path):
    run = unfinished_run(tmp_path)
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
    run = unfinished_run(tmp_path)
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
    run = unfinished_run(tmp_path)
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
