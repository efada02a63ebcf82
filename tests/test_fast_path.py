"""The GPU-first training step, checked on CPU: a steady-state step never reads a value back to the
host, its skip-the-update rule is decided on the device, a step's data is a function of (seed, step),
and attention reaches the fused kernels.  Tests that need CUDA are marked ``cuda`` (skipped without)."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_trainer

from diffctl.models.unet import Attention

HOST_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "cpu")


class HostReadGuard:
    """Raises on any tensor method that brings a value to the host (on CUDA each is a synchronisation)."""

    def __init__(self, monkeypatch):
        self.monkeypatch, self.active = monkeypatch, False
        for name in HOST_READS:
            original = getattr(torch.Tensor, name)

            def guarded(tensor, *args, _name=name, _original=original, **kwargs):
                if self.active:
                    raise AssertionError(f"Tensor.{_name}() in a training step: the host waits for the device")
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, guarded)

    def __enter__(self):
        self.active = True

    def __exit__(self, *exc):
        self.active = False


@pytest.mark.parametrize("opts", [(), ("model.num_classes=10", "trainer.accumulate=2", "model.dropout=0.1"),
                                  ("trainer.precision=fp32", "loss=edm", "model.prediction=v")], ids=["default", "labels-accumulate", "edm"])
def test_a_steady_state_step_reads_nothing_back_to_the_host(tmp_path, monkeypatch, opts):
    trainer = make_trainer(tmp_path, *opts)
    trainer.train_step()  # the first step may set things up
    guard = HostReadGuard(monkeypatch)
    with guard:
        for _ in range(3):
            loss, grad_norm, ok = trainer.train_step()
    with pytest.raises(AssertionError, match="Tensor.item"), guard:  # the guard does catch a read
        loss.item()
    assert math.isfinite(float(loss)) and bool(ok) and trainer.tally.read().applied == 4


def test_a_skipped_step_leaves_weights_moments_and_ema_untouched_without_the_host(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, "trainer.precision=fp32")
    trainer.train_step()
    before = {k: v.clone() for k, v in {**trainer.net.state_dict(), **{f"ema.{k}": v for k, v in trainer.ema.model.state_dict().items()}}.items()}
    moments = [(s["exp_avg"].clone(), s["exp_avg_sq"].clone(), s["step"].clone()) for s in trainer.opt.state.values()]
    real = trainer.preconditioned.loss
    monkeypatch.setattr(trainer.preconditioned, "loss", lambda *a, **k: real(*a, **k) * float("inf"))
    with HostReadGuard(monkeypatch):
        loss, _, ok = trainer.train_step()
    assert not bool(ok) and trainer.step == 2 and trainer.ema.updates == 1
    after = {**trainer.net.state_dict(), **{f"ema.{k}": v for k, v in trainer.ema.model.state_dict().items()}}
    assert all(torch.equal(before[k], after[k]) for k in before)
    for (m, v, s), state in zip(moments, trainer.opt.state.values()):
        assert torch.equal(m, state["exp_avg"]) and torch.equal(v, state["exp_avg_sq"]) and torch.equal(s, state["step"])
    window = trainer.tally.read()
    assert (window.applied, window.skipped, window.bad_loss, window.in_a_row) == (1, 1, 1, 1)


def test_a_steps_data_is_a_function_of_the_seed_and_the_step(tmp_path):
    a, b = make_trainer(tmp_path / "a"), make_trainer(tmp_path / "b")
    draws = lambda t: list(t.draw().values())  # images, noise levels, noise
    a.step = b.step = 7
    assert all(torch.equal(x, y) for x, y in zip(draws(a), draws(b)))  # the same step of two trainers
    b.step = 8
    assert not torch.equal(draws(a)[0], draws(b)[0])  # another step, another batch
    other = make_trainer(tmp_path / "c", "seed=1")
    other.step = 7
    assert not torch.equal(draws(a)[0], draws(other)[0])  # another seed, another batch


def test_attention_reaches_the_fused_kernel_and_computes_multi_head_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    attn = Attention(32, heads=4)
    torch.nn.init.normal_(attn.proj.weight)  # zero-initialised: the residual alone would hide the attention
    x = torch.randn(2, 32, 4, 4)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.no_grad():  # before: "No available kernel" (strided heads)
        out = attn(x)
    # the same attention written out: channels 3C split as (q|k|v, head, C/heads), softmax(q k^T / sqrt(d)) v per head
    with torch.no_grad():
        qkv = attn.qkv(attn.norm(x).reshape(2, 32, 16))
        q, k, v = qkv.reshape(2, 3, 4, 8, 16).permute(1, 0, 2, 4, 3)
        heads = F.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1) @ v  # [N, heads, HW, d]
        expected = x + attn.proj(heads.permute(0, 1, 3, 2).reshape(2, 32, 16)).reshape(2, 32, 4, 4)
    assert torch.allclose(out, expected, atol=1e-5)
