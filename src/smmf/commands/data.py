"""Datasets for the command line: offline ones that ship inside installed packages, CIFAR, text files.

Offline data: scikit-learn's bundled handwritten digits, and the Python standard library's own source
files as a byte-level text corpus (no tokenizer to download). Every split and order is a pure function
of a seed, so that all optimizers in a comparison see the same data in the same order, and a resumed
training run sees exactly the batches the interrupted one would have.
"""

from __future__ import annotations

import functools
import os
import pickle
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "DataError",
    "Digits",
    "load_digits",
    "stdlib_corpus",
    "read_text_files",
    "TextWindows",
    "CIFAR_STATS",
    "CifarDataset",
    "cifar_datasets",
    "EpochBatches",
    "SeededDataset",
]


class DataError(RuntimeError):
    """A dataset is missing or unreadable; the message says what to do (the CLI prints it, no traceback)."""


@dataclass
class Digits:
    """scikit-learn's 8x8 digits, scaled to [0, 1], split into train, validation and held-out test tensors."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits(val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> Digits:
    """The 1797 bundled digits (no download), stratified into train / validation / test by ``seed``.

    The validation split is for choosing hyperparameters, the test split only for reporting them.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    idx_rest, idx_test = train_test_split(
        list(range(len(y))), test_size=test_fraction, random_state=seed, stratify=bunch.target
    )
    idx_train, idx_val = train_test_split(
        idx_rest,
        test_size=val_fraction / (1 - test_fraction),
        random_state=seed,
        stratify=bunch.target[idx_rest],
    )
    return Digits(x[idx_train], y[idx_train], x[idx_val], y[idx_val], x[idx_test], y[idx_test])


def _stdlib_files() -> list[Path]:
    """The standard library's .py files outside tests and site-packages, in a fixed (sorted) order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


@functools.lru_cache(maxsize=4)
def stdlib_corpus(train_bytes: int, val_bytes: int, test_bytes: int, every: int = 10) -> tuple[Tensor, Tensor, Tensor]:
    """Byte tensors (uint8) of Python standard-library source: train, validation and test text.

    Of every ``every`` files (in sorted order) the fifth goes to validation and the last to test, so
    that both are whole files the model never saw, and validation (for choosing hyperparameters) never
    overlaps test (for reporting). The text differs a little between Python versions, so figures are
    comparable within one interpreter. Cached: each seed of a comparison builds its task from the same
    text, read once per process (callers must not modify the tensors).
    """
    wanted = {"train": train_bytes, "val": val_bytes, "test": test_bytes}
    chunks: dict[str, list[bytes]] = {split: [] for split in wanted}
    sizes = dict.fromkeys(wanted, 0)
    for i, path in enumerate(_stdlib_files()):
        split = {every // 2 - 1: "val", every - 1: "test"}.get(i % every, "train")
        if sizes[split] >= wanted[split]:
            if all(sizes[k] >= wanted[k] for k in wanted):
                break
            continue
        data = path.read_bytes()
        chunks[split].append(data)
        sizes[split] += len(data)
    if any(sizes[k] < wanted[k] for k in wanted):
        raise DataError(f"the standard library at {sysconfig.get_paths()['stdlib']} has too little source text")
    joined = {split: b"".join(parts)[: wanted[split]] for split, parts in chunks.items()}
    train, val, test = (torch.frombuffer(bytearray(joined[k]), dtype=torch.uint8) for k in ("train", "val", "test"))
    return train, val, test


def read_text_files(paths: Sequence[str | os.PathLike[str]]) -> Tensor:
    """The bytes of these files, concatenated, as a uint8 tensor; DataError names an unreadable one."""
    chunks = []
    for path in paths:
        try:
            chunks.append(Path(path).read_bytes())
        except OSError as exc:
            raise DataError(f"--text: cannot read {path}: {exc.strerror or exc}") from None
    data = b"".join(chunks)
    if not data:
        raise DataError("--text: the given files are empty")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


class TextWindows(Dataset[tuple[Tensor, Tensor]]):
    """Non-overlapping windows of ``seq_len + 1`` bytes (input and shifted target) over a byte tensor."""

    def __init__(self, data: Tensor, seq_len: int) -> None:
        if data.numel() < seq_len + 1:
            raise DataError(f"text of {data.numel()} bytes is shorter than one window of {seq_len + 1}")
        self.data = data
        self.seq_len = seq_len

    def __len__(self) -> int:
        return (self.data.numel() - 1) // self.seq_len

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        start = index * self.seq_len
        window = self.data[start : start + self.seq_len + 1].long()
        return window[:-1], window[1:]


# ---------------------------------------------------------------------------------------- CIFAR

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what CIFAR's python-version batches are made of: dicts, lists, strings, numbers and
    numpy arrays. Any other global (``os.system``, a class with a ``__reduce__``) is refused, so a
    planted file cannot run code."""

    _ALLOWED = frozenset(
        (module, name)
        for core in ("numpy.core", "numpy._core")
        for module, name in (
            (f"{core}.multiarray", "_reconstruct"),
            (f"{core}.multiarray", "scalar"),
            (f"{core}.numeric", "_frombuffer"),
        )
    ) | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _read_batch(path: Path) -> dict[str, Any]:
    """One CIFAR pickle (a dict), read with :class:`_CifarUnpickler`; DataError naming the file."""
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, EOFError, ValueError, ...: not a valid batch
        raise DataError(f"{path}: not a CIFAR batch in the python pickle format ({exc})") from None
    if not isinstance(entry, dict):
        raise DataError(f"{path}: not a CIFAR batch (a {type(entry).__name__}, expected a dict)")
    return entry


class CifarDataset(Dataset[tuple[Any, int]]):
    """CIFAR-10/100 from the extracted python-version files, as torchvision's classes read them (HWC
    uint8 images, integer targets, PIL images through ``transform``), with every file checked."""

    def __init__(self, folder: Path, files: Sequence[str], meta: dict[str, str], classes: int, transform: Any) -> None:
        images: list[np.ndarray[Any, Any]] = []
        self.targets: list[int] = []
        for name in files:
            entry = _read_batch(folder / name)
            data, labels = entry.get("data"), entry.get("labels", entry.get("fine_labels"))
            if not (
                isinstance(data, np.ndarray)
                and data.dtype == np.uint8
                and data.ndim == 2
                and data.shape[1] == 3072
                and isinstance(labels, list)
                and len(labels) == len(data)
                and all(isinstance(t, (int, np.integer)) and 0 <= t < classes for t in labels)
            ):
                raise DataError(f"{folder / name}: expected 'data' (N x 3072 uint8) and N labels in [0, {classes})")
            images.append(data)
            self.targets.extend(int(t) for t in labels)
        self.data = np.vstack(images).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        names = _read_batch(folder / meta["filename"]).get(meta["key"])
        if not isinstance(names, list) or len(names) != classes or not all(isinstance(n, str) for n in names):
            raise DataError(f"{folder / meta['filename']}: expected {classes} class names under {meta['key']!r}")
        self.classes = names
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def _download_cifar(base: Any, root: Path) -> None:
    """Fetch and extract the archive (its MD5 checked), then check the MD5 of every extracted file."""
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive

    download_and_extract_archive(base.url, str(root), filename=base.filename, md5=base.tgz_md5)
    folder = root / base.base_folder
    for name, md5 in [*base.train_list, *base.test_list, [base.meta["filename"], base.meta["md5"]]]:
        if not check_integrity(str(folder / name), md5):
            raise DataError(f"{folder / name}: MD5 mismatch after download; delete {folder} and try again")


def cifar_datasets(
    name: str, data_dir: str | os.PathLike[str], image_size: int, download: bool
) -> tuple[CifarDataset, CifarDataset]:
    """(train, test) CIFAR datasets with the paper's augmentation (resize, flip, 15° rotation).

    An existing extracted copy in ``data_dir`` is used as it is (a user's copy, or a small file in the
    same format written by a test), read with an unpickler that admits only the types the format
    needs; a missing one is downloaded when ``download`` is set, with torchvision's MD5 checks of the
    archive and of every file. DataError says where the dataset was looked for, or what is wrong.
    """
    import torchvision
    from torchvision import transforms as T

    base = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    mean, std = CIFAR_STATS[name]
    resize = [T.Resize(image_size)] if image_size != 32 else []
    train_tf = T.Compose(
        [*resize, T.RandomHorizontalFlip(), T.RandomRotation(15), T.ToTensor(), T.Normalize(mean, std)]
    )
    test_tf = T.Compose([*resize, T.ToTensor(), T.Normalize(mean, std)])
    folder = Path(data_dir) / base.base_folder
    files = [n for n, _ in base.train_list + base.test_list] + [base.meta["filename"]]
    if not all((folder / f).is_file() for f in files):
        if not download:
            raise DataError(
                f"{name}: no dataset in {folder} (downloading is off); pass --data-dir with a folder holding "
                f"{base.base_folder}/ (the extracted python version), or run online to download it"
            )
        try:
            _download_cifar(base, Path(data_dir))
        except (OSError, RuntimeError) as exc:  # offline, DNS, HTTP error, checksum mismatch
            raise DataError(
                f"{name}: not found in {folder} and the download failed ({exc}); pass --data-dir with an existing copy"
            ) from None
    classes = 10 if name == "cifar10" else 100
    train = CifarDataset(folder, [n for n, _ in base.train_list], base.meta, classes, train_tf)
    test = CifarDataset(folder, [n for n, _ in base.test_list], base.meta, classes, test_tf)
    return train, test


# ---------------------------------------------------------------------------------------- order


class EpochBatches:
    """Batches of (index, sample seed) for one epoch: a permutation fixed by (seed, epoch), minus a prefix.

    The order depends on nothing but the seed and the epoch, and ``skip`` drops already consumed batches
    without loading them, which is what lets a resumed run continue exactly where a killed one stopped.
    Each sample carries its own seed for random augmentation (see :class:`SeededDataset`).

    Distributed (``world`` > 1): every rank builds the same global batches and takes the strided slice
    ``[rank::world]`` of each, so ranks see disjoint samples with the same per-sample seeds as a single
    process would. A batch is cut to a multiple of ``world`` (only an epoch's last batch can be short),
    and a last batch with fewer samples than ranks is dropped, so every rank runs the same number of
    equally sized batches (which DDP's gradient mean and FSDP's collectives need).
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        shuffle: bool = True,
        skip: int = 0,
        limit: int | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside a world of {world}")
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        self.order = torch.randperm(size, generator=gen).tolist() if shuffle else list(range(size))
        self.sample_seeds = torch.randint(0, 2**62, (size,), generator=gen).tolist()
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.rank, self.world = rank, world
        n = len(self.order) // batch_size if drop_last else -(-len(self.order) // batch_size)
        if n and len(self.order) - (n - 1) * batch_size < world:  # last batch too small to give each rank one
            n -= 1
        self.total = n if limit is None else min(n, limit)
        self.skip = skip

    def __len__(self) -> int:
        return max(0, self.total - self.skip)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for b in range(self.skip, self.total):
            start = b * self.batch_size
            idx = self.order[start : start + self.batch_size]
            keep = len(idx) - len(idx) % self.world
            yield [(idx[j], self.sample_seeds[start + j]) for j in range(self.rank, keep, self.world)]


class SeededDataset(Dataset[Any]):
    """Wraps a dataset so that item (index, seed) is produced under its own RNG seed.

    Random transforms then depend only on the sample's seed, not on how many samples came before, on
    which worker loaded it, or on whether the run was resumed; the caller's global RNG is untouched.
    """

    def __init__(self, base: Dataset[Any]) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; ours all have one

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.base[index]
