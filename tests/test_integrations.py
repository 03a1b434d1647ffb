"""Drop-in use: Hugging Face Trainer, Lightning, torch.compile (of the model, the step, a training step),
accumulation, GradScaler."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounter

from smmf import SMMF, functional, state_format


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


def _data(steps: int, batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 6, generator=gen), torch.randint(0, 2, (batch,), generator=gen)) for _ in range(steps)]


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


# ---------------------------------------------------------------- Hugging Face Trainer


def _hf_trainer(tmp_path, max_steps: int):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 50, (12,), generator=gen) for _ in range(48)]
    dataset = [{"input_ids": r, "labels": r} for r in rows]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        save_steps=3,
        save_strategy="steps",
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
    )
    return transformers.Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        optimizer_cls_and_kwargs=(SMMF, {"lr": 1e-3, "decay_rate": -0.8, "fused": False}),
    )


def test_hf_trainer_trains_and_resumes_from_its_checkpoint_exactly(tmp_path):
    full = _hf_trainer(tmp_path / "full", 6)
    full.train()
    assert isinstance(full.optimizer.optimizer if hasattr(full.optimizer, "optimizer") else full.optimizer, SMMF)
    losses = [log["loss"] for log in full.state.log_history if "loss" in log]
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses)

    resumed = _hf_trainer(tmp_path / "full", 6)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------- Lightning


def test_lightning_configure_optimizers(tmp_path):
    lightning = pytest.importorskip("lightning")

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp()

        def training_step(self, batch, _index):
            return _loss(self.net, *batch)

        def configure_optimizers(self):
            return SMMF(self.parameters(), lr=1e-2, fused=False)

    module = Module()
    before = copy.deepcopy(module.net.state_dict())
    trainer = lightning.Trainer(
        max_steps=5,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    x, y = (torch.cat(t) for t in zip(*_data(5), strict=True))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 5
    assert isinstance(trainer.optimizers[0], SMMF)
    assert any(not torch.equal(before[k], v) for k, v in module.net.state_dict().items())


# ---------------------------------------------------------------- torch.compile, accumulation, GradScaler


def test_compiled_model_trains_like_the_eager_model():
    eager, compiled_source = _mlp(), _mlp()
    compiled = torch.compile(compiled_source)
    opts = [SMMF(m.parameters(), lr=1e-2, fused=False) for m in (eager, compiled_source)]
    for x, y in _data(4):
        for model, opt in ((eager, opts[0]), (compiled, opts[1])):
            opt.zero_grad()
            _loss(model, x, y).backward()
            opt.step()
    for a, b in zip(eager.parameters(), compiled_source.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_torch_compile_of_the_step_traces_none_of_it():
    """torch.compile(opt.step), PyTorch's recipe for its own optimizers: dynamo compiles no operation of
    SMMF's step (its backends are kernels of their own: traced, it was recompiled at each early step and
    ran 1.5x slower after) and the compiled call steps as the plain one does, to the bit."""
    torch._dynamo.reset()
    plain, compiled = _mlp(), _mlp()
    opts = [SMMF(m.parameters(), lr=1e-2) for m in (plain, compiled)]
    counter = CompileCounter()
    steps = (opts[0].step, torch.compile(opts[1].step, backend=counter))
    for x, y in _data(3):
        for model, step in zip((plain, compiled), steps, strict=True):
            model.zero_grad()
            _loss(model, x, y).backward()
            step()
    assert counter.op_count == 0
    for a, b in zip(plain.parameters(), compiled.parameters(), strict=True):
        assert torch.equal(a, b)


def test_torch_compile_of_the_functional_step_traces_none_of_it():
    """The public functional step compiled as a trainer of its own might: no operation compiled, the
    same update as the plain call."""
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled_step = torch.compile(functional.smmf, backend=counter)
    hyper = {"lr": 1e-2, "beta": 0.9, "eps": 1e-8, "weight_decay": 0.0, "decay_rate": -0.5, "growth_rate": 0.999}
    results = []
    for step in (functional.smmf, compiled_step):
        p = torch.ones(8, 6)
        state = state_format.init_state(p, True, 1)
        step([p], [torch.linspace(-1, 1, 48).reshape(8, 6)], [state], **hyper)
        results.append(p)
    assert counter.op_count == 0
    assert torch.equal(*results)


@pytest.mark.parametrize("backend", ["auto", "eager"])
def test_a_compiled_training_step_calls_the_optimizer_step_as_it_is(backend):
    """A whole training step compiled, opt.step() inside: a graph break there, and the parameters equal
    those of the same steps uncompiled."""
    torch._dynamo.reset()
    plain, compiled = _mlp(), _mlp()
    opts = [SMMF(m.parameters(), lr=1e-2, backend=backend) for m in (plain, compiled)]

    def train_step(model: nn.Module, opt: SMMF, x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()

    compiled_step = torch.compile(train_step, backend="eager")
    for x, y in _data(3):
        train_step(plain, opts[0], x, y)
        compiled_step(compiled, opts[1], x, y)
    for a, b in zip(plain.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_gradient_accumulation_equals_the_full_batch():
    full, accumulated = _mlp(), _mlp()
    opt_full = SMMF(full.parameters(), lr=1e-2, fused=False)
    opt_acc = SMMF(accumulated.parameters(), lr=1e-2, fused=False)
    for x, y in _data(3):
        opt_full.zero_grad()
        _loss(full, x, y).backward()
        opt_full.step()
        opt_acc.zero_grad()
        for xs, ys in zip(x.chunk(2), y.chunk(2), strict=True):
            (_loss(accumulated, xs, ys) / 2).backward()
        opt_acc.step()
    for a, b in zip(full.parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_grad_scaler_skips_inf_steps_and_leaves_state_untouched():
    model = _mlp()
    opt = SMMF(model.parameters(), lr=1e-2, fused=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    (x, y), (x2, y2) = _data(2)
    scaler.scale(_loss(model, x, y)).backward()
    scaler.step(opt)
    scaler.update()
    params = copy.deepcopy(list(model.parameters()))
    state = copy.deepcopy(opt.state_dict()["state"])
    scale = scaler.get_scale()

    opt.zero_grad()
    scaler.scale(_loss(model, x2, y2)).backward()
    next(model.parameters()).grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < scale
    for a, b in zip(params, model.parameters(), strict=True):
        assert torch.equal(a, b)
    for index, saved in state.items():
        for key, value in saved.items():
            now = opt.state_dict()["state"][index][key]
            assert torch.equal(value, now) if isinstance(value, torch.Tensor) else value == now, key
