"""Shared helpers of the data loaders: IDX files, files shipped inside pip packages or
copied from elsewhere, and tensor caches of derived data."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import logging
import math
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from dynamtl.data._progress import progress

logger = logging.getLogger("dynamtl")

IDX_UNSIGNED_BYTE = 0x08
GZIP_MAGIC = b"\x1f\x8b"


def find_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists (the plain file first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def require_files(folder: Path, names: Sequence[str], how_to_get: str) -> dict[str, Path]:
    """Each of ``names`` in ``folder`` (plain or ``.gz``); ``FileNotFoundError`` naming every
    missing file, the folder and ``how_to_get`` them."""
    found = {name: find_file(folder, name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise FileNotFoundError(
            f"{', '.join(repr(m) for m in missing)} (plain or .gz) missing from {folder}: {how_to_get}"
        )
    return {name: path for name, path in found.items() if path is not None}


def read_idx(path: Path, ndim: int) -> Tensor:
    """The unsigned-byte array of ``ndim`` dimensions in the IDX file ``path`` (plain or gzip).

    The IDX format (LeCun's MNIST files): two zero bytes, the element type (0x08: unsigned
    byte), the number of dimensions, each dimension as a big-endian int32, then the data.
    ``ValueError`` for another magic number or a file whose length does not match its header.
    """
    raw = path.read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise ValueError(f"{path} is a damaged gzip file ({error}): replace it with an intact copy") from error
    expected_magic = (IDX_UNSIGNED_BYTE << 8) | ndim
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != expected_magic:
        found = "too short for a header" if magic is None else f"0x{magic:08x}"
        raise ValueError(
            f"{path} is not an IDX file of {ndim}-dimensional unsigned bytes: magic number 0x{expected_magic:08x} "
            f"expected, found {found}; replace it with the published file"
        )
    header = 4 + 4 * ndim
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) != header + math.prod(shape):
        raise ValueError(
            f"{path} is truncated or padded: its header announces shape {shape}, i.e. "
            f"{header + math.prod(shape)} bytes, but it holds {len(raw)}; replace it with the published file"
        )
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def write_idx(path: Path, data: Tensor) -> None:
    """Write the ``uint8`` tensor ``data`` as an uncompressed IDX file (see :func:`read_idx`),
    atomically (a partly written file never carries the final name)."""
    if data.dtype != torch.uint8:
        raise ValueError(f"write_idx writes unsigned bytes only, got {data.dtype}: convert with .to(torch.uint8)")
    header = bytes([0, 0, IDX_UNSIGNED_BYTE, data.dim()]) + b"".join(d.to_bytes(4, "big") for d in data.shape)
    write_atomically(path, header + data.contiguous().numpy().tobytes())


def write_atomically(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` through a temporary file of its own in the same folder,
    renamed onto ``path``: a partly written file never carries the final name, and writers
    of the same file at once (the runs of a parallel comparison preparing one data cache)
    never share, truncate or rename each other's temporary file."""
    if path.is_dir():  # named, before anything is written (os.replace would say only "Is a directory")
        raise IsADirectoryError(f"a folder is in the way of the file {path}: move it out of the way, then run the same "
                                "command again")
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def package_file(package: str, relative: str, pip_name: str) -> Path:
    """The file ``relative`` inside the installed package ``package``, located without
    importing it; ``FileNotFoundError`` saying ``pip install pip_name`` when absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {package!r} is not installed: pip install {pip_name}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed {package!r}: pip install --force-reinstall {pip_name}"
        )
    return path


def copy_files(sources: Mapping[str, Path], folder: Path, description: str) -> None:
    """Copy every ``name -> source`` of ``sources`` to ``folder/name`` (made if needed)
    under a progress bar labelled ``description``, with the source's permissions. Each file
    goes through a temporary file of its own (as in :func:`write_atomically`): a partly copied
    file never carries its final name, and runs filling one empty folder at once (a parallel
    comparison on a fresh machine) never share a temporary file."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in progress(sources.items(), len(sources), description, unit="file"):
        descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f"{name}.", suffix=".part")
        os.close(descriptor)
        try:
            shutil.copyfile(source, temporary)
            shutil.copymode(source, temporary)
            os.replace(temporary, folder / name)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def seeded_generators(seed: int, count: int) -> list[torch.Generator]:
    """``count`` independent random streams fixed by ``seed``: what one stream draws does not
    depend on how much the others draw (a split's size never shifts another split's data)."""
    master = torch.Generator().manual_seed(seed)
    return [torch.Generator().manual_seed(int(s)) for s in torch.randint(2**62, (count,), generator=master)]


def load_or_build(
    path: Path, recipe: Mapping[str, int | str], build: Callable[[], dict[str, Tensor]]
) -> dict[str, Tensor]:
    """The tensors cached in ``path`` if it was built with the same ``recipe`` and is
    intact, else ``build()``, saved to ``path`` (atomically) for the next call.

    A cache is derived data: a missing, unreadable or differently built file is rebuilt.
    Its SHA-256 is written beside it (``path`` + ``.sha256``) and checked before it is read
    (with ``weights_only=True``): a cache damaged or changed since it was built is named in
    a warning and rebuilt.
    """
    checksum = path.with_name(path.name + ".sha256")
    if path.is_file():
        cached = _verified_cache(path, checksum)
        if isinstance(cached, dict) and cached.get("recipe") == dict(recipe):
            return cached["tensors"]
    logger.warning("preparing %s (done once; later runs read it back)", path)
    tensors = build()
    buffer = io.BytesIO()
    torch.save({"recipe": dict(recipe), "tensors": tensors}, buffer)
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, content in ((path, data), (checksum, hashlib.sha256(data).hexdigest().encode())):
        write_atomically(target, content)
    return tensors


def _verified_cache(path: Path, checksum: Path) -> object:
    """The content of the cache ``path`` if its SHA-256 is the one in ``checksum``, else
    ``None``, saying why: the cache cannot be read, its checksum file is missing or
    damaged (then the cache cannot be verified, which says nothing about the cache
    itself), or it does not match its checksum (damaged or changed)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        logger.warning("the data cache %s cannot be read (%s): rebuilding it", path, error.strerror)
        return None
    recorded, problem = _recorded_digest(checksum)
    if problem:
        logger.warning("the data cache %s cannot be verified: its checksum file %s %s (no verdict on the cache "
                       "itself): rebuilding it, as caches are derived data", path, checksum, problem)
        return None
    if recorded != hashlib.sha256(data).hexdigest():
        logger.warning("the data cache %s does not match its recorded checksum in %s (damaged or changed): "
                       "rebuilding it", path, checksum)
        return None
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        logger.warning("the data cache %s cannot be read (%s): rebuilding it", path, error)
        return None


def _recorded_digest(checksum: Path) -> tuple[str, str]:
    """The SHA-256 recorded in ``checksum`` and ``""``, or ``""`` and what is wrong with
    the file (missing, unreadable, not a SHA-256)."""
    if not checksum.is_file():
        return "", "is missing"
    try:
        recorded = checksum.read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        return "", f"cannot be read ({error})"
    if len(recorded) != 64 or any(c not in "0123456789abcdef" for c in recorded):
        return "", "is damaged (it holds no SHA-256)"
    return recorded, ""
