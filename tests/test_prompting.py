"""Cross-attention conditioning (cond=class|text|clip): the attention reads only real tokens, a text encoder's
tokens do not depend on padding, templated captions keep held-out phrasings in the training vocabulary,
training draws a caption of each item's class, classifier-free guidance works with prompts, and bad
prompts are one-line errors."""

import json

import pytest
import torch
from conftest import assert_one_line_error, run_folder

from diffctl.errors import UsageError
from diffctl.models.context import PAD, ClassTokens, Conditioned, TextEncoder
from diffctl.models.unet import CrossAttention, UNet
from diffctl.prompting import DIGIT_WORDS, TextCond, templated_captions, words

FAST = ["trainer.steps=4", "trainer.batch_size=8", "trainer.sample_every=0", "trainer.num_grid=10", "trainer.sample_steps=2",
        "trainer.log_every=2", "trainer.eval_every=0", "optim.warmup_steps=1", "model=unet_tiny"]


class Digits:
    name, num_classes = "digits", 10


def test_cross_attention_is_attention_over_the_real_tokens_and_starts_as_the_identity():
    torch.manual_seed(0)
    att = CrossAttention(8, 6, heads=2)
    x, ctx = torch.randn(3, 8, 4, 4), torch.randn(3, 5, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(att(x, ctx, mask), x)  # zero-initialised output projection: the condition enters gradually
    torch.nn.init.normal_(att.proj.weight)
    out = att(x, ctx, mask)
    # written out by hand: softmax(q k^T / sqrt(d)) v per head over the real tokens only, then the projection, plus x
    h = att.norm(x).reshape(3, 8, 16).transpose(1, 2)
    q = att.q(h).reshape(3, 16, 2, 4)
    k, v = att.kv(ctx).reshape(3, 5, 2, 2, 4).unbind(2)
    expected = []
    for i in range(3):
        n = int(mask[i].sum())
        heads = [torch.softmax(q[i, :, j] @ k[i, :n, j].T / 2.0, dim=-1) @ v[i, :n, j] for j in range(2)]
        expected.append(att.proj(torch.cat(heads, dim=1)).T.reshape(8, 4, 4))
    assert torch.allclose(out, x + torch.stack(expected), atol=1e-5)
    # what padding holds does not matter
    ctx2 = ctx.clone()
    ctx2[~mask] = 100.0
    assert torch.allclose(att(x, ctx2, mask), out, atol=1e-6)


def test_text_encoder_tokens_do_not_depend_on_how_much_padding_follows():
    torch.manual_seed(0)
    enc = TextEncoder(vocab_size=12, max_len=10, dim=16, layers=2, heads=4)
    ids = torch.tensor([[1, 5, 7, 3]])
    short, mask_short = enc(ids)
    long, mask_long = enc(torch.cat([ids, torch.full((1, 6), PAD)], dim=1))
    assert mask_short.all() and mask_long[0, :4].all() and not mask_long[0, 4:].any()
    assert torch.allclose(long[:, :4], short, atol=1e-5)
    assert not torch.allclose(enc(torch.tensor([[1, 5, 8, 3]]))[0], short)  # a different word: different tokens


def test_templated_captions_hold_out_phrasings_of_the_training_words_and_name_their_class():
    caps = templated_captions("digits", 10)
    assert len(caps["train"]) == len(caps["heldout"]) == 10
    assert "the digit seven" in caps["train"][7] and "a handwritten 7" in caps["train"][7] and "the digit 7" in caps["heldout"][7]
    train_words = {w for per in caps["train"] for c in per for w in words(c)}
    seen = {c for per in caps["train"] for c in per}
    for k, per in enumerate(caps["heldout"]):
        assert not set(per) & seen  # held out: never a training caption
        assert {w for c in per for w in words(c)} <= train_words  # ... but made of training words
        assert any(str(k) in words(c) for c in per) and any(DIGIT_WORDS[k] in words(c) for c in per)
    cond = TextCond(Digits())
    assert all(cond.label_of(c) == k for part in caps.values() for k, per in enumerate(part) for c in per)
    assert cond.label_of("The Digit  SEVEN!") == 7 and cond.label_of("a seven") is None


def test_text_condition_encodes_prompts_and_refuses_unknown_words_in_one_line():
    cond = TextCond(Digits())
    ids = cond.encode(["the digit three", ""])
    assert ids[0, 0] == 1 and [cond.vocab[i] for i in ids[0, 1:4]] == ["the", "digit", "three"] and (ids[0, 4:] == PAD).all()
    assert torch.equal(ids[1], cond.null) and (cond.null[1:] == PAD).all()  # the empty prompt: the start token alone
    with pytest.raises(UsageError, match="'drawn' not in this model's vocabulary of 27 words"):
        cond.encode(["a drawn three"])
    skip = TextCond(Digits(), unknown_words="skip")
    assert torch.equal(skip.encode(["a drawn three"]), skip.encode(["a three"]))
    with pytest.raises(UsageError, match="reads at most cond.max_words=6"):
        TextCond(Digits(), max_words=6).encode(["the digit the digit the digit 3"])
    with pytest.raises(UsageError, match="the longest training caption has 6 words; cond.max_words=5"):
        TextCond(Digits(), max_words=5)  # "a picture of the number seven"


def test_training_draws_a_caption_of_each_items_class_and_drops_to_the_empty_prompt():
    cond = TextCond(Digits())
    y = torch.arange(10).repeat(200)
    g = torch.Generator().manual_seed(0)
    ids = cond.draw(None, y, 0.0, g)
    decoded = [" ".join(cond.vocab[i] for i in row[1:] if i != PAD) for row in ids.tolist()]
    assert [cond.label_of(c) for c in decoded] == y.tolist()
    assert set(decoded) == {c for per in cond.captions["train"] for c in per}  # every training phrasing is drawn
    assert not set(decoded) & {c for per in cond.captions["heldout"] for c in per}
    dropped = (cond.draw(None, y, 0.25, g) == cond.null).all(1).float().mean().item()
    assert dropped == pytest.approx(0.25, abs=0.03)


def test_a_conditioned_unet_ignores_its_prompt_at_initialisation_and_reads_it_once_trained():
    torch.manual_seed(0)
    cond = TextCond(Digits())
    net = Conditioned(UNet((1, 8, 8), channels=16, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], context_dim=32),
                      cond.encoder(32), cond.null)
    for m in net.modules():  # every block starts as the identity; perturb them so that the output depends on x and the prompt
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and not m.weight.abs().sum():
            torch.nn.init.normal_(m.weight, std=0.05)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 500.0])
    three, seven = cond.encode(["the digit three"] * 2), cond.encode(["the digit seven"] * 2)
    assert not torch.allclose(net(x, t, three), net(x, t, seven))
    assert torch.equal(net(x, t), net(x, t, cond.null.expand(2, -1)))  # no condition = the null prompt
    for m in net.modules():
        if isinstance(m, CrossAttention):
            torch.nn.init.zeros_(m.proj.weight)
            torch.nn.init.zeros_(m.proj.bias)
    assert torch.equal(net(x, t, three), net(x, t, seven))  # the prompt enters through cross-attention only
    assert ClassTokens(10, 32)(torch.tensor([3, 10]))[0].shape == (2, 1, 32)


def test_classifier_free_guidance_with_token_conditions_mixes_conditional_and_empty_prompt_outputs():
    from diffctl.core.guidance import classifier_free

    null = torch.tensor([1, 0, 0])
    def denoise(x, sigma, y):  # linear in a number read off the condition: y's id sum
        return x * y.sum(1, keepdim=True).to(x)

    x, y = torch.randn(2, 4), torch.tensor([[1, 5, 0], [1, 7, 2]])
    out = classifier_free(denoise, y, null, 3.0)(x, torch.tensor(1.0))
    assert torch.allclose(out, x * 1 + 3.0 * (x * torch.tensor([[6.0], [10.0]]) - x * 1))


def test_cli_prompts_sample_and_bad_prompts_are_one_line_errors(diffctl, cli, trained):
    run = trained("text")
    state = torch.load(next((run / "checkpoints").iterdir()), weights_only=True)
    assert state["cond"]["name"] == "text" and state["cond"]["vocab"][:4] == ["<pad>", "<bos>", "a", "handwritten"]
    out = run_folder(diffctl("sample", "prompts=heldout", "classes=[3,7]", "guidance.scale=2", "num_samples=6", "steps=2"))
    record = json.loads((out / "sample.json").read_text())
    assert record["prompts"][:3] == ["a handwritten three", "a handwritten seven", "the digit 3"]
    assert record["labels"] == [3, 7, 3, 7, 3, 7] and record["guidance"]["scale"] == 2.0 and record["nfe"] == 4
    free = json.loads((run_folder(diffctl("sample", "prompt=the digit 3 the digit", "num_samples=2", "steps=2")) / "sample.json").read_text())
    assert "labels" not in free and free["prompts"] == ["the digit 3 the digit"] * 2
    import diffctl  # the Python API takes prompts as the CLI does

    model = diffctl.load(run)
    three = model.sample(4, prompts="the digit three", guidance=2.0, steps=2)
    assert three.shape == (4, 1, 8, 8) and torch.equal(three, model.sample(4, prompts=["the digit three"], guidance=2.0, steps=2))
    assert not torch.equal(three, model.sample(4, prompts="the digit seven", guidance=2.0, steps=2))
    assert_one_line_error(cli("sample", "prompt=a drawn three", "steps=2"), "sample", "'drawn' not in this model's vocabulary")
    assert_one_line_error(cli("sample", "prompt=a three", "prompts=[a three]", "steps=2"), "sample", "not both")
    assert_one_line_error(cli("sample", "prompts=validation", "steps=2"), "sample", "one of train, heldout")
    assert_one_line_error(cli("sample", "prompt=a three", "guidance.classifier=oracle", "steps=2"), "sample", "prompts whose class is known")
    assert_one_line_error(cli("train", "cond=text", "cond.unknown_words=guess", *FAST), "train", "cond.unknown_words='guess' is not allowed")
    assert_one_line_error(cli("train", "cond=text", "model=mlp", *FAST[:-1]), "train", "model.arch=mlp has not")
    assert_one_line_error(cli("train", "cond=text", "dataset=swiss_roll", *FAST), "train", "needs a labelled dataset")
    assert_one_line_error(cli("train", "cond=class", "model.num_classes=10", *FAST), "train", "keep one")


def test_a_prompt_for_an_unconditional_or_class_conditional_model_is_a_one_line_error(diffctl, cli, trained):
    plain, labelled = trained("pixel"), trained("class")
    assert_one_line_error(cli("sample", f"ckpt={plain}", "prompt=the digit three", "steps=2"), "sample", "need a text-conditioned model (diffctl train cond=text or cond=clip); "
                          "this model is unconditional")
    out = run_folder(diffctl("sample", f"ckpt={labelled}", "classes=[3]", "guidance.scale=2", "num_samples=2", "steps=2"))
    assert json.loads((out / "sample.json").read_text())["labels"] == [3, 3]
    assert_one_line_error(cli("sample", f"ckpt={labelled}", "prompt=the digit three", "steps=2"), "sample", "this model is class-conditional")


def _captioned_folder(root, missing: bool = False):
    """Two classes of 8x8 grey images and a Hugging Face ImageFolder metadata.jsonl with a caption for each."""
    import numpy as np
    from PIL import Image

    rows = []
    for name, shade in (("bright", 220), ("dark", 40)):
        (root / name).mkdir(parents=True)
        for i in range(10):
            arr = np.full((8, 8), shade, np.uint8)
            arr[i % 8] = 255 - shade
            Image.fromarray(arr).save(root / name / f"{i}.png")
            rows.append({"file_name": f"{name}/{i}.png", "text": f"a {name} square with a line in row {i % 8}"})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows[: len(rows) - missing]))


def test_a_folders_own_captions_are_drawn_per_image_and_heldout_are_the_test_splits(tmp_path, diffctl, cli):
    from diffctl.config import load_option
    from diffctl.data import load_dataset

    _captioned_folder(tmp_path / "imgs")
    cfg = load_option("dataset", "folder")
    cfg.root, cfg.image_size, cfg.grayscale, cfg.captions = str(tmp_path / "imgs"), 8, True, "metadata.jsonl"
    data = load_dataset(cfg)
    assert len(data.train_captions) == len(data.train) == 18 and len(data.test_captions) == 2  # every 10th image is test
    cond = TextCond(data)
    assert cond.per_image and not cond.needs_labels and cond.num_classes == 0 and cond.label_of(data.train_captions[0]) is None
    index = torch.tensor([5, 0, 17, 5])
    ids = cond.draw(None, None, 0.0, torch.Generator().manual_seed(0), index=index)
    decoded = [" ".join(cond.vocab[i] for i in row[1:] if i != PAD) for row in ids.tolist()]
    assert decoded == [data.train_captions[i] for i in index.tolist()]  # each image's own caption
    held = cond.draw(None, None, 0.0, torch.Generator(), index=torch.tensor([1]), train=False)
    assert torch.equal(held[0], cond.encode([data.test_captions[1]])[0])
    args = [f"dataset.root={tmp_path / 'imgs'}", "dataset.image_size=8", "dataset.grayscale=true", "dataset.captions=metadata.jsonl"]
    run = run_folder(diffctl("train", "cond=text", "dataset=folder", *args, *FAST))
    assert torch.load(next((run / "checkpoints").iterdir()), weights_only=True)["cond"]["per_image"] is True
    record = json.loads((run_folder(diffctl("sample", "prompts=heldout", "num_samples=2", "steps=2")) / "sample.json").read_text())
    assert record["prompts"] == data.test_captions and "labels" not in record
    _captioned_folder(tmp_path / "partial", missing=True)
    assert_one_line_error(cli("train", "cond=text", "dataset=folder", f"dataset.root={tmp_path / 'partial'}", *args[1:], *FAST), "train",
                          "1 of the images have no caption (first: dark/9.png)")
    assert_one_line_error(cli("train", "cond=text", "dataset=mnist5k", "dataset.captions=x.jsonl", *FAST), "train",
                          "dataset.captions is for dataset=folder")
    assert_one_line_error(cli("train", "cond=text", "dataset=folder", *args, "cond.max_words=4", *FAST), "train",
                          "the longest training caption has 9 words; cond.max_words=4")
