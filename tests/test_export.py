"""diffctl export: safetensors weights and a JSON config that rebuild the model, inside diffctl and out."""

import json

import numpy as np
import torch
from conftest import TINY_TRAIN, assert_one_line_error, run_folder

from diffctl.io.checkpoint import list_checkpoints, load_checkpoint


def test_an_export_holds_the_ema_weights_and_samples_as_its_checkpoint(diffctl):
    from safetensors.torch import load_file

    run = run_folder(diffctl("train", *TINY_TRAIN))
    export = run_folder(diffctl("export", f"ckpt={run}"))
    state = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])
    weights = load_file(str(export / "model.safetensors"))  # safetensors' own reader: no diffctl needed
    assert weights.keys() == state["ema"].keys() and all(torch.equal(weights[k], state["ema"][k]) for k in weights)
    record = json.loads((export / "diffctl.json").read_text())
    assert record["step"] == 4 and record["weights"] == "ema" and record["data_shape"] == [1, 8, 8]
    assert record["config"]["model"] == state["config"]["model"]

    raw = run_folder(diffctl("export", f"ckpt={run}", "ema=false"))
    assert all(torch.equal(load_file(str(raw / "model.safetensors"))[k], state["model"][k]) for k in state["model"])

    a = run_folder(diffctl("sample", f"ckpt={export}", "steps=4", "num_samples=8"))
    b = run_folder(diffctl("sample", f"ckpt={run}", "steps=4", "num_samples=8"))
    assert np.array_equal(np.load(a / "samples.npz")["images"], np.load(b / "samples.npz")["images"])
    assert json.loads((a / "sample.json").read_text())["checkpoint_step"] == 4


def test_broken_exports_are_one_line_errors(tmp_path, cli, diffctl):
    run = run_folder(diffctl("train", *TINY_TRAIN))
    export = run_folder(diffctl("export", f"ckpt={run}"))
    assert_one_line_error(cli("export", "format=onnx"), "export", "format='onnx' is not allowed; choose from: safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert_one_line_error(cli("sample", f"ckpt={tmp_path / 'junk.safetensors'}"), "sample", "is not a diffctl export")
    record = (export / "diffctl.json").read_text()
    (export / "diffctl.json").write_text("[1, 2]")
    assert_one_line_error(cli("sample", f"ckpt={export}"), "sample", "is not a diffctl export record")
    (export / "diffctl.json").write_text(record)
    (export / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    assert_one_line_error(cli("sample", f"ckpt={export}"), "sample", "cannot read the export")
