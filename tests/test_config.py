"""Every option of every group composes with the real configs and builds what it names."""

from importlib import resources

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from diffctl import validation
from diffctl.config import GROUPS, option_schema, register_schemas
from diffctl.core.schedules import SPACINGS
from diffctl.data import load_dataset
from diffctl.models import build_model, count_parameters
from diffctl.runtime import schedule_alpha_bar
from diffctl.validation import validate

COMMANDS = {"train": ["dataset", "model", "schedule", "sampler", "loss", "trainer", "optim", "paths", "logger"],
            "sample": ["sampler", "dataset", "schedule", "paths"], "eval": ["sampler", "dataset", "schedule", "paths"], "inspect_schedule": ["schedule", "dataset", "sampler", "paths"]}


def options(group):
    folder = resources.files("diffctl.configs") / group
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _compose(name, overrides=()):
    GlobalHydra.instance().clear()
    register_schemas()
    with initialize_config_module("diffctl.configs", version_base="1.3"):
        return compose(name, overrides=list(overrides))


CASES = [(cmd, g, o) for cmd, groups in COMMANDS.items() for g in groups for o in options(g)]


@pytest.mark.parametrize("command,group,option", CASES, ids=[f"{c}-{g}={o}" for c, g, o in CASES])
def test_every_option_composes_and_validates(command, group, option):
    cfg = _compose(command, [f"{group}={option}"])
    validate(cfg)
    assert OmegaConf.select(cfg, group) is not None


def test_group_options_are_the_documented_names():
    assert options("dataset") == ["celeba", "cifar10", "digits", "digits_gmm", "fashion_mnist", "folder", "gmm", "gmm1d", "mnist", "mnist5k",
                                  "moons", "swiss_roll"]
    assert options("experiment") == ["ddpm_cifar10", "edm_cifar10", "iddpm_cifar10"]
    assert options("model") == ["diffusers_unet", "mlp", "unet_base", "unet_small", "unet_tiny"]
    assert options("schedule") == ["cosine", "edm", "linear", "scaled_linear", "sigmoid"]
    assert options("sampler") == ["ddim", "ddpm", "dpmpp_2m", "dpmpp_2m_sde", "euler", "euler_ancestral", "heun", "unipc"]
    assert options("loss") == ["edm", "min_snr", "simple"]


@pytest.mark.parametrize("model", ["unet_tiny", "unet_small", "unet_base"])
def test_unet_options_build_and_run_on_digits(model):
    cfg = _compose("train", [f"model={model}"])
    data = load_dataset(cfg.dataset)
    net = build_model(cfg.model, data.shape)
    out = net(data.train[:2], torch.tensor([0.0, 999.0]))
    assert out.shape == (2, 1, 8, 8) and count_parameters(net) > 0


@pytest.mark.parametrize("dataset", ["swiss_roll", "moons", "gmm"])
def test_mlp_builds_on_toy2d(dataset):
    cfg = _compose("train", [f"dataset={dataset}", "model=mlp", "dataset.num_train=100", "dataset.num_test=50"])
    data = load_dataset(cfg.dataset)
    assert data.train.shape == (100, 2) and data.test.shape == (50, 2) and data.levels is None
    assert build_model(cfg.model, data.shape)(data.train[:3], torch.zeros(3)).shape == (3, 2)


def test_model_and_data_mismatch_is_a_clear_error():
    cfg = _compose("train", ["dataset=moons", "model=unet_tiny"])
    with pytest.raises(ValueError, match="use model=mlp"):
        build_model(cfg.model, load_dataset(cfg.dataset).shape)


@pytest.mark.parametrize("schedule", options("schedule"))
def test_schedule_options_give_decreasing_alpha_bar(schedule):
    ab = schedule_alpha_bar(_compose("train", [f"schedule={schedule}"]).schedule)
    assert ab.shape == (1000,) and (ab[1:] <= ab[:-1]).all() and 0 < ab[-1] < ab[0] < 1
    ztsnr = schedule_alpha_bar(_compose("train", [f"schedule={schedule}", "schedule.zero_terminal_snr=true"]).schedule)
    assert ztsnr[-1] <= ab[-1] and ztsnr[-1] < 1e-6 and (ztsnr[1:] < ztsnr[:-1]).all()


@pytest.mark.parametrize("group", list(GROUPS))
def test_shipped_options_hold_only_what_differs_from_the_code(group):
    """Every option YAML names a registered choice and restates none of its defaults: the function's signature
    (or the group's shared fields) is the one place a default is written."""
    registry, base = GROUPS[group]
    for option in options(group):
        text = (resources.files("diffctl.configs") / group / f"{option}.yaml").read_text()
        raw = OmegaConf.create(text)
        if not raw:  # logger=none: selects nothing
            continue
        choice = next(str(d).split("@")[0][len(f"/schema_{group}_"):] for d in raw.pop("defaults") if str(d).startswith("/schema_"))
        assert choice in registry, (group, option)
        schema = OmegaConf.structured(option_schema(group, choice))
        for key in raw:
            assert key in schema, (option, key)
            if not (OmegaConf.is_interpolation(raw, key) or OmegaConf.is_missing(raw, key)):
                assert raw[key] != schema[key], f"{group}/{option}.yaml restates {key}={raw[key]}"
    if group != "model":  # model options are sized presets of a registered architecture; every other choice has its YAML
        assert set(options(group)) - {"none"} == set(registry.names()) - {"none"}


def test_choices_come_from_the_registries():
    from diffctl.core.samplers import SAMPLERS

    assert validation.CHOICES["sampler.spacing"] == SPACINGS.names() == ("leading", "trailing", "linspace", "karras")
    assert sorted(SAMPLERS) == options("sampler")
    with pytest.raises(ValueError, match="unknown sampler 'nope'; choose from: ddim, ddpm"):
        SAMPLERS["nope"]
    assert {"a": 1} not in SAMPLERS and ["ddim"] not in SAMPLERS  # what a crafted checkpoint may hold: no TypeError
    with pytest.raises(ValueError, match="unknown sampler"):
        SAMPLERS.build({"name": {"a": 1}})


@pytest.mark.parametrize("override,ok", [
    ("sampler.S_tmax=inf", True), ("sampler.S_tmax=1e9", True), ("sampler.S_tmax=nan", False), ("sampler.S_churn=inf", False),
    ("sampler.S_tmax=-inf", False),
])
def test_only_an_unlimited_default_may_be_infinite(override, ok):
    cfg = _compose("sample", ["sampler=heun", override])
    if ok:
        validate(cfg)
    else:
        with pytest.raises(ValueError, match="is not a finite number"):
            validate(cfg)


def test_heuns_default_churn_window_is_unlimited():
    assert _compose("sample", ["sampler=heun"]).sampler.S_tmax == float("inf")


def test_digits_split_and_scaling():
    data = load_dataset(_compose("train").dataset)
    assert len(data.train) == 1497 and len(data.test) == 300 and data.levels == 17 and data.num_classes == 10
    assert data.train.min() == -1 and data.train.max() == 1


@pytest.mark.parametrize("override,match", [
    ("+model.foo=1", "unknown key model.foo"),
    ("model.prediction=z", "choose from: eps, x0, v"),
    ("trainer.precision=fp8", "choose from: auto, bf16, fp16, fp32"),
    ("sampler.spacing=odd", "leading, trailing, linspace"),
    ("device=tpu", "choose from: auto, cpu"),
])
def test_validate_rejects_bad_values(override, match):
    with pytest.raises(ValueError, match=match):
        validate(_compose("train", [override]))


def test_schemas_another_store_replaced_are_stored_again(tmp_path, monkeypatch):
    """Shell completion stores its cached schemas (plain dicts, no torch) under the schemas' names; a command composed
    after it in the same process got those untyped nodes, and a key added with + passed unchecked."""
    from diffctl.completion import _config_loader

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _compose("train")  # the typed schemas stored
    _config_loader()
    with pytest.raises(ValueError, match="unknown key model.foo"):
        validate(_compose("train", ["+model.foo=1"]))


def test_output_root_follows_env(monkeypatch):
    monkeypatch.setenv("DIFFCTL_OUTPUT_ROOT", "/somewhere/else")
    assert _compose("train").paths.output_root == "/somewhere/else"


@pytest.mark.parametrize("experiment,expect", [
    ("ddpm_cifar10", {"dataset.name": "cifar10", "schedule.name": "linear", "model.channels": 128, "optim.lr": 2e-4,
                      "trainer.batch_size": 128, "trainer.ema_decay": 0.9999, "sampler.name": "ddpm", "dataset.hflip": True}),
    ("iddpm_cifar10", {"schedule.name": "cosine", "schedule.timesteps": 4000, "model.num_res_blocks": 3, "model.dropout": 0.3,
                       "optim.lr": 1e-4}),
    ("edm_cifar10", {"schedule.name": "edm", "schedule.sigma_max": 80.0, "loss.name": "edm", "model.sigma_data": 0.5,
                     "sampler.name": "heun", "sampler.spacing": "karras", "trainer.sample_steps": 18, "model.prediction": "v"}),
])
def test_experiment_presets_compose_with_the_published_hyper_parameters(experiment, expect):
    from omegaconf import OmegaConf

    cfg = _compose("train", [f"experiment={experiment}", "trainer.steps=10"])
    validate(cfg)
    assert {k: OmegaConf.select(cfg, k) for k in expect} == expect and cfg.trainer.steps == 10  # the command line still wins
