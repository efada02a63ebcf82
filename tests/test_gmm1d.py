"""dataset=gmm1d: the 1-D Gaussian mixture, its exact denoiser, the closed-form density of x_t, and the 1-D pictures
of ``diffctl inspect-schedule`` and ``diffctl sample``.

The expected mixture and every density below are written out here from the textbook formulas (not taken from
the package), and the thresholds come from sampling theory: standard errors for moments, and the
Dvoretzky-Kiefer-Wolfowitz bound P(sup |F_n - F| > eps) <= 2 exp(-2 n eps^2) for empirical CDFs.
"""

import json
import math

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_folder
from PIL import Image

from diffctl.config import load_option
from diffctl.core.diffusion import q_sample
from diffctl.data import load_dataset
from diffctl.generation import Conditioning, generate
from diffctl.io.plots1d import forward_density
from diffctl.runtime import schedule_alpha_bar
from diffctl.trajectories import trajectories

MEANS = torch.tensor([-1.0, 0.5, 1.5], dtype=torch.float64)
STDS = torch.tensor([0.3, 0.15, 0.1], dtype=torch.float64)
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
MEAN = float((WEIGHTS * MEANS).sum())  # -0.05
VAR = float((WEIGHTS * (STDS**2 + MEANS**2)).sum()) - MEAN**2  # 1.07625


def normal_pdf(x, mu, var):
    return torch.exp(-(x - mu) ** 2 / (2 * var)) / torch.sqrt(2 * math.pi * torch.as_tensor(var, dtype=torch.float64))


def mixture_pdf(x, alpha_bar=1.0):
    """q_t(x_t) for x_t = sqrt(a) x0 + sqrt(1 - a) eps: sum_k w_k N(sqrt(a) mu_k, a s_k^2 + 1 - a), ``x`` [M] -> [M]."""
    a = torch.as_tensor(alpha_bar, dtype=torch.float64)
    return (WEIGHTS * normal_pdf(x[:, None], a.sqrt() * MEANS, a * STDS**2 + 1 - a)).sum(1)


def mixture_cdf(x, alpha_bar=1.0):
    a = torch.as_tensor(alpha_bar, dtype=torch.float64)
    sd = (a * STDS**2 + 1 - a).sqrt()
    return (WEIGHTS * 0.5 * (1 + torch.erf((x[:, None] - a.sqrt() * MEANS) / (sd * math.sqrt(2))))).sum(1)


def ks_distance(samples, cdf) -> float:
    """sup_x |F_n(x) - F(x)| of 1-D ``samples`` against the CDF function ``cdf``."""
    x = samples.double().flatten().sort().values
    n, f = len(x), cdf(x)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return max((i / n - f).abs().max().item(), (f - (i - 1) / n).abs().max().item())


def dkw(n: int, delta: float = 1e-6) -> float:
    """The eps with P(KS distance of n exact draws > eps) <= delta (DKW with Massart's constant)."""
    return math.sqrt(math.log(2 / delta) / (2 * n))


@pytest.fixture(scope="module")
def data():
    return load_dataset(load_option("dataset", "gmm1d"))


@pytest.fixture(scope="module")
def linear():
    return schedule_alpha_bar(load_option("schedule", "linear"))


def test_dataset_samples_follow_the_closed_form_mixture(data):
    assert data.shape == (1,) and data.train.shape == (20000, 1) and data.test.shape == (5000, 1)
    assert data.levels is None and data.num_classes == 3 and not torch.equal(data.train[:100], data.test[:100])
    x, n = data.train.double().flatten(), len(data.train)
    mu4 = float((WEIGHTS * ((MEANS - MEAN) ** 4 + 6 * (MEANS - MEAN) ** 2 * STDS**2 + 3 * STDS**4)).sum())  # central 4th moment
    assert abs(x.mean().item() - MEAN) < 4 * math.sqrt(VAR / n)
    assert abs(x.var().item() - VAR) < 4 * math.sqrt((mu4 - VAR**2) / n)
    for k in range(3):  # each component: its share of the draws, its mean and its width
        part = x[data.train_labels == k]
        w, m, s = WEIGHTS[k].item(), MEANS[k].item(), STDS[k].item()
        assert abs(len(part) / n - w) < 4 * math.sqrt(w * (1 - w) / n), k
        assert abs(part.mean().item() - m) < 4 * s / math.sqrt(len(part)), k
        assert abs(part.std().item() - s) < 4 * s / math.sqrt(2 * len(part)), k
    assert ks_distance(data.test, mixture_cdf) < dkw(len(data.test))


def test_exact_denoiser_is_the_posterior_mean_by_numerical_integration(data):
    """E[x0 | x], E[x0 | x, k] and p(k | x) of x = x0 + sigma z, by quadrature over x0 on a fine grid."""
    oracle = data.oracle
    g = torch.linspace(-7, 7, 70001, dtype=torch.float64)  # spacing 2e-4: 100 points per sigma at the smallest sigma
    log_comp = WEIGHTS.log() - (g[:, None] - MEANS) ** 2 / (2 * STDS**2) - STDS.log()  # [G, K]: log w_k N(x0; mu_k, s_k^2) + const
    x = torch.tensor([-2.5, -1.0, -0.3, 0.2, 0.5, 0.9, 1.5, 3.0], dtype=torch.float64)
    for sigma in (0.02, 0.3, 1.0, 5.0):
        log_joint = (-(x[:, None] - g) ** 2 / (2 * sigma**2))[:, :, None] + log_comp  # [N, G, K]; constants cancel in every ratio
        joint = (log_joint - log_joint.amax(dim=(1, 2), keepdim=True)).exp()  # scaled per x (the whole mixture)
        mass = joint.sum(1)  # [N, K] (times the grid step, which cancels)
        torch.testing.assert_close(oracle(x[:, None], sigma).flatten(), (joint * g[:, None]).sum((1, 2)) / mass.sum(1), rtol=0, atol=1e-8)
        torch.testing.assert_close(oracle.log_posterior(x[:, None], sigma).exp(), mass / mass.sum(1, keepdim=True), rtol=0, atol=1e-8)
        alone = (log_joint - log_joint.amax(dim=1, keepdim=True)).exp()  # scaled per x and component
        for k in range(3):  # the class-conditional denoiser: component k alone
            y = torch.full((len(x),), k)
            expected = (alone[:, :, k] * g).sum(1) / alone[:, :, k].sum(1)
            torch.testing.assert_close(oracle(x[:, None], sigma, y).flatten(), expected, rtol=0, atol=1e-8)
    grid = torch.linspace(-6, 6, 24001, dtype=torch.float64)
    torch.testing.assert_close(oracle.log_density(grid[:, None]).exp(), mixture_pdf(grid), rtol=1e-12, atol=0)


def test_forward_density_is_the_closed_form_of_q_sample(data, linear):
    xs = torch.linspace(-9, 9, 18001, dtype=torch.float64)
    ts, dens = forward_density(data.oracle, linear, xs, columns=40)  # what the heat maps draw
    dens = torch.from_numpy(dens)
    assert ts[0] == 0 and ts[-1] == len(linear) - 1
    for j, t in enumerate(ts):
        a = linear[t].item()
        torch.testing.assert_close(dens[:, j], mixture_pdf(xs, a), rtol=1e-10, atol=1e-14)
        assert torch.trapezoid(dens[:, j], xs).item() == pytest.approx(1.0, abs=1e-7)
        mean = torch.trapezoid(xs * dens[:, j], xs).item()
        assert mean == pytest.approx(math.sqrt(a) * MEAN, abs=1e-7)  # E[x_t] = sqrt(a) E[x0]
        assert torch.trapezoid((xs - mean) ** 2 * dens[:, j], xs).item() == pytest.approx(a * VAR + 1 - a, abs=1e-6)
    # at t = T-1: N(0, 1) up to sup_x |N(x; a_k, v_k) - N(x; 0, 1)| <= |a_k| / (v_k sqrt(2 pi e)) + |v_k - 1| / (2 sqrt(2 pi) min(v, 1)^1.5)
    a = linear[-1].item()
    v = a * STDS**2 + 1 - a
    bound = (WEIGHTS * (math.sqrt(a) * MEANS.abs() / (v * math.sqrt(2 * math.pi * math.e))
                        + (v - 1).abs() / (2 * math.sqrt(2 * math.pi) * v.min() ** 1.5))).sum().item()
    gap = (dens[:, -1] - normal_pdf(xs, 0.0, 1.0)).abs().max().item()
    assert gap <= bound < 3e-3 and (dens[:, 0] - normal_pdf(xs, 0.0, 1.0)).abs().max().item() > 0.3
    # and it is the law of the project's forward process: q_sample of the data, against its CDF
    x0 = data.train.double()
    for t in (50, 250):
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        x_t = q_sample(x0, linear[t].expand(len(x0)), eps)
        assert ks_distance(x_t, lambda z: mixture_cdf(z, linear[t])) < dkw(len(x0)), t


@pytest.mark.parametrize("name", ["ddim", "ddpm", "heun"])
def test_trajectories_end_in_the_generated_samples(data, linear, name):
    """The recorded states are the sampler's own: they start at sigma_0 z of each item's seed and end in generate's items."""
    cfg = load_option("sampler", name)
    sigmas, states = trajectories(data.oracle, linear, cfg, 10, 5, (1,), seed=3)
    assert sigmas.shape == (11,) and states.shape == (11, 5, 1) and sigmas[-1] == 0
    z = torch.stack([torch.randn(1, generator=torch.Generator().manual_seed(3 + i), dtype=torch.float64) for i in range(5)])
    torch.testing.assert_close(states[0], (sigmas[0] * z).float())
    samples = generate(data.oracle, linear, cfg, 10, 9, (1,), seed=3, batch_size=4).samples  # other batches: the same items
    if name == "ddim":  # every recorded state is the one DDIM's update (eq. 12, eta = 0) makes from the one before
        x, s = states[:-1].double(), sigmas.double()
        d = torch.stack([data.oracle(x[i], s[i]) for i in range(10)])
        torch.testing.assert_close(states[1:].double(), d + s[1:, None, None] * (x - d) / s[:-1, None, None], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(states[-1], samples[:5], rtol=0, atol=1e-6)
    labels = torch.tensor([0, 2, 1, 2, 0, 1])  # steered (class-conditional): the same steering as generate's
    cond = Conditioning(labels=labels, null=torch.tensor(3))
    sigmas, states = trajectories(data.oracle, linear, cfg, 10, 3, (1,), seed=3, cond=cond)
    torch.testing.assert_close(states[-1], generate(data.oracle, linear, cfg, 10, 6, (1,), seed=3, cond=cond).samples[:3], rtol=0, atol=1e-6)


def test_oracle_samples_follow_the_true_density(data, linear):
    """KS distance to the true CDF within the DKW bound of exact draws (failure probability 1e-6).  The step counts keep
    the samplers' own error below it: with 200 DDIM steps the last nonzero sigma is 0.026, where the final x0 = D(x, sigma)
    (a posterior mean, of std s^2 / sqrt(s^2 + sigma^2) within a component) narrows the components by 3.2%, 1.5% and 0.4%,
    a CDF change under sum_k w_k delta_k / sqrt(2 pi e) < 0.003 (20 DDIM steps end at sigma 0.17 and fail it: 0.038)."""
    ddim = generate(data.oracle, linear, load_option("sampler", "ddim"), 200, 20000, (1,), seed=0, batch_size=20000).samples
    assert ks_distance(ddim, mixture_cdf) < dkw(20000)
    ddpm = generate(data.oracle, linear, load_option("sampler", "ddpm"), 100, 2000, (1,), seed=0, batch_size=2000).samples
    assert ks_distance(ddpm, mixture_cdf) < dkw(2000)


def folder_of(out: str):
    return run_folder(type("Proc", (), {"stdout": out, "stderr": ""}))


def _picture(path, min_width=500):
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width >= min_width and img.height >= 250, (path, img.size)
        assert len(np.unique(np.asarray(img.convert("L")))) > 50  # drawn, not blank


def test_inspect_and_oracle_sample_write_the_1d_pictures(diffctl, cli):
    code, out, err = cli("inspect-schedule", "dataset=gmm1d", "schedule=linear", "compare=[cosine]")
    assert code == 0, err
    folder = folder_of(out)
    _picture(folder / "schedule.png")
    _picture(folder / "forward.png")
    assert Image.open(folder / "forward.png").height > Image.open(folder / "schedule.png").height  # one row per schedule
    sample = run_folder(diffctl("sample", "ckpt=oracle", "dataset=gmm1d", "sampler=ddim", "steps=20", "num_samples=300"))
    record = json.loads((sample / "sample.json").read_text())
    assert record["trajectories"] == str(sample / "trajectories.png") and record["grid"] == str(sample / "grid.png")
    _picture(sample / "trajectories.png", min_width=900)
    _picture(sample / "grid.png")
    x = np.load(sample / "samples.npz")["x"]
    assert x.shape == (300, 1) and np.isfinite(x).all()


def test_train_sample_eval_on_gmm1d(cli, tmp_path):
    code, out, err = cli("train", "dataset=gmm1d", "model=mlp", "dataset.num_train=500", "dataset.num_test=200", "trainer.steps=4",
                         "trainer.batch_size=16", "trainer.sample_every=2", "trainer.sample_steps=3", "trainer.num_grid=16",
                         "trainer.log_every=2", "trainer.eval_every=2", "optim.warmup_steps=1")
    assert code == 0, err
    run = next((tmp_path / "outputs" / "train").glob("*/*"))
    _picture(run / "samples" / "step_00000004.png", min_width=400)  # the 1-D snapshot: a histogram against the data
    code, out, err = cli("sample", "ckpt=latest", "steps=3", "num_samples=20")
    assert code == 0, err
    assert (folder_of(out) / "trajectories.png").exists()
    code, out, err = cli("eval", "ckpt=latest", "steps=2", "num_samples=200", "metrics=[test_loss,swd,logp_true,fd_ref]")
    assert code == 0, err
    report = json.loads((folder_of(out) / "metrics.json").read_text())
    assert {"swd", "logp_true", "test_loss"} <= set(report["metrics"]) and "fd_ref" in report["skipped"]


@pytest.mark.parametrize("args,message", [
    (["dataset.stds=[0.3,0.1]"], "need one number per component, at least one; got 3, 2 and 3"),
    (["dataset.weights=[0.5,0,0.5]"], "dataset.weights=[0.5, 0.0, 0.5]: 0.0 is not a positive number"),
    (["dataset.stds=[0.3,-0.1,0.2]"], "dataset.stds=[0.3, -0.1, 0.2]: -0.1 is not a positive number"),
])
def test_bad_mixture_options_are_one_line_errors(cli, args, message):
    assert_one_line_error(cli("sample", "ckpt=oracle", "dataset=gmm1d", *args), "sample", message)


def test_gmm1d_needs_the_mlp(cli):
    assert_one_line_error(cli("train", "dataset=gmm1d", "trainer.steps=2"), "train", "use model=mlp")
