"""``smmf train`` checkpoints: plain data only, checksummed, the previous good one kept, one run per folder.

A checkpoint holds tensors and plain Python values (numbers, strings, lists, tuples, dicts) only, so it
loads with ``torch.load(weights_only=True)``, which cannot run code from the file. Saving writes
``.checkpoint.pt.tmp-<pid>`` and fsyncs it, adds its SHA-256 to the manifest ``checkpoint.sha256.json``
(itself written to a temporary file and renamed), keeps the current checkpoint as ``checkpoint.prev.pt``
(a hard link) and renames the new file over ``checkpoint.pt``. So whenever the process dies, every
checkpoint file on disk has its checksum in the manifest. ``--resume`` verifies the checksum and falls
back to the previous checkpoint, saying so, when the newest is damaged. A run holds an exclusive lock
(``fcntl.flock``) on ``<out>/.smmf-train.lock``, so a second run on the same folder stops at once, and
removes the temporary files a killed run left.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from .common import RunError, UsageError

try:
    import fcntl

    _HAVE_FCNTL = True
except ImportError:  # pragma: no cover - not POSIX: no lock
    _HAVE_FCNTL = False

__all__ = [
    "CHECKPOINT",
    "PREVIOUS",
    "MANIFEST",
    "LOCK",
    "CheckpointError",
    "Checkpoints",
    "save_checkpoint",
    "load_plain",
    "lock_run_folder",
    "remove_stale_temporaries",
    "rng_state",
    "set_rng_state",
    "swap_in_folder",
]

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
MANIFEST = "checkpoint.sha256.json"
LOCK = ".smmf-train.lock"
_KEEP = 4  # manifest entries: the new checkpoint, the current and previous ones, one spare
_TEMPORARY = re.compile(r"^\..+\.tmp-\d+$")  # .<name>.tmp-<pid>, as _write_temporary names them


class CheckpointError(RunError):
    """A checkpoint that cannot be used (missing, damaged, unverifiable, not plain data); names the file."""


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _write_temporary(obj: Any, path: Path) -> Path:
    """torch.save ``obj`` to a temporary file beside ``path``, flushed and fsynced; returns its path."""
    tmp = _temporary(path)
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (best effort: some filesystems cannot fsync a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``: a reader
    sees either the previous complete file or the new one, even if the process is killed mid-write."""
    os.replace(_write_temporary(obj, path), path)
    _fsync_dir(path.parent)


def sha256_file(path: Path) -> tuple[str, int]:
    """SHA-256 (hex) and size in bytes of a file, read in 1 MiB chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _load_failure(exc: Exception) -> str:
    """The gist of torch.load's error, without its advice to load with weights_only=False."""
    text = str(exc)
    found = re.search(r"WeightsUnpickler error: (.*?)(?:\. |\n|$)", text)
    if found:
        return f"it holds objects other than tensors and plain values: {found.group(1)}"
    first = text.strip().split(". ")[0].splitlines()[0] if text.strip() else ""
    return first[:160] or type(exc).__name__


def load_plain(path: Path) -> Any:
    """``torch.load(weights_only=True)`` on the CPU; CheckpointError naming ``path`` if that fails."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, EOFError, RuntimeError (zip), ...: all mean "unusable"
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded as plain tensors and values ({_load_failure(exc)})"
        ) from None


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` (atomically replaced) hold the content of ``src``: a hard link, else a copy."""
    tmp = _temporary(dst)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # no hard links here (some network or FUSE filesystems)
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dst)


class Checkpoints:
    """The single-file checkpoints of one run folder: ``checkpoint.pt``, ``checkpoint.prev.pt`` and
    their manifest. One process writes (rank 0); any may read."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path, self.previous, self.manifest = out / CHECKPOINT, out / PREVIOUS, out / MANIFEST
        self._newest_good = True  # whether checkpoint.pt may become the previous checkpoint on save

    def exists(self) -> bool:
        return self.path.exists() or self.previous.exists()

    def _entries(self) -> list[dict[str, Any]]:
        """The manifest's entries, newest first ([] if there is none or it is unreadable)."""
        try:
            entries = json.loads(self.manifest.read_text())["checkpoints"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return [e for e in entries if isinstance(e, dict) and isinstance(e.get("sha256"), str)]

    def _verified(self, path: Path) -> dict[str, Any]:
        """The checkpoint at ``path`` if its SHA-256 is in the manifest and it loads as plain data."""
        entries = self._entries()
        if not entries:
            raise CheckpointError(
                f"checkpoint {path} cannot be verified: the manifest {self.manifest} is missing or unreadable"
            )
        digest, size = sha256_file(path)
        if not any(e["sha256"] == digest for e in entries):
            raise CheckpointError(
                f"checkpoint {path} is damaged: its SHA-256 ({digest[:16]}..., {size} bytes) is not in "
                f"{self.manifest.name} (truncated, overwritten or altered since smmf train wrote it)"
            )
        obj = load_plain(path)
        if not isinstance(obj, dict) or not {"config", "progress", "model", "optimizer"} <= obj.keys():
            raise CheckpointError(f"checkpoint {path} is not an smmf train checkpoint")
        return obj

    def load(self, announce: bool = True) -> dict[str, Any]:
        """The newest checkpoint that verifies; else the previous one, with a warning on stderr."""
        problems = []
        for candidate in (self.path, self.previous):
            if not candidate.exists():
                problems.append(f"checkpoint {candidate} is missing")
                continue
            try:
                obj = self._verified(candidate)
            except CheckpointError as exc:
                problems.append(str(exc))
                continue
            if candidate == self.previous:
                self._newest_good = False  # never keep the damaged file as "previous"
                if announce:
                    print(
                        f"smmf train: warning: {problems[0]}; resuming from the previous checkpoint {candidate} "
                        f"(step {obj['progress'].get('step')})",
                        file=sys.stderr,
                        flush=True,
                    )
            return obj
        raise CheckpointError(f"{problems[0]}, and there is no usable previous checkpoint ({problems[1]})")

    def save(self, obj: dict[str, Any], step: int) -> None:
        """Write ``obj`` as the new checkpoint; the current one, if good, becomes the previous one."""
        tmp = _write_temporary(obj, self.path)
        digest, size = sha256_file(tmp)
        older = [e for e in self._entries() if e["sha256"] != digest][: _KEEP - 1]
        manifest = {"format": 1, "checkpoints": [{"sha256": digest, "bytes": size, "step": step}, *older]}
        manifest_tmp = _temporary(self.manifest)
        with open(manifest_tmp, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(manifest_tmp, self.manifest)  # the new file's checksum is known before it is in place
        if self._newest_good and self.path.exists():
            _link_or_copy(self.path, self.previous)
        os.replace(tmp, self.path)
        _fsync_dir(self.out)
        self._newest_good = True


def lock_run_folder(out: Path) -> IO[str] | None:
    """An exclusive lock on ``out`` for this process's lifetime (keep the returned file open);
    UsageError if another run holds it. None where fcntl is unavailable."""
    if not _HAVE_FCNTL:  # pragma: no cover
        return None
    f = open(out / LOCK, "a+")  # noqa: SIM115 - stays open: the lock lasts as long as the file does
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        who = f" (process {holder})" if holder.isdigit() else ""
        raise UsageError(
            f"--out: {out} is in use by another smmf train run{who}; wait for it to finish or choose another --out"
        ) from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete the ``.<name>.tmp-<pid>`` files a killed run left in ``out`` (call while holding the lock)."""
    removed = []
    for path in out.iterdir():
        if _TEMPORARY.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _numpy_rng_state() -> dict[str, Any]:
    """numpy's global RNG state as plain values and a tensor (its key array), for weights_only files."""
    # legacy=True, numpy's default, spelled out: its stub types the bare call as returning a dict. The state
    # is a tuple for MT19937 (the global RNG's generator) and a dict for any other.
    state = np.random.get_state(legacy=True)
    if not isinstance(state, tuple):
        raise RunError(f"numpy's global RNG uses {state.get('bit_generator')!r}, not MT19937; cannot checkpoint it")
    name, keys, pos, has_gauss, cached = state
    return {
        "name": str(name),
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _set_numpy_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`_numpy_rng_state`."""
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))


def rng_state(ctx: Any, device: torch.device) -> Any:
    """Every RNG's state as plain values and tensors (``ctx``: a ``smmf.commands.training.Dist``); distributed: a
    list with one entry per rank (rank 0 saves them all).

    A rank records only its own GPU's CUDA state: asking for all devices would make every rank open a
    context on every GPU.
    """
    state = {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": random.getstate()}
    if ctx.mode is None:
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state
    if device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    states: list[Any] = [None] * ctx.world
    torch.distributed.all_gather_object(states, state)
    return states


def set_rng_state(saved: Any, ctx: Any, device: torch.device) -> None:
    """Restore what :func:`rng_state` saved (this rank's entry, distributed)."""
    state = saved if ctx.mode is None else saved[ctx.rank]
    torch.set_rng_state(state["torch"])
    _set_numpy_rng_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "cuda_device" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_device"], device)


def swap_in_folder(tmp: Path, final: Path) -> None:
    """Replace folder ``final`` by the complete folder ``tmp`` (rank 0, after every rank wrote to it).

    Folders cannot be renamed over one another, so the previous checkpoint is first moved aside to
    ``.<name>.old``, which a resume falls back on if the process dies between the two renames.
    """
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
