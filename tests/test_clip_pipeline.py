"""The Stable Diffusion shape, with files this test writes itself (nothing is downloaded): a tiny KL
autoencoder, a tiny CLIP text encoder and tokenizer saved as a local Hugging Face folder, and a
cross-attention UNet that trains in the latent space on CLIP's tokens, with CLIP frozen, and samples
from a prompt."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_folder

from diffctl.io.checkpoint import list_checkpoints, load_checkpoint

transformers = pytest.importorskip("transformers")

AE = ["task=autoencoder", "autoencoder.downsample=2", "trainer.steps=20", "trainer.batch_size=32", "trainer.sample_every=0",
      "trainer.log_every=20", "trainer.eval_every=0", "optim.warmup_steps=5"]
UNET = ["model=unet_tiny", "model.prediction=v", "model.context_dim=24", "trainer.steps=6", "trainer.batch_size=8", "trainer.sample_every=0",
        "trainer.num_grid=10", "trainer.sample_steps=3", "trainer.log_every=3", "trainer.eval_every=0", "optim.warmup_steps=1"]


def tiny_clip(folder):
    """A 2-layer, 32-wide CLIP text model and a character-level CLIP BPE tokenizer (a few merges), saved as
    CLIPTextModel / CLIPTokenizer save them."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.mkdir(parents=True)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = ["t h", "th e</w>", "d i", "di g", "dig i", "digi t</w>"]
    for m in merges:
        vocab[m.replace(" ", "")] = len(vocab)
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16).save_pretrained(folder)
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            max_position_embeddings=16, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                            pad_token_id=vocab["<|endoftext|>"])
    CLIPTextModel(config).save_pretrained(folder)
    return folder


def test_a_clip_folder_missing_files_is_a_one_line_error(cli, tmp_path):
    folder = tiny_clip(tmp_path / "clip")
    args = ["cond=clip", "model=unet_tiny", "trainer.steps=1"]
    assert_one_line_error(cli("train", *args), "train", "cond=clip needs cond.path=<a local Hugging Face CLIP folder>")
    (folder / "model.safetensors").unlink()
    (folder / "tokenizer.json").unlink()
    (folder / "merges.txt").unlink()
    assert_one_line_error(cli("train", *args, f"cond.path={folder}"), "train", "is missing model.safetensors or pytorch_model.bin, merges.txt")


@pytest.mark.slow
def test_stable_diffusion_shaped_pipeline_trains_with_clip_frozen_and_samples_from_a_prompt(diffctl, cli, tmp_path):
    from safetensors.torch import load_file

    clip = tiny_clip(tmp_path / "clip")
    diffctl("train", *AE)
    run = run_folder(diffctl("train", "cond=clip", f"cond.path={clip}", "latent.autoencoder=latest", *UNET))
    state = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])
    assert state["cond"]["name"] == "clip" and state["cond"]["path"] == str(clip) and state["data_shape"] == [4, 4, 4]
    original = load_file(clip / "model.safetensors")
    for key in ("model", "ema"):  # frozen: CLIP's weights in the checkpoint are the folder's, after training
        weights = {k.split("encoder.clip.", 1)[1]: v for k, v in state[key].items() if k.startswith("encoder.clip.")}
        assert set(original) <= set(weights) and all(torch.equal(weights[k], original[k]) for k in original)
        assert any(not torch.equal(v, state["ema"][k]) for k, v in state["model"].items() if k.startswith("net."))  # the UNet trained
    assert "encoder.proj.weight" in state["model"]  # CLIP's 32-wide states projected to model.context_dim=24
    out = run_folder(diffctl("sample", "prompt=the digit 3", "guidance.scale=2", "num_samples=4", "steps=3"))
    record = json.loads((out / "sample.json").read_text())
    assert record["prompts"] == ["the digit 3"] * 4 and record["labels"] == [3] * 4 and record["nfe"] == 6
    assert np.load(out / "samples.npz")["images"].shape == (4, 8, 8, 1)  # decoded from 4x4x4 latents
    shutil.move(clip, tmp_path / "moved")
    assert_one_line_error(cli("sample", "prompt=the digit 3", "steps=2"), "sample", f"the CLIP folder {clip}, which is not there any more")
