"""Tests for seg_toolkit.models: registry, scratch U-Net, smp/timm models, weights, helpers.

Offline and CPU-only: tiny timm test encoders (``tu-test_resnet``, ``tu-test_vit``), tiny
decoders, small inputs; downloads are monkeypatched to fail.
"""

from __future__ import annotations

import copy
import logging
import pickle

import pytest
import torch
from torch import nn

import segmentation_models_pytorch as smp
from seg_toolkit.config import ConfigError, ModelConfig
from seg_toolkit.models import (
    PretrainedDownloadError,
    ScratchUNet,
    ScratchUNetEncoder,
    build_model,
    list_architectures,
    list_encoders,
    param_groups,
    set_encoder_frozen,
)
from seg_toolkit.models.smp_models import MIN_TRAIN_BATCH

TINY = "tu-test_resnet"

# small decoders keep each build + forward/backward well under a second on a CPU
SMALL_PARAMS: dict[str, dict] = {
    "unet": {"decoder_channels": [32, 16, 8, 8, 8]},
    "unetplusplus": {"decoder_channels": [32, 16, 8, 8, 8]},
    "fpn": {"decoder_pyramid_channels": 16, "decoder_segmentation_channels": 64},  # GroupNorm(32)
    "deeplabv3": {"decoder_channels": 16},
    "deeplabv3plus": {"decoder_channels": 16},
    "linknet": {},
    "manet": {"decoder_channels": [32, 16, 8, 8, 8], "decoder_pab_channels": 8},
    "pan": {"decoder_channels": 16},
    "pspnet": {"psp_out_channels": 16},
    "upernet": {"decoder_channels": 16},
    "segformer": {"decoder_segmentation_channels": 16},
    "dpt": {"decoder_intermediate_channels": [16, 16, 16, 16], "decoder_fusion_channels": 16},
}
SMP_ARCHS = [a for a in list_architectures() if a != "scratch_unet"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: threads only add contention for tiny models
    yield
    torch.set_num_threads(n)


def tiny_cfg(arch: str, **kw) -> ModelConfig:
    """A fast config for ``arch``: tiny timm encoder (a ViT for DPT), small decoder."""
    if arch == "scratch_unet":
        base = dict(arch=arch, depth=3, base_width=8)
    else:
        base = dict(arch=arch, encoder="tu-test_vit" if arch == "dpt" else TINY, params=SMALL_PARAMS[arch])
    base.update(kw)
    return ModelConfig(**base)


def train_batch(arch: str) -> int:
    return MIN_TRAIN_BATCH.get(arch, 1)


# ----------------------------------------------------------------------------- registry


def test_registered_architectures():
    names = list_architectures()
    assert names[0] == "scratch_unet"
    expected = {"unet", "unetplusplus", "fpn", "deeplabv3", "deeplabv3plus", "linknet", "manet", "pan", "pspnet"}
    assert expected <= set(names)
    assert set(names) - {"scratch_unet"} <= set(SMALL_PARAMS)  # every registered arch is tested below


@pytest.mark.parametrize("arch", list_architectures())
@pytest.mark.parametrize("classes", [1, 3, 4], ids=["binary", "multilabel", "multiclass"])
def test_forward_backward_every_arch(arch: str, classes: int):
    model = build_model(tiny_cfg(arch), num_classes=classes, in_channels=3).train()
    assert isinstance(model.encoder, nn.Module)
    n = train_batch(arch)  # 1, or 2 where BatchNorm follows global pooling
    x = torch.randn(n, 3, 70, 90)
    y = model(x)
    assert y.shape == (n, classes, 70, 90)
    y.float().mean().backward()
    # smp's DPT keeps the ViT's final norm and classifier, which its features bypass
    unused = ("encoder.model.norm.", "encoder.model.head.") if arch == "dpt" else ()
    for name, p in model.named_parameters():
        if not name.startswith(unused):
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("arch", sorted(MIN_TRAIN_BATCH))
def test_batch_of_one_clear_error_in_training_and_fine_in_eval(arch: str):
    model = build_model(tiny_cfg(arch), num_classes=2)
    with pytest.raises(ValueError, match="batch_size >= 2"):
        model.train()(torch.randn(1, 3, 64, 64))
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 70, 90)).shape == (1, 2, 70, 90)


@pytest.mark.parametrize("arch", ["scratch_unet", "unet", "deeplabv3plus", "segformer", "pan"])
@pytest.mark.parametrize("in_channels", [1, 4])
def test_in_channels(arch: str, in_channels: int):
    model = build_model(tiny_cfg(arch), num_classes=2, in_channels=in_channels).eval()
    with torch.no_grad():
        assert model(torch.randn(1, in_channels, 37, 50)).shape == (1, 2, 37, 50)


@pytest.mark.parametrize("arch", SMP_ARCHS)
def test_tiny_and_odd_sizes_every_smp_arch(arch: str):
    model = build_model(tiny_cfg(arch), num_classes=2).eval()
    with torch.no_grad():
        for h, w in [(1, 1), (5, 7), (33, 2), (97, 65)]:
            assert model(torch.randn(1, 3, h, w)).shape == (1, 2, h, w)


def test_smp_native_encoder_and_default_encoder():
    model = build_model(ModelConfig(arch="fpn", encoder="resnet18"), num_classes=1)
    assert isinstance(model.encoder, smp.encoders.resnet.ResNetEncoder)
    default = build_model(ModelConfig(arch="linknet"), num_classes=1)
    assert default.build_spec["model"]["encoder"] == "resnet34"
    with torch.no_grad():
        assert default.eval()(torch.randn(1, 3, 30, 41)).shape == (1, 1, 30, 41)


def test_params_reach_the_smp_class():
    params = {"decoder_channels": [32, 32, 16, 16, 16], "decoder_attention_type": "scse"}  # scse squeezes C // 16
    model = build_model(tiny_cfg("unet", params=params), 1)
    assert model.segmentation_head[0].in_channels == 16
    assert any(type(m).__name__ == "SCSEModule" for m in model.decoder.modules())
    deeplab = build_model(tiny_cfg("deeplabv3plus", params={"decoder_channels": 16, "encoder_output_stride": 8}), 1)
    assert deeplab.encoder.output_stride == 8 and deeplab.pad_multiple == 8


def test_channels_last_forward_matches():
    for arch in ("scratch_unet", "unet"):
        model = build_model(tiny_cfg(arch), num_classes=3).eval()
        x = torch.randn(2, 3, 45, 61)
        with torch.no_grad():
            ref = model(x)
            model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
            out = model_cl(x.contiguous(memory_format=torch.channels_last))
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_build_spec_rebuilds_same_architecture():
    model = build_model(tiny_cfg("unet"), num_classes=3, in_channels=4)
    spec = model.build_spec
    assert spec["num_classes"] == 3 and spec["in_channels"] == 4 and spec["model"]["encoder"] == TINY
    again = build_model(ModelConfig(**spec["model"]), spec["num_classes"], spec["in_channels"])
    again.load_state_dict(model.state_dict())  # strict: same keys and shapes
    model.eval(), again.eval()
    x = torch.randn(1, 4, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_models_deepcopy_and_pickle():
    for arch in ("scratch_unet", "unet"):
        model = build_model(tiny_cfg(arch), num_classes=1)
        clone = pickle.loads(pickle.dumps(copy.deepcopy(model)))
        assert type(clone) is type(model)
        assert clone.pad_multiple == model.pad_multiple


# ----------------------------------------------------------------------------- wrong names


def test_unknown_arch_names_closest():
    with pytest.raises(ConfigError, match=r"model\.arch.*'unett'.*did you mean 'unet'.*valid: scratch_unet"):
        build_model(ModelConfig(arch="unett"), 1)


@pytest.mark.parametrize(
    "name, closest",
    [("resnet35", "resnet34"), ("tu-test_resnett", "tu-test_resnet"), ("efficientnet-b9", "efficientnet-b")],
)
def test_unknown_encoder_names_closest(name: str, closest: str):
    with pytest.raises(ConfigError) as info:
        build_model(ModelConfig(arch="unet", encoder=name), 1)
    msg = str(info.value)
    assert msg.startswith("model.encoder") and f"did you mean '{closest}" in msg
    assert "seg-toolkit models --encoders FILTER" in msg


def test_timm_pretrained_tags_are_checked():
    import timm

    with pytest.raises(ConfigError, match=r"model\.encoder.*no pretrained tag 'r160_in1kk'.*'tu-test_resnet\.r160_in1k'"):
        build_model(tiny_cfg("unet", encoder="tu-test_resnet.r160_in1kk"), 1)
    tagged = build_model(tiny_cfg("unet", encoder="tu-test_resnet.r160_in1k"), 1)
    assert tagged.build_spec["model"]["encoder"] == "tu-test_resnet.r160_in1k"
    with_weights = {n.split(".")[0] for n in timm.list_pretrained()}
    no_weights = next(m for m in timm.list_models() if m not in with_weights)
    with pytest.raises(ConfigError, match="timm has no pretrained weights"):  # raised before building
        build_model(ModelConfig(arch="unet", encoder=f"tu-{no_weights}", encoder_weights="imagenet"), 1)


def test_scratch_unet_rejects_encoder_and_params():
    with pytest.raises(ConfigError, match=r"model\.encoder.*scratch_unet has its own encoder"):
        build_model(ModelConfig(arch="scratch_unet", encoder="resnet34"), 1)
    with pytest.raises(ConfigError, match=r"model\.params\.foo"):
        build_model(ModelConfig(arch="scratch_unet", params={"foo": 1}), 1)


def test_unknown_param_names_key_and_closest():
    # smp encoder: checked against smp.Unet's signature before building
    typo = r"model\.params\.decoder_chanels.*did you mean 'model\.params\.decoder_channels'"
    with pytest.raises(ConfigError, match=typo):
        build_model(ModelConfig(arch="unet", encoder="resnet18", params={"decoder_chanels": [8] * 5}), 1)
    # tu- encoder: extra keys go to timm, which rejects this one
    with pytest.raises(ConfigError, match=typo):
        build_model(ModelConfig(arch="unet", encoder=TINY, params={"decoder_chanels": [8] * 5}), 1)
    # timm keyword arguments pass through with a tu- encoder
    from timm.layers import DropPath

    model = build_model(tiny_cfg("unet", params={**SMALL_PARAMS["unet"], "drop_path_rate": 0.1}), 1)
    assert any(isinstance(m, DropPath) for m in model.encoder.modules())


@pytest.mark.parametrize(
    "key, value, words",
    [("classes", 3, "data.num_classes"), ("activation", "sigmoid", "logits"), ("aux_params", {"classes": 2}, "tuple")],
)
def test_reserved_and_forbidden_params(key: str, value, words: str):
    with pytest.raises(ConfigError, match=rf"model\.params\.{key}.*{words}"):
        build_model(ModelConfig(arch="unet", encoder=TINY, params={key: value}), 1)


def test_bad_param_value_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot build arch 'unet'"):
        build_model(ModelConfig(arch="unet", encoder=TINY, params={"decoder_channels": [8, 8]}), 1)


def test_a_width_that_leaves_a_layer_no_channels_is_a_config_error():
    # smp's scse squeezes a width of 8 to 8 // 16 = 0 channels: torch would fail at the first forward
    cfg = ModelConfig(arch="unet", encoder="tu-test_resnet", encoder_weights=None,
                      params={"decoder_channels": [32, 16, 16, 8, 8], "decoder_attention_type": "scse"})
    with pytest.raises(ConfigError, match=r"model: unet .*no channels .*shape \[0, 8, 1, 1\].*decoder_channels value must be >= 16"):
        build_model(cfg, 1)
    cfg = ModelConfig(arch="unet", encoder="tu-test_resnet", encoder_weights=None,
                      params={"decoder_channels": [32, 16, 16, 16, 16], "decoder_attention_type": "scse"})
    assert build_model(cfg, 1)(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 64, 64)


def test_list_encoders():
    names = list_encoders()
    assert {"scratch", "resnet34", "efficientnet-b0", "tu-test_resnet", "tu-convnext_tiny"} <= set(names)
    assert all("convnext" in n.lower() for n in list_encoders("ConvNeXt"))
    assert "tu-convnext_tiny" in list_encoders("convnext")
    globbed = list_encoders("tu-test_*")
    assert "tu-test_resnet" in globbed and all(n.startswith("tu-test_") for n in globbed)


# ----------------------------------------------------------------------------- scratch U-Net


def test_scratch_unet_paper_parameter_count():
    """Ronneberger et al. 2015 (depth 4, width 64, no norm, transposed conv, 1 -> 2 channels).

    3x3 conv a->b: 9ab + b; 2x2 up-conv a->b: 4ab + b; 1x1 head a->b: ab + b.
      encoder  1->64, 64->64        640 +    36,928 =     37,568
               64->128, 128->128  73,856 +   147,584 =    221,440
               128->256, 256->256 295,168 + 590,080 =    885,248
               256->512, 512->512 1,180,160 + 2,359,808 = 3,539,968
               512->1024, 1024->1024 4,719,616 + 9,438,208 = 14,157,824   (sum 18,842,048)
      decoder  up 1024->512 2,097,664 + 1024->512 4,719,104 + 512->512 2,359,808 = 9,176,576
               up 512->256    524,544 + 512->256 1,179,904 + 256->256   590,080 = 2,294,528
               up 256->128    131,200 + 256->128   295,040 + 128->128   147,584 =   573,824
               up 128->64      32,832 + 128->64     73,792 +  64->64     36,928 =   143,552
                                                                   (sum 12,188,480)
      head     64->2: 130
    total 18,842,048 + 12,188,480 + 130 = 31,030,658 (with 1 output channel: 31,030,593,
    the widely quoted figure).
    """
    paper = ScratchUNet(in_channels=1, num_classes=2, depth=4, base_width=64, norm="none", upsample="transpose")
    assert sum(p.numel() for p in paper.parameters()) == 31_030_658
    one = ScratchUNet(in_channels=1, num_classes=1, depth=4, base_width=64, norm="none", upsample="transpose")
    assert sum(p.numel() for p in one.parameters()) == 31_030_593
    via_cfg = build_model(ModelConfig(arch="scratch_unet", depth=4, base_width=64, norm="none"), 2, in_channels=1)
    assert sum(p.numel() for p in via_cfg.parameters()) == 31_030_658


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
def test_scratch_unet_options_and_odd_sizes(norm: str, upsample: str):
    cfg = ModelConfig(arch="scratch_unet", depth=3, base_width=8, norm=norm, upsample=upsample, dropout=0.2)
    model = build_model(cfg, num_classes=2, in_channels=1)
    assert model.pad_multiple == 8
    norms = {nn.BatchNorm2d: "batch", nn.GroupNorm: "group"}
    found = {norms[type(m)] for m in model.modules() if type(m) in norms}
    assert found == ({norm} if norm != "none" else set())
    assert any(isinstance(m, nn.ConvTranspose2d) for m in model.modules()) == (upsample == "transpose")
    assert isinstance(model.bottleneck_dropout, nn.Dropout)
    for h, w in [(1, 1), (7, 5), (31, 33), (64, 64), (65, 127)]:
        out = model.train()(torch.randn(2, 1, h, w))
        assert out.shape == (2, 2, h, w)
    out.sum().backward()


def test_scratch_encoder_follows_smp_contract():
    enc = ScratchUNetEncoder(depth=3, in_channels=3, base_width=8)
    assert enc.out_channels == (8, 16, 32, 64) and enc.output_stride == 8
    feats = enc(torch.randn(1, 3, 32, 48))
    assert [f.shape[1] for f in feats] == list(enc.out_channels)
    assert [f.shape[-2:] for f in feats] == [(32 // 2**i, 48 // 2**i) for i in range(4)]
    # smp's UnetDecoder accepts its features
    decoder = smp.decoders.unet.decoder.UnetDecoder(
        encoder_channels=enc.out_channels, decoder_channels=[16, 8, 8], n_blocks=3
    )
    assert decoder(feats).shape == (1, 8, 32, 48)
    # set_in_channels / make_dilated (smp's get_encoder calls them)
    enc.set_in_channels(1)
    deep = ScratchUNetEncoder(depth=5, base_width=4)
    deep.make_dilated(8)
    assert deep.output_stride == 8
    assert [f.shape[-1] for f in deep(torch.randn(1, 3, 64, 64))] == [64, 32, 16, 8, 8, 8]
    assert enc(torch.randn(1, 1, 16, 16))[0].shape == (1, 8, 16, 16)


@pytest.mark.parametrize("arch", ["unet", "fpn", "deeplabv3plus"])
def test_scratch_encoder_under_smp_decoders(arch: str):
    model = build_model(tiny_cfg(arch, encoder="scratch", base_width=4, norm="group"), num_classes=3, in_channels=1)
    assert isinstance(model.encoder, ScratchUNetEncoder)
    assert model.encoder.out_channels[0] == 4
    assert any(isinstance(m, nn.GroupNorm) for m in model.encoder.modules())
    assert "scratch" not in smp.encoders.encoders  # the temporary registration is undone
    out = model.train()(torch.randn(2, 1, 50, 45))
    assert out.shape == (2, 3, 50, 45)
    out.mean().backward()


# ----------------------------------------------------------------------------- encoder weights


def _save(state: dict, path) -> None:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


def _assert_encoder_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("layout", ["bare", "prefixed"])
def test_encoder_weights_from_local_file(tmp_path, suffix: str, layout: str):
    source = build_model(tiny_cfg("unet"), num_classes=1)
    state = source.encoder.state_dict() if layout == "bare" else source.state_dict()
    path = tmp_path / f"enc{suffix}"
    _save(state, path)
    model = build_model(tiny_cfg("fpn", encoder_weights=str(path)), num_classes=2)
    _assert_encoder_equal(model.encoder, source.encoder)
    report = model.encoder_weights_report
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert report.prefix_removed == ("" if layout == "bare" else "encoder.")
    if layout == "prefixed":
        assert report.ignored > 0  # decoder/head keys of the whole-model state dict


def test_encoder_weights_missing_and_unexpected_reported(tmp_path, caplog):
    source = build_model(tiny_cfg("unet"), num_classes=1)
    state = dict(source.encoder.state_dict())
    dropped = next(k for k in state if k.endswith("conv.weight") or k.endswith("conv1.weight"))
    del state[dropped]
    state["model.extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)  # wrapped checkpoints are unwrapped
    with caplog.at_level(logging.WARNING, logger="seg_toolkit.models.weights"):
        model = build_model(tiny_cfg("unet", encoder_weights=str(path)), num_classes=1)
    report = model.encoder_weights_report
    assert report.missing == [dropped] and report.unexpected == ["model.extra.weight"]
    assert "1 missing" in caplog.text and "1 unexpected" in caplog.text
    torch.testing.assert_close(model.encoder.state_dict()["model.bn1.weight"], state["model.bn1.weight"])


def test_encoder_weights_adapt_first_conv_and_raw_timm_checkpoint(tmp_path):
    import timm

    raw = timm.create_model("test_resnet")  # a plain timm checkpoint: no "model." prefix, has fc.*
    path = tmp_path / "test_resnet.safetensors"
    _save(raw.state_dict(), path)
    model = build_model(tiny_cfg("unet", encoder_weights=str(path)), num_classes=1, in_channels=4)
    report = model.encoder_weights_report
    assert report.source == "file" and report.prefix_added == "model."
    assert report.adapted == ["model.conv1.0.weight"] and report.missing == []  # deep stem
    assert any(k.startswith("model.fc.") for k in report.unexpected)
    loaded = model.encoder.state_dict()
    torch.testing.assert_close(loaded["model.layer1.0.conv1.weight"], raw.state_dict()["layer1.0.conv1.weight"])
    assert model.encoder.state_dict()["model.conv1.0.weight"].shape[1] == 4
    # 7 bands (.npy images): timm's rule, the RGB filters repeated and scaled by 3 / 7: band k gets channel k % 3
    seven = build_model(tiny_cfg("unet", encoder_weights=str(path)), num_classes=1, in_channels=7)
    assert seven.encoder_weights_report.adapted == ["model.conv1.0.weight"]
    rgb, got = raw.state_dict()["conv1.0.weight"], seven.encoder.state_dict()["model.conv1.0.weight"]
    torch.testing.assert_close(got, torch.cat([rgb, rgb, rgb[:, :1]], dim=1) * (3 / 7))


def test_encoder_weights_timm_remapped_keys_use_timm_loader(tmp_path):
    import timm

    raw = timm.create_model("test_convnext")  # features_only renames stages.N -> stages_N
    path = tmp_path / "test_convnext.pth"
    torch.save(raw.state_dict(), path)
    cfg = ModelConfig(arch="unet", encoder="tu-test_convnext", encoder_weights=str(path), params=SMALL_PARAMS["unet"])
    model = build_model(cfg, num_classes=1)
    assert model.encoder_weights_report.source == "timm" and model.encoder_weights_report.coverage == 1.0
    loaded = model.encoder.state_dict()["model.stages_1.blocks.0.conv_dw.weight"]
    torch.testing.assert_close(loaded, raw.state_dict()["stages.1.blocks.0.conv_dw.weight"])


def test_scratch_unet_encoder_weights(tmp_path):
    source = build_model(tiny_cfg("scratch_unet"), num_classes=1)
    path = tmp_path / "scratch.pth"
    torch.save(source.state_dict(), path)
    model = build_model(tiny_cfg("scratch_unet", encoder_weights=str(path)), num_classes=3)
    _assert_encoder_equal(model.encoder, source.encoder)
    with pytest.raises(ConfigError, match="no pretrained weights"):
        build_model(tiny_cfg("scratch_unet", encoder_weights="imagenet"), 1)


def test_encoder_weights_errors(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(ConfigError, match=r"model\.encoder_weights.*not found.*nope\.pth"):
        build_model(tiny_cfg("unet", encoder_weights=str(missing)), 1)
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"foo.weight": torch.zeros(2), "bar": torch.ones(1)}, unrelated)
    with pytest.raises(ConfigError, match=r"model\.encoder_weights: nothing in .* matches the encoder"):
        build_model(tiny_cfg("unet", encoder="resnet18", params={}, encoder_weights=str(unrelated)), 1)
    with pytest.raises(ConfigError, match=r"'imagenett'.*did you mean 'imagenet'"):
        build_model(ModelConfig(arch="unet", encoder="resnet18", encoder_weights="imagenett"), 1)


def test_imagenet_download_failure_smp_encoder(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", offline)
    with pytest.raises(PretrainedDownloadError) as info:
        build_model(ModelConfig(arch="unet", encoder="resnet18", encoder_weights="imagenet"), 1)
    msg = str(info.value)
    assert "download" in msg and "failed" in msg and "path/to/file.pth|.safetensors" in msg
    assert isinstance(info.value, ConfigError)


def test_imagenet_download_failure_timm_encoder(monkeypatch):
    import timm.models._builder as builder

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(builder, "load_pretrained", offline)
    with pytest.raises(PretrainedDownloadError, match="tu-test_resnet.*path/to/file"):
        build_model(tiny_cfg("unet", encoder_weights="imagenet"), 1)


# ----------------------------------------------------------------------------- training helpers


@pytest.mark.parametrize("arch", ["scratch_unet", "unet"])
def test_param_groups(arch: str):
    model = build_model(tiny_cfg(arch), num_classes=2)
    groups = param_groups(model, lr=1e-3, weight_decay=0.01, encoder_lr_mult=0.1)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"encoder", "encoder_no_decay", "decoder", "decoder_no_decay"}
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)) == len(list(model.parameters()))
    enc_ids = {id(p) for p in model.encoder.parameters()}
    for g in groups:
        is_enc = g["name"].startswith("encoder")
        assert all((id(p) in enc_ids) == is_enc for p in g["params"])
        assert g["lr"] == pytest.approx(1e-4 if is_enc else 1e-3)
        decay = not g["name"].endswith("no_decay")
        assert g["weight_decay"] == (0.01 if decay else 0.0)
        assert all((p.ndim > 1) == decay for p in g["params"])
    torch.optim.AdamW(groups)  # accepted as is


@pytest.mark.parametrize("arch", ["scratch_unet", "unet"])
def test_set_encoder_frozen(arch: str):
    model = build_model(tiny_cfg(arch), num_classes=1).train()
    set_encoder_frozen(model, True)
    enc_bn = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    dec_bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and all(m is not e for e in enc_bn)]
    assert enc_bn and dec_bn
    assert not any(p.requires_grad for p in model.encoder.parameters())
    model.eval().train()  # the trainer's per-epoch calls keep a frozen encoder's BN in eval
    assert not any(m.training for m in enc_bn) and all(m.training for m in dec_bn)

    before = copy.deepcopy(model.encoder.state_dict())
    opt = torch.optim.SGD(param_groups(model, 0.1, 0.0, 1.0), lr=0.1)
    model(torch.randn(2, 3, 32, 32)).mean().backward()
    opt.step()
    after = model.encoder.state_dict()
    for k in before:  # weights and running statistics untouched
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)

    set_encoder_frozen(model, False)
    assert all(p.requires_grad for p in model.encoder.parameters())
    assert all(m.training for m in enc_bn)
    model.eval()
    set_encoder_frozen(model, True)
    set_encoder_frozen(model, False)  # unfreezing an eval model leaves its BN in eval
    assert not any(m.training for m in enc_bn)
