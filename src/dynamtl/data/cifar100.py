"""CIFAR-100 read from the three pickles of its published Python version."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

Split = Literal["train", "test"]

SOURCE = (
    "CIFAR-100 (Krizhevsky, 2009) is read from the 'CIFAR-100 python version' archive "
    "cifar-100-python.tar.gz of the CIFAR page of the University of Toronto, unpacked so that "
    "{folder}/train, {folder}/test and {folder}/meta exist"
)
# The only globals the published pickles (numpy arrays, lists, bytes) may name.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    *((f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
}


class CIFAR100:
    """CIFAR-100: 50,000 training and 10,000 test colour images of 32×32 in 100 fine classes,
    grouped five by five into 20 superclasses (coarse classes).

    Source: Krizhevsky, *Learning Multiple Layers of Features from Tiny Images* (2009),
    "CIFAR-100 python version". Read from ``root/cifar-100-python/`` under the published
    names::

        train   pickle: {b"data": uint8 [50000, 3072], b"fine_labels": [50000 ints 0–99],
                         b"coarse_labels": [50000 ints 0–19], b"filenames", b"batch_label"}
        test    the same with 10,000 images
        meta    pickle: {b"fine_label_names": 100 names, b"coarse_label_names": 20 names}

    A row of ``data`` is the 1024 red, then green, then blue values of the image, each
    32×32 row-major. Keys may be bytes (the published files) or str. The pickles are read
    with an unpickler that admits nothing but the numpy arrays, lists and strings they hold.
    A missing file raises ``FileNotFoundError`` naming it and the source; a file of another
    structure, labels out of range, or superclasses that are not five fine classes each
    raise ``ValueError`` naming the file.

    Args:
        root: the data root; the files live in ``root/cifar-100-python``.
    """

    SPLITS: tuple[str, ...] = ("train", "test")
    NUM_FINE, NUM_COARSE, PER_COARSE = 100, 20, 5

    def __init__(self, root: Path | str) -> None:
        self.folder = Path(root) / "cifar-100-python"

    def load(self, split: Split) -> tuple[Tensor, Tensor, Tensor]:
        """``(images uint8 [N, 3, 32, 32], fine int64 [N], coarse int64 [N])`` of ``split``
        in the published order."""
        if split not in self.SPLITS:
            raise ValueError(f"CIFAR-100 has the splits {list(self.SPLITS)}, got {split!r}")
        path = self.folder / split
        content = self._unpickle(path)
        data = content.get("data")
        fine, coarse = content.get("fine_labels"), content.get("coarse_labels")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            found = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
            raise ValueError(f"{path}: 'data' must be a uint8 array [N, 3072], found {found}")
        if fine is None or coarse is None or len(fine) != len(data) or len(coarse) != len(data):
            raise ValueError(f"{path}: 'fine_labels' and 'coarse_labels' must each hold one label per row of 'data'")
        fine_labels = torch.as_tensor(np.asarray(fine), dtype=torch.int64)
        coarse_labels = torch.as_tensor(np.asarray(coarse), dtype=torch.int64)
        for labels, size, name in ((fine_labels, self.NUM_FINE, "fine"), (coarse_labels, self.NUM_COARSE, "coarse")):
            if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= size):
                raise ValueError(f"{path}: {name} labels outside 0..{size - 1}")
        images = torch.from_numpy(np.ascontiguousarray(data)).view(len(data), 3, 32, 32)
        return images, fine_labels, coarse_labels

    def names(self) -> tuple[list[str], list[str]]:
        """``(fine, coarse)`` class names from ``meta``, indexed by label."""
        path = self.folder / "meta"
        content = self._unpickle(path)
        names = []
        for key, size in (("fine_label_names", self.NUM_FINE), ("coarse_label_names", self.NUM_COARSE)):
            values = content.get(key)
            if not isinstance(values, list) or len(values) != size:
                raise ValueError(f"{path}: {key!r} must be a list of {size} names")
            names.append([v.decode() if isinstance(v, bytes) else str(v) for v in values])
        return names[0], names[1]

    def superclasses(self, fine: Tensor, coarse: Tensor) -> list[list[int]]:
        """For every superclass c, its five fine classes in increasing order, read off the
        labels of a split; ``ValueError`` when a fine class has two superclasses or a
        superclass has other than five fine classes."""
        members: list[set[int]] = [set() for _ in range(self.NUM_COARSE)]
        pairs = torch.unique(torch.stack([fine, coarse], 1), dim=0)
        owners = torch.bincount(pairs[:, 0], minlength=self.NUM_FINE)
        if bool((owners > 1).any()):
            shared = torch.nonzero(owners > 1).flatten().tolist()
            raise ValueError(f"fine classes {shared} of {self.folder} belong to several superclasses")
        for f, c in pairs.tolist():
            members[c].add(f)
        wrong = {c: sorted(m) for c, m in enumerate(members) if len(m) != self.PER_COARSE}
        if wrong:
            raise ValueError(
                f"CIFAR-100 superclasses hold {self.PER_COARSE} fine classes each; in {self.folder}: {wrong}"
            )
        return [sorted(m) for m in members]

    def _unpickle(self, path: Path) -> dict[str, Any]:
        how = SOURCE.format(folder=self.folder)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {how}")
        try:
            content = _Unpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as error:
            raise ValueError(f"{path} is not a CIFAR-100 python pickle ({error}): {how}") from error
        if not isinstance(content, dict):
            raise ValueError(f"{path} holds a {type(content).__name__}, not a dict: {how}")
        return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in content.items()}


class _Unpickler(pickle.Unpickler):
    """Admits only the globals of :data:`_ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"the pickle names {module}.{name}, which a CIFAR-100 file never does")
        return super().find_class(module, name)
