"""Ctrl-C while ``compare`` plans its comparison (reads its configuration, its data, its
runs) ends like Ctrl-C later on: the way on ("run the same command again") and status
130, not click's bare ``Aborted!`` with status 1. The configuration file is a named pipe,
so the real process is held, for certain, inside the planning when the real SIGINT
arrives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def test_ctrl_c_while_compare_reads_its_configuration_says_the_way_on(tmp_path):
    fifo = tmp_path / "compare.toml"
    os.mkfifo(fifo)
    process = subprocess.Popen(
        [sys.executable, "-m", "dynamtl.cli", "compare", "--config", str(fifo), "--out", str(tmp_path / "out")],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with open(fifo, "w"):  # returns once compare has opened the file: it is reading its configuration
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Aborted!" not in err and "Traceback" not in err
    assert "interrupted: run the same command again to go on" in err
