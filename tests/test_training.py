"""Training does what it promises, checked against independent computations: the step feeds the
network x_t = (x0 + sigma eps) / sqrt(1 + sigma^2) at the noise level it drew, with the target of its
prediction type; the EMA follows its closed form; sampling uses the weights it names; a short run
learns a distribution to within a tight margin of the exact denoiser."""

import hashlib

import pytest
import torch
from conftest import make_trainer

from diffctl.core.schedules import make_alpha_bar
from diffctl.io.checkpoint import list_checkpoints, load_checkpoint
from diffctl.optim import EMA


@pytest.mark.parametrize("prediction,sigma_data", [("eps", 1.0), ("x0", 1.0), ("v", 1.0), ("v", 0.5)])
def test_the_training_step_feeds_x_t_at_the_sampled_noise_level_with_the_right_target(tmp_path, prediction, sigma_data):
    trainer = make_trainer(tmp_path, "dataset=gmm", "model=mlp", f"model.prediction={prediction}", "trainer.precision=fp32",
                           "schedule=linear", "trainer.batch_size=16", f"model.sigma_data={sigma_data}")
    seen = []

    def spy(x_t, t):  # outputs zeros, so the loss is the mean squared target, and records what it was given
        seen.append((x_t.detach().clone(), t.detach().clone()))
        return 0.0 * trainer.net(x_t, t)

    trainer.preconditioned.net = spy
    loss, _, _ = trainer.train_step()

    # the same draws, recomputed here: the items are the first 16 of epoch 0's permutation (seeded by a hash of (seed, epoch));
    # uniform timesteps and noise come from the step's seed, a hash of (seed, step)
    seed_of = lambda key: int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1
    n, ab = 16, make_alpha_bar("linear", 1000)
    idx = torch.randperm(len(trainer.train_x), generator=torch.Generator().manual_seed(seed_of(f"{trainer.cfg.seed}:epoch:0")))[:n]
    g = torch.Generator().manual_seed(seed_of(f"{trainer.cfg.seed}:0"))
    t = torch.randint(0, 1000, (n,), generator=g)
    eps = torch.randn(n, 2, generator=g)
    x0 = trainer.train_x[idx].double()
    sigma = ((1 - ab[t]) / ab[t]).sqrt()[:, None]
    (x_t, t_seen), = seen
    sd, x = sigma_data, x0 + sigma * eps
    assert torch.allclose(x_t.double(), x / (sd**2 + sigma**2).sqrt(), atol=1e-6)  # EDM's c_in; DDPM's x_t for sigma_data = 1
    assert torch.allclose(t_seen.double(), t.double(), atol=1e-6)  # the network is told the timestep of that sigma
    # v: Salimans & Ho's v = sqrt(a) eps - sqrt(1 - a) x0 at sigma_data = 1; in general minus EDM's F target (Karras et al., eq. 8)
    edm_f = (x0 - sd**2 / (sigma**2 + sd**2) * x) / (sigma * sd / (sigma**2 + sd**2).sqrt())
    target = {"eps": eps.double(), "x0": x0, "v": -edm_f}[prediction]
    if sd == 1:
        assert torch.allclose(target, {"eps": eps.double(), "x0": x0, "v": (eps - sigma * x0) / (1 + sigma**2).sqrt()}[prediction])
    assert loss == pytest.approx(target.pow(2).mean().item(), rel=1e-5)  # L_simple: plain MSE on the target


def test_ema_follows_its_closed_form():
    """ema_k = d_k ema_{k-1} + (1 - d_k) p_k with d_k = min(decay, (1 + k) / (10 + k)), from the first weights."""
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(-3.0)
    ema = EMA(net, decay=0.9)
    expected = -3.0
    for k in range(1, 40):
        with torch.no_grad():
            net.weight.fill_(float(k))
        ema.update(net)
        d = min(0.9, (1 + k) / (10 + k))
        expected = d * expected + (1 - d) * k
        assert ema.model.weight.item() == pytest.approx(expected, rel=1e-6), k
    assert ema.updates == 39


def test_sampling_uses_the_ema_weights_unless_told_otherwise_and_resume_keeps_the_ema_count(tmp_path):
    from diffctl.runtime import load_trained

    trainer = make_trainer(tmp_path, "trainer.steps=3", "trainer.ckpt_every=0")
    trainer.fit()
    path = list_checkpoints(tmp_path / "checkpoints")[-1]
    state = load_checkpoint(path)
    for ema, key in ((True, "ema"), (False, "model")):
        net = load_trained(path, torch.device("cpu"), ema=ema).net
        assert all(torch.equal(v, state[key][k]) for k, v in net.state_dict().items()), key
    assert not all(torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])  # the two differ
    resumed = make_trainer(tmp_path, "trainer.steps=5", "trainer.ckpt_every=0")
    resumed.fit()
    assert resumed.ema.updates == 5 and load_checkpoint(list_checkpoints(tmp_path / "checkpoints")[-1])["ema_updates"] == 5


@pytest.mark.slow  # measures learning: keeps its size (about 20 s on 2 cores), so not in the fast selection
def test_a_short_run_learns_the_mixture_to_near_the_exact_denoisers_quality(tmp_path):
    """The MLP on the 8-component mixture, 1,000 steps: its samples are as close to the data (sliced
    Wasserstein) as the exact denoiser's samples are, within a margin far below what an untrained
    or mis-trained network gets."""
    from diffctl.config import load_option
    from diffctl.core.diffusion import Denoiser
    from diffctl.data.toy2d import oracle
    from diffctl.generation import generate
    from diffctl.metrics.distances import sliced_wasserstein

    trainer = make_trainer(tmp_path, "dataset=gmm", "model=mlp", "schedule=linear", "trainer.steps=1000", "trainer.batch_size=256",
                           "trainer.ckpt_every=0", "trainer.log_every=0", "trainer.precision=fp32", "optim.warmup_steps=50",
                           "optim.lr=0.003", "trainer.ema_decay=0.995")
    trainer.save = lambda: None
    trainer.snapshot = lambda: None
    trainer.fit()
    ab, cfg = trainer.task.alpha_bar, load_option("sampler", "ddim")
    truth = trainer.data.test[:2000]
    model = generate(Denoiser(trainer.ema.model, ab, "v"), ab, cfg, 50, 2000, (2,), seed=1).samples
    exact = generate(oracle(), ab, cfg, 50, 2000, (2,), seed=1).samples
    swd_model, swd_exact = sliced_wasserstein(model, truth), sliced_wasserstein(exact.float(), truth)
    untrained = make_trainer(tmp_path / "u", "dataset=gmm", "model=mlp", "schedule=linear")
    swd_untrained = sliced_wasserstein(generate(Denoiser(untrained.net, ab, "v"), ab, cfg, 50, 2000, (2,), seed=1).samples, truth)
    assert swd_model < swd_exact + 0.05 < swd_untrained / 4, (swd_model, swd_exact, swd_untrained)


def test_a_checkpoint_samples_with_its_own_prediction_type_schedule_and_weights(tmp_path):
    """sample/eval rebuild the denoiser from the checkpoint's config (here v-prediction on the linear
    schedule with EDM's sigma_data = 0.5, not the eps/cosine/1 defaults) and use its EMA weights unless ema=false:
    D(x, sigma) equals EDM's c_skip x + c_out F(c_in x) with F = -v, computed here from the stored weights."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from diffctl.models import build_model
    from diffctl.runtime import load_source

    trainer = make_trainer(tmp_path / "run", "model.prediction=v", "model.sigma_data=0.5", "schedule=linear", "trainer.steps=2", "trainer.ckpt_every=0")
    trainer.fit()
    path = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    state = load_checkpoint(path)
    ab = make_alpha_bar("linear", 1000)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma, sd = torch.tensor(0.8, dtype=torch.float64), 0.5
    c_in, c_skip, c_out = 1 / (sigma**2 + sd**2).sqrt(), sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2).sqrt()  # EDM, Table 1
    t = torch.full((3,), float(torch.searchsorted(((1 - ab) / ab).sqrt(), sigma)))  # between two training timesteps
    for ema in (True, False):
        GlobalHydra.instance().clear()
        with initialize_config_module("diffctl.configs", version_base="1.3"):
            cfg = compose("sample", overrides=[f"ckpt={path}", f"ema={str(ema).lower()}", f"paths.output_root={tmp_path}"])
        source = load_source(cfg, torch.device("cpu"))
        assert source.prediction == "v" and torch.equal(source.alpha_bar, ab)
        net = build_model(trainer.cfg.model, (1, 8, 8))
        net.load_state_dict(state["ema" if ema else "model"])
        x_in = (x * c_in).float()
        ls = ((1 - ab) / ab).sqrt().log()  # the continuous timestep of sigma: log-sigma interpolation between neighbours
        hi = int(t[0])
        tc = (hi - 1) + (sigma.log() - ls[hi - 1]) / (ls[hi] - ls[hi - 1])
        with torch.no_grad():
            v = net(x_in, torch.full((3,), tc.item())).double()
        expected = c_skip * x - c_out * v  # v is minus EDM's F
        assert torch.allclose(source.denoise(x, sigma), expected, atol=1e-5), ema


def test_a_checkpoint_from_before_an_option_existed_resumes_and_samples_with_its_default(tmp_path):
    """Checkpoints written before model.sigma_data existed trained with sigma_data = 1: they resume on the
    same branch and load with it.  One whose EDM loss weight used the removed loss.sigma_data is not resumed
    (the new weighting would change its objective), but still samples."""
    from diffctl.errors import UsageError
    from diffctl.runtime import load_trained

    run = tmp_path / "run"
    make_trainer(run, "trainer.steps=2", "trainer.ckpt_every=0").fit()
    path = list_checkpoints(run / "checkpoints")[-1]
    state = load_checkpoint(path)
    del state["config"]["model"]["sigma_data"]
    torch.save(state, path)
    assert load_trained(path, torch.device("cpu")).cfg.model.sigma_data == 1.0
    again = make_trainer(run, "trainer.steps=4", "trainer.ckpt_every=0")
    assert again.fit()["steps"] == 4 and again.branch == 0

    edm = tmp_path / "edm"
    make_trainer(edm, "loss=edm", "trainer.steps=2", "trainer.ckpt_every=0").fit()
    path = list_checkpoints(edm / "checkpoints")[-1]
    state = load_checkpoint(path)
    del state["config"]["model"]["sigma_data"]
    state["config"]["loss"]["sigma_data"] = 0.5
    torch.save(state, path)
    with pytest.raises(UsageError, match=r"it was trained with loss.sigma_data=0.5 \(now None\)"):
        make_trainer(edm, "loss=edm", "trainer.steps=4").fit()
    assert load_trained(path, torch.device("cpu")).step == 2


@pytest.mark.parametrize("accumulate", [2, 3])
def test_accumulated_micro_batches_take_the_step_of_the_whole_batch(tmp_path, accumulate):
    """trainer.accumulate=k splits the same global batch (same draws) into k micro-batches: 64 = 2 x 32 (or
    22 + 21 + 21) gives the losses and weights of one batch of 64, to float rounding."""
    def fit(folder, k):
        trainer = make_trainer(tmp_path / folder, "trainer.precision=fp32", "trainer.batch_size=64", f"trainer.accumulate={k}",
                               "trainer.steps=3", "trainer.log_every=1", "trainer.ckpt_every=0", "trainer.eval_every=0")
        trainer.fit()
        return trainer

    one, split = fit("one", 1), fit("split", accumulate)
    from conftest import logged_losses

    for a, b in zip(logged_losses(tmp_path / "one"), logged_losses(tmp_path / "split")):
        assert a[0] == b[0] and a[1] == pytest.approx(b[1], rel=1e-5) and a[3] == pytest.approx(b[3], rel=1e-4)
    for (name, p), q in zip(one.net.state_dict().items(), split.net.state_dict().values()):
        assert torch.allclose(p, q, atol=2e-6, rtol=1e-4), name


def test_precision_auto_takes_bf16_on_a_cpu_only_where_it_has_bf16_kernels(tmp_path, caplog):
    """On an AVX2-only CPU (no AVX-512, no AMX) bf16 autocast is emulated, 8.5x slower than fp32 on a tiny UNet's step:
    auto picks fp32 there, and an explicit bf16 warns.  The oracle is the CPU's own flags in /proc/cpuinfo."""
    import platform
    from pathlib import Path

    from diffctl.runtime import resolve_precision

    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() != "x86_64" or not cpuinfo.exists():
        pytest.skip("reads the x86 flags of /proc/cpuinfo")
    flags = set(next(l for l in cpuinfo.read_text().splitlines() if l.startswith("flags")).split(":", 1)[1].split())
    fast = {"avx512bw", "avx512vl", "avx512dq"} <= flags or "amx_bf16" in flags
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if fast else "fp32")
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16" and resolve_precision("fp32", torch.device("cpu")) == "fp32"
    with caplog.at_level("WARNING", logger="diffctl.train"):
        make_trainer(tmp_path, "trainer.precision=bf16", "trainer.steps=1")
    assert ("without native bf16 kernels" in caplog.text) is not fast
