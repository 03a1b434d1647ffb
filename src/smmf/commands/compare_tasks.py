"""``smmf compare``'s tasks: a model, a fixed batch sequence, a loss and a held-out metric each.

Offline by design: the image task uses scikit-learn's bundled digits, the language-model task the
Python standard library's own source. Every batch is a pure function of the seed and the step, so
every optimizer sees the same data in the same order.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import load_digits, stdlib_corpus
from .models import DigitsCNN, gpt2_config

__all__ = ["Task", "TaskClass", "DigitsTask", "TextTask", "TASKS"]


class Task(Protocol):
    """One benchmark: a model, a fixed batch sequence, a loss and a held-out metric."""

    name: str
    title: str
    metric: str
    higher_is_better: bool
    decay_rate: float
    default_steps: int

    def model(self) -> nn.Module: ...
    def batch(self, step: int) -> tuple[Tensor, Tensor]: ...
    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor: ...
    def evaluate(self, model: nn.Module) -> float: ...


class DigitsTask:
    """A small CNN on scikit-learn's 8x8 digits; held-out accuracy (%) on a stratified 20% split."""

    name = "digits"
    title = "CNN on scikit-learn digits (8x8, 10 classes)"
    metric = "accuracy (%)"
    higher_is_better = True
    decay_rate = -0.5  # the paper's recommendation for CNNs
    default_steps = 400

    def __init__(self, steps: int, seed: int, device: torch.device, batch_size: int = 64) -> None:
        self.device = device
        self.data = load_digits(seed=seed)
        n = len(self.data.y_train)
        gen = torch.Generator().manual_seed(seed)
        epochs = -(-steps * batch_size // n)
        order = torch.cat([torch.randperm(n, generator=gen) for _ in range(epochs)])
        self.order = order[: steps * batch_size].view(steps, batch_size)

    def model(self) -> nn.Module:
        return DigitsCNN(width=16)

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        idx = self.order[step]
        return self.data.x_train[idx].to(self.device), self.data.y_train[idx].to(self.device)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        return F.cross_entropy(model(batch[0]), batch[1])

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> float:
        model.eval()
        logits = model(self.data.x_test.to(self.device))
        model.train()
        return 100.0 * (logits.argmax(1).cpu() == self.data.y_test).float().mean().item()


class TextTask:
    """A 2-layer GPT-2 (byte-level, 0.44 M parameters) on Python standard-library source; perplexity on
    held-out files. Sized so that six optimizers train in a few minutes on two CPU cores."""

    name = "text"
    title = "GPT-2 byte-level LM on Python stdlib source"
    metric = "perplexity"
    higher_is_better = False
    decay_rate = -0.8  # the paper's recommendation for transformers
    default_steps = 300
    seq_len = 64
    batch_size = 16

    def __init__(self, steps: int, seed: int, device: torch.device) -> None:
        self.device = device
        self.train_data, self.val_data = stdlib_corpus(train_bytes=4_000_000, val_bytes=65_536)
        gen = torch.Generator().manual_seed(seed)
        high = self.train_data.numel() - self.seq_len - 1
        self.offsets = torch.randint(0, high, (steps, self.batch_size), generator=gen)

    def model(self) -> nn.Module:
        from transformers import GPT2LMHeadModel

        return GPT2LMHeadModel(gpt2_config(n_embd=128, n_layer=2, n_head=4, n_positions=self.seq_len))

    def _windows(self, data: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
        idx = starts.unsqueeze(1) + torch.arange(self.seq_len + 1)
        tokens = data[idx].long().to(self.device)
        return tokens[:, :-1], tokens[:, 1:]

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        return self._windows(self.train_data, self.offsets[step])

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        logits = model(input_ids=batch[0]).logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[1].reshape(-1))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> float:
        """exp(mean next-byte cross-entropy) over all non-overlapping windows of the held-out files."""
        model.eval()
        starts = torch.arange(0, self.val_data.numel() - self.seq_len - 1, self.seq_len)
        total, count = 0.0, 0
        for chunk in starts.split(128):
            batch = self._windows(self.val_data, chunk)
            total += self.loss(model, batch).item() * batch[1].numel()
            count += batch[1].numel()
        model.train()
        return math.exp(total / count)


class TaskClass(Protocol):
    """What ``TASKS`` maps a name to: a task class, with its default number of steps."""

    default_steps: int

    def __call__(self, steps: int, seed: int, device: torch.device) -> Task: ...


TASKS: dict[str, TaskClass] = {"digits": DigitsTask, "text": TextTask}
