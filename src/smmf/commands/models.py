"""Model builders for the commands, their one source of model shapes: trainable models and shape-only
(meta-device) architectures.

Everything is built from a configuration in code, never from downloaded weights, so every command
works offline: torchvision models from scratch, GPT-2/BERT/Llama from explicit transformers configs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from .common import UnknownNameError, UsageError

if TYPE_CHECKING:  # transformers is an optional dependency, imported where a model is built
    from transformers import GPT2Config

__all__ = [
    "DigitsCNN",
    "gpt2_config",
    "build_gpt2",
    "IMAGE_MODELS",
    "TEXT_MODELS",
    "TRAIN_MODELS",
    "build_image_model",
    "TRANSFORMER_NAMES",
    "LLAMA_PRESETS",
    "build_meta_model",
    "names_a_config",
    "needs_transformers",
    "meta_shapes",
    "build_transformer",
]

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the Hub; fail fast if code tries

IMAGE_MODELS = ("resnet50", "mobilenet_v2")
# name -> (n_embd, n_layer, n_head); byte-level vocabulary (256) because no tokenizer can be downloaded.
TEXT_MODELS: dict[str, tuple[int, int, int]] = {"gpt2-small": (768, 12, 12), "gpt2-tiny": (128, 4, 4)}
TRAIN_MODELS = IMAGE_MODELS + tuple(TEXT_MODELS)


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 grey digits: two 3x3 conv layers, a pooling step and two linear layers."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def gpt2_config(
    n_embd: int, n_layer: int, n_head: int, *, vocab_size: int = 256, n_positions: int = 256, dropout: float = 0.0
) -> GPT2Config:
    """A GPT2Config built in code (no Hub access); dropout defaults to 0 for short deterministic runs."""
    from transformers import GPT2Config
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # it warns about unset loss_type on every forward of a fresh config
    return GPT2Config(
        bos_token_id=vocab_size - 1,
        eos_token_id=vocab_size - 1,
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )


def build_gpt2(name: str, *, n_positions: int, vocab_size: int = 256, dropout: float = 0.0) -> nn.Module:
    """A randomly initialised GPT-2 language model of a named size (see ``TEXT_MODELS``)."""
    from transformers import GPT2LMHeadModel

    n_embd, n_layer, n_head = TEXT_MODELS[name]
    config = gpt2_config(n_embd, n_layer, n_head, vocab_size=vocab_size, n_positions=n_positions, dropout=dropout)
    return GPT2LMHeadModel(config)


def build_image_model(name: str, num_classes: int) -> nn.Module:
    """A torchvision classifier from scratch (no weights)."""
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


# ---------------------------------------------------------------------------------------- memory

TRANSFORMER_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "bert-base-uncased", "bert-large-uncased")
# name -> (hidden, layers, heads, kv heads, intermediate, vocab), from the published model configs.
LLAMA_PRESETS: dict[str, tuple[int, int, int, int, int, int]] = {
    "llama-1b": (2048, 16, 32, 8, 8192, 128256),
    "llama-3b": (3072, 28, 24, 8, 8192, 128256),
    "llama-7b": (4096, 32, 32, 32, 11008, 32000),
    "llama-8b": (4096, 32, 32, 8, 14336, 128256),
    "llama-13b": (5120, 40, 40, 40, 13824, 32000),
    "llama-70b": (8192, 80, 64, 8, 28672, 128256),
}
_GPT2_SIZES = {
    "gpt2": (768, 12, 12),
    "gpt2-medium": (1024, 24, 16),
    "gpt2-large": (1280, 36, 20),
    "gpt2-xl": (1600, 48, 25),
}
_LLAMA_CUSTOM = re.compile(r"^llama-h(\d+)-l(\d+)$")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_TRANSFORMER_PREFIXES = ("gpt2", "bert-", "llama-")


def _llama(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, vocab: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        vocab_size=vocab,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def _transformer_builder(name: str, num_classes: int | None) -> Callable[[], nn.Module] | None:
    if name in _GPT2_SIZES:
        from transformers import GPT2Config, GPT2LMHeadModel

        n_embd, n_layer, n_head = _GPT2_SIZES[name]
        return lambda: GPT2LMHeadModel(GPT2Config(n_embd=n_embd, n_layer=n_layer, n_head=n_head))
    if name.startswith("bert-"):
        from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

        config = (
            BertConfig()
            if name == "bert-base-uncased"
            else BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
        )
        if num_classes is not None:
            config.num_labels = num_classes
            return lambda: BertForSequenceClassification(config)
        return lambda: BertForMaskedLM(config)
    if name in LLAMA_PRESETS:
        return lambda: _llama(*LLAMA_PRESETS[name])
    match = _LLAMA_CUSTOM.match(name)
    if match:
        hidden, layers = int(match.group(1)), int(match.group(2))
        if hidden < 128 or hidden % 128:
            raise UnknownNameError(f"llama hidden size must be a positive multiple of 128 (heads of 128), got {hidden}")
        if layers < 1:
            raise UnknownNameError(f"llama needs at least one layer, got {layers}")
        heads = hidden // 128
        intermediate = (8 * hidden // 3 + 255) // 256 * 256  # SwiGLU width, rounded as Llama does
        return lambda: _llama(hidden, layers, heads, heads, intermediate, 32000)
    return None


def names_a_config(name: str) -> bool:
    """Whether ``name`` stands for a transformers configuration of the user's: a JSON file, a folder (holding
    a config.json), or a Hub id ("owner/model") whose files are in the local Hugging Face cache."""
    return name.endswith(".json") or "/" in name or os.path.isdir(name)


def needs_transformers(name: str) -> bool:
    """Whether building ``name`` takes transformers (a GPT-2, BERT or Llama name, or a config), not torchvision."""
    return name.startswith(_TRANSFORMER_PREFIXES) or names_a_config(name)


def _config_builder(name: str, num_classes: int | None) -> Callable[[], nn.Module]:
    """The model a transformers configuration describes (:func:`names_a_config`), read without any download:
    the class its ``architectures`` names, else a causal language model, else the bare model."""
    import transformers

    if num_classes is not None:
        raise UsageError("--num-classes sets a torchvision or BERT head; a transformers config sets its own")
    folder = os.path.isdir(name)
    if folder or name.endswith(".json") or not _HUB_ID.match(name):  # a file or folder of the user's
        file = os.path.join(name, "config.json") if folder else name
        if not os.path.isfile(file):
            raise UnknownNameError(f"--model {name}: no such file: {file}")
    try:
        config = transformers.AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as error:
        raise UnknownNameError(
            f"--model {name}: cannot read a transformers config there (nothing is downloaded: a Hub id must be in "
            f"the local Hugging Face cache): {str(error).splitlines()[0]}"
        ) from None
    architecture = getattr(transformers, (config.architectures or [""])[0], None)
    if architecture is not None:
        return lambda: architecture(config)
    if type(config) in transformers.MODEL_FOR_CAUSAL_LM_MAPPING:
        return lambda: transformers.AutoModelForCausalLM.from_config(config)
    return lambda: transformers.AutoModel.from_config(config)


def build_meta_model(name: str, num_classes: int | None = None) -> nn.Module:
    """Build architecture ``name`` on the meta device: parameter shapes only, no memory, no download.

    ``name`` is one of the named architectures, or a transformers configuration (:func:`names_a_config`).
    ``num_classes`` sets a torchvision classifier's head (default 1000) or a BERT classification head.
    Raises UnknownNameError with the valid names for an unknown one.
    """
    builder = _transformer_builder(name, num_classes)
    if builder is None and names_a_config(name):
        builder = _config_builder(name, num_classes)
    if builder is None:
        import torchvision

        if name not in torchvision.models.list_models():
            raise UnknownNameError(
                f"unknown model {name!r}; valid: torchvision names (e.g. resnet50, mobilenet_v2, vit_b_16), "
                f"{', '.join(TRANSFORMER_NAMES)}, {', '.join(LLAMA_PRESETS)}, llama-h<HIDDEN>-l<LAYERS>, or a "
                "transformers config (a config.json, its folder, or a Hub id in the local cache)"
            )
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        builder = lambda: torchvision.models.get_model(name, weights=None, **kwargs)  # noqa: E731
    with torch.device("meta"):
        return builder()


def meta_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    """The shapes of ``model``'s parameters, in order (tied parameters once)."""
    return [tuple(p.shape) for p in model.parameters()]


def build_transformer(name: str) -> nn.Module:
    """A transformers model of a named architecture (GPT-2 and BERT sizes, the Llama presets,
    llama-h<HIDDEN>-l<LAYERS>) with random weights, on the current default device."""
    builder = _transformer_builder(name, None)
    if builder is None:
        raise UnknownNameError(
            f"unknown transformer {name!r}; valid: {', '.join(TRANSFORMER_NAMES)}, {', '.join(LLAMA_PRESETS)}"
        )
    return builder()
