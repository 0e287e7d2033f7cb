"""QM9: 130,831 small organic molecules, their Coulomb-matrix eigenvalues (computed once and
cached) and their 12 quantum-chemical properties, read from the CSV files of ``qm9pack``."""

from __future__ import annotations

import csv
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from dynamtl.data._files import load_or_build, require_files
from dynamtl.data._progress import bar, progress
from dynamtl.data._tabular import file_digests, fill_from_package, open_text

PIP_SOURCE = "--no-deps qm9pack==1.0.3"
PACKAGE = "qm9pack"
CACHE_VERSION = 1
MAX_ATOMS = 29
BOHR = 0.529177210903  # Å (CODATA 2018)
CHARGES = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
TARGETS: dict[str, tuple[str, str]] = {
    "mu": ("Dipole_debye", "D"),
    "alpha": ("Polarizability_bohr3", "a₀³"),
    "homo": ("HOMO_au", "Ha"),
    "lumo": ("LUMO_au", "Ha"),
    "gap": ("HOMO_LUMO_gap_au", "Ha"),
    "r2": ("R2_bohr2", "a₀²"),
    "zpve": ("ZPVE_au", "Ha"),
    "U0": ("InternalEnergy_0K_au", "Ha"),
    "U": ("InternalEnergy_298K_au", "Ha"),
    "H": ("Enthalphy_298K_au", "Ha"),
    "G": ("GibbsFreeEnergy_298K_au", "Ha"),
    "cv": ("Heatcapacity_Cv_cal_mol_K", "cal/(mol K)"),
}
ATOM_COLUMNS = ("N_atoms", "Elements", "XYZ_Ang")


def coulomb_eigenvalues(charges: Tensor, positions: Tensor) -> Tensor:
    r"""The eigenvalues of the Coulomb matrices of molecules with the same number of atoms,
    sorted by decreasing magnitude (Rupp et al., *Phys. Rev. Lett.* 108, 058301, 2012).

    .. math:: C_{ii} = \tfrac12 Z_i^{2.4}, \qquad C_{ij} = \frac{Z_i Z_j}{\lVert R_i - R_j \rVert}

    with distances in Bohr (atomic units, as in the paper).

    Args:
        charges: nuclear charges Z, ``[B, A]``.
        positions: atom positions in Ångström, ``[B, A, 3]``.

    Returns:
        ``float64 [B, A]``.

    >>> h2 = coulomb_eigenvalues(torch.tensor([[1, 1]]), torch.tensor([[[0.0, 0, 0], [BOHR, 0, 0]]]))
    >>> h2  # [[0.5, 1], [1, 0.5]]: 0.5 ± 1
    tensor([[ 1.5000, -0.5000]], dtype=torch.float64)
    """
    if charges.dim() != 2 or positions.shape != (*charges.shape, 3):
        raise ValueError(
            f"coulomb_eigenvalues takes charges [B, A] and positions [B, A, 3], got {list(charges.shape)} "
            f"and {list(positions.shape)}"
        )
    z = charges.double()
    distances = torch.cdist(positions.double() / BOHR, positions.double() / BOHR)
    eye = torch.eye(z.shape[1], dtype=torch.bool)
    off_diagonal = z.unsqueeze(-1) * z.unsqueeze(-2) / distances.masked_fill(eye, 1.0)
    matrix = torch.where(eye, 0.5 * z.unsqueeze(-1) ** 2.4, off_diagonal)
    eigenvalues = torch.linalg.eigvalsh(matrix)
    return eigenvalues.gather(1, eigenvalues.abs().argsort(dim=1, descending=True))


class QM9Molecules:
    """QM9 (Ramakrishnan, Dral, Rupp & von Lilienfeld, *Quantum chemistry structures and
    properties of 134 kilo molecules*, Scientific Data 1, 140022, 2014; CC BY 4.0): the
    130,831 molecules of up to 9 heavy atoms (C, N, O, F) that pass the authors'
    consistency check, with DFT (B3LYP/6-31G(2df,p)) geometries and properties.

    The files are the three CSV files of the pip package ``qm9pack==1.0.3`` (MIT; one row
    per molecule, 43,610 + 43,611 + 43,610 rows, a header of 25 column names), read from
    ``root/qm9/`` under their names::

        qm9_part1.csv   qm9_part2.csv   qm9_part3.csv

    When none of them is there, :meth:`load` copies them from the installed package (225 MB,
    read by path, without importing it). A folder holding only some of them raises
    ``FileNotFoundError`` naming the missing ones; a file without the columns used here or
    with a wrong number of rows raises ``ValueError``.

    Features: the eigenvalues of each molecule's Coulomb matrix (:func:`coulomb_eigenvalues`),
    sorted by decreasing magnitude and padded with zeros to 29, the largest molecule. They
    are computed once (about 10 s) and cached with the targets in ``root/qm9/qm9-coulomb.pt``,
    rebuilt when a source file changes (its SHA-256 is part of the recipe).

    Targets, :data:`TARGETS` (name: column, unit), in the units of the published data:
    ``mu`` dipole moment (D), ``alpha`` isotropic polarisability (a₀³), ``homo``, ``lumo``,
    ``gap`` (Ha), ``r2`` electronic spatial extent (a₀²), ``zpve`` zero-point vibrational
    energy (Ha), ``U0``, ``U`` internal energy at 0 K and 298.15 K, ``H`` enthalpy and ``G``
    free energy at 298.15 K (Ha, total energies, not atomisation energies), ``cv`` heat
    capacity at 298.15 K (cal/(mol K)).

    Args:
        root: the data root; the files live in ``root/qm9``.
    """

    FILES: ClassVar[dict[str, int]] = {"qm9_part1.csv": 43_610, "qm9_part2.csv": 43_611, "qm9_part3.csv": 43_610}

    def __init__(self, root: Path | str) -> None:
        self.folder = Path(root) / "qm9"

    def load(self) -> tuple[Tensor, Tensor]:
        """``(eigenvalues, targets)`` of every molecule in file order: ``float64 [130831, 29]``
        Coulomb-matrix eigenvalues and ``float64 [130831, 12]`` targets, columns in the order
        of :data:`TARGETS`."""
        fill_from_package(self.folder, {name: f"data/{name}" for name in self.FILES}, PACKAGE, PIP_SOURCE)
        paths = require_files(
            self.folder,
            list(self.FILES),
            f"put the three qm9pack CSV files there, or empty the folder and `pip install {PIP_SOURCE}` "
            "to have it filled offline",
        )
        recipe: dict[str, int | str] = {"version": CACHE_VERSION, **file_digests(paths)}
        cached = load_or_build(self.folder / "qm9-coulomb.pt", recipe, lambda: self._build(paths))
        return cached["eigenvalues"], cached["targets"]

    def _build(self, paths: dict[str, Path]) -> dict[str, Tensor]:
        counts: list[str] = []
        elements: list[str] = []
        coordinates: list[str] = []
        targets: list[list[str]] = []
        total = sum(self.FILES.values())
        for atoms, symbols, xyz, values in progress(self._rows(paths), total, "reading the QM9 molecules", unit="mol"):
            counts.append(atoms)
            elements.append(symbols)
            coordinates.append(xyz)
            targets.append(values)
        try:
            n_atoms, target_values = np.array(counts, dtype=np.int64), np.array(targets, dtype=np.float64)
        except ValueError as error:
            raise ValueError(
                f"a QM9 'N_atoms' or target column holds text that is not a number ({error}): replace the files "
                "with the published ones"
            ) from error
        if n_atoms.min() < 1 or n_atoms.max() > MAX_ATOMS:
            raise ValueError(
                f"QM9 molecules have 1 to {MAX_ATOMS} atoms, the 'N_atoms' column holds {n_atoms.min()} to "
                f"{n_atoms.max()}: replace the files with the published ones"
            )
        charges = self._charges(elements, n_atoms)
        positions = self._positions(coordinates, n_atoms)
        eigenvalues = torch.zeros(len(n_atoms), MAX_ATOMS, dtype=torch.float64)
        starts = np.concatenate([[0], np.cumsum(n_atoms)])
        with bar("QM9 Coulomb-matrix eigenvalues", len(n_atoms), unit="mol") as done:
            for size in np.unique(n_atoms):
                molecules = np.flatnonzero(n_atoms == size)
                rows = starts[molecules][:, None] + np.arange(size)
                eigenvalues[molecules, :size] = coulomb_eigenvalues(
                    torch.from_numpy(charges[rows]), torch.from_numpy(positions[rows])
                )
                done.update(len(molecules))
        return {"eigenvalues": eigenvalues, "targets": torch.from_numpy(target_values)}

    def _rows(self, paths: dict[str, Path]) -> Iterator[tuple[str, str, str, list[str]]]:
        """The fields ``(N_atoms, Elements, XYZ_Ang, [targets])`` of every molecule."""
        csv.field_size_limit(sys.maxsize)
        for name, expected in self.FILES.items():
            path = paths[name]
            count = 0
            try:
                with open_text(path) as file:
                    reader = csv.reader(file)
                    header = next(reader, [])
                    wanted = [*ATOM_COLUMNS, *(column for column, _ in TARGETS.values())]
                    missing = [column for column in wanted if column not in header]
                    if missing:
                        raise ValueError(
                            f"{path} lacks the column(s) {missing} of the qm9pack CSV files: replace it with the "
                            "published file"
                        )
                    atoms, symbols, xyz, *columns = (header.index(column) for column in wanted)
                    for count, row in enumerate(reader, start=1):  # noqa: B007 - the row an error names
                        yield row[atoms], row[symbols], row[xyz], [row[c] for c in columns]
            except (UnicodeDecodeError, OSError, EOFError, csv.Error, IndexError) as error:
                raise ValueError(
                    f"{path}, row {count + 1}, is unreadable ({error}): replace it with the published file"
                ) from error
            if count != expected:
                raise ValueError(
                    f"{path} holds {count} molecules, the published file {expected}: it is truncated or altered, "
                    "replace it with the published one"
                )

    @staticmethod
    def _charges(elements: list[str], n_atoms: np.ndarray) -> np.ndarray:
        """The nuclear charges of all atoms, from strings like ``['C','H','H','H','H']``."""
        symbols = ",".join(elements).translate(str.maketrans("", "", "[]' ")).split(",")
        unknown = set(symbols) - set(CHARGES)
        if unknown or len(symbols) != n_atoms.sum():
            raise ValueError(
                f"the QM9 'Elements' column holds {len(symbols)} atoms (unknown symbols: {sorted(unknown)}) for "
                f"{n_atoms.sum()} announced by 'N_atoms': replace the files with the published ones"
            )
        return np.array([CHARGES[symbol] for symbol in symbols], dtype=np.int64)

    @staticmethod
    def _positions(coordinates: list[str], n_atoms: np.ndarray) -> np.ndarray:
        """The positions ``[atoms, 3]`` (Å) of all atoms, from strings like ``[[x,y,z],...]``."""
        text = ",".join(coordinates).translate(str.maketrans("", "", "[] "))
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            try:
                values = np.fromstring(text, dtype=np.float64, sep=",")
            except (ValueError, DeprecationWarning) as error:
                raise ValueError(
                    f"the QM9 'XYZ_Ang' column holds text that is not a number ({error}): replace the files "
                    "with the published ones"
                ) from error
        if len(values) != 3 * n_atoms.sum():
            raise ValueError(
                f"the QM9 'XYZ_Ang' column holds {len(values)} coordinates for the {n_atoms.sum()} atoms announced "
                "by 'N_atoms': replace the files with the published ones"
            )
        return values.reshape(-1, 3)
