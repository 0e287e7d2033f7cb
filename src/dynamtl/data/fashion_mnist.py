"""Fashion-MNIST read from its four published IDX files, filled from the Debian package when absent."""

from __future__ import annotations

from pathlib import Path

from dynamtl.data._files import copy_files, find_file
from dynamtl.data.mnist import MNIST

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class FashionMNIST(MNIST):
    """Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017, MIT licence): 60,000 training and
    10,000 test images of Zalando articles, 28×28 unsigned bytes, labels 0–9 (the names
    in :data:`CLASSES`), in the four IDX files of MNIST's layout and names::

        train-images-idx3-ubyte  train-labels-idx1-ubyte
        t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte

    read plain or gzipped from ``root/fashion-mnist/`` by :class:`~dynamtl.data.mnist.MNIST`'s
    reader (same checks: magic numbers, lengths, sample counts, labels ≤ 9). When none of
    the four files is there, :meth:`load` fills the folder by copying the ``.gz`` files of
    the Debian package ``dataset-fashion-mnist`` from ``source`` (default
    ``/usr/share/datasets/fashion-mnist``; ``apt-get install dataset-fashion-mnist``, or
    without root ``apt-get download dataset-fashion-mnist && dpkg-deb -x <deb> <dir>`` and
    pass ``<dir>/usr/share/datasets/fashion-mnist``: ``scripts/setup.sh`` does either).

    Args:
        root: the data root; the files live in ``root/fashion-mnist``.
        source: the folder the files are copied from when ``root`` has none.
    """

    FOLDER = "fashion-mnist"
    TITLE = "Fashion-MNIST"
    HOW_TO_FILL = f"`apt-get install {DEBIAN_PACKAGE}` (or bash scripts/setup.sh)"

    def __init__(self, root: Path | str, source: Path | str = DEBIAN_FOLDER) -> None:
        super().__init__(root)
        self.source = Path(source)

    def fill(self) -> None:
        """Copy the four files (as found there, plain or ``.gz``) from ``source``;
        ``FileNotFoundError`` naming the missing ones and the Debian package."""
        found = {name: find_file(self.source, name) for name in self.names}
        missing = [name for name, path in found.items() if path is None]
        if missing:
            raise FileNotFoundError(
                f"{self.source} lacks {missing} (plain or .gz): apt-get install {DEBIAN_PACKAGE}, or "
                f"apt-get download {DEBIAN_PACKAGE} and dpkg-deb -x it (bash scripts/setup.sh does it)"
            )
        copy_files({path.name: path for path in found.values() if path is not None}, self.folder,
                   f"copying the {self.TITLE} files")
