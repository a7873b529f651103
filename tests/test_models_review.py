"""Models after review: a weights file of another network is refused (not loaded in part), grey / RGBA first
convolutions are adapted from their own channel count, coverage counts weight tensors only, and an smp decoder
whose final upsampling does not fit its encoder depth is refused when the config loads."""

from __future__ import annotations

import pytest
import timm
import torch

from seg_toolkit.config import ConfigError, ModelConfig, config_from_dict
from seg_toolkit.models import build_model

from .conftest import demo_dict
from .test_models import SMALL_PARAMS, tiny_cfg


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _raw(path, edit=None) -> dict[str, torch.Tensor]:
    """A plain timm test_resnet checkpoint (seeded), optionally edited, saved at ``path``."""
    torch.manual_seed(0)
    state = timm.create_model("test_resnet").state_dict()
    if edit is not None:
        edit(state)
    torch.save(state, path)
    return state


# ----------------------------------------------------------------------------- another network's file


def test_a_file_whose_tensors_have_other_shapes_is_refused_not_loaded_in_part(tmp_path):
    def widen(state):  # as a resnet50 file for a resnet34: same names, other shapes
        w = state["layer1.0.conv1.weight"]
        state["layer1.0.conv1.weight"] = torch.zeros(w.shape[0] * 2, *w.shape[1:])

    path = tmp_path / "other.pth"
    _raw(path, widen)
    with pytest.raises(ConfigError, match=r"model\.encoder_weights: 1 tensor\(s\) .* other shapes .*layer1\.0\.conv1\.weight"):
        build_model(tiny_cfg("unet", encoder_weights=str(path)), num_classes=1)


def test_coverage_counts_weight_tensors_only(tmp_path):
    """One of the encoder's 2-D+ weights missing from the file: coverage (W - 1) / W, whatever the 1-D tensors."""
    path = tmp_path / "partial.pth"
    _raw(path, lambda s: s.pop("layer2.0.conv2.weight"))
    model = build_model(tiny_cfg("unet", encoder_weights=str(path)), num_classes=1)
    report = model.encoder_weights_report
    own = model.encoder.state_dict()
    n_weights = sum(1 for v in own.values() if v.ndim >= 2)
    assert report.missing == ["model.layer2.0.conv2.weight"]
    assert report.weights_total == n_weights and report.weights_loaded == n_weights - 1
    assert report.coverage == pytest.approx((n_weights - 1) / n_weights)


# ----------------------------------------------------------------------------- first convolution from 1 or 4 channels


@pytest.mark.parametrize("file_ch,model_ch", [(1, 3), (1, 4), (4, 1), (4, 3)])
def test_a_grey_or_rgba_first_conv_is_adapted_from_its_own_channels(tmp_path, file_ch, model_ch):
    """timm's rule with the file's channel count as the base: to one channel the file's channels are summed; to
    more, they are repeated and scaled by file / model channels (1 -> 3: each channel gets the grey filter / 3)."""
    key = "conv1.0.weight"  # test_resnet's deep stem

    def channels(state):
        w = state[key]
        state[key] = torch.randn(w.shape[0], file_ch, *w.shape[2:])

    path = tmp_path / f"c{file_ch}.pth"
    state = _raw(path, channels)
    model = build_model(tiny_cfg("unet", encoder_weights=str(path)), num_classes=1, in_channels=model_ch)
    assert model.encoder_weights_report.adapted == ["model." + key]
    got, w = model.encoder.state_dict()["model." + key], state[key]
    if model_ch == 1:
        want = w.sum(dim=1, keepdim=True)
    else:
        reps = -(-model_ch // file_ch)
        want = w.repeat(1, reps, 1, 1)[:, :model_ch] * (file_ch / model_ch)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(model.encoder.state_dict()["model.layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


# ----------------------------------------------------------------------------- the decoder's final upsampling


@pytest.mark.parametrize("arch,params,need", [
    ("fpn", {"encoder_depth": 4}, 2),
    ("fpn", {"encoder_depth": 3}, 1),
    ("pspnet", {"encoder_depth": 5}, 32),
    ("deeplabv3", {"upsampling": 4}, 8),
    ("deeplabv3plus", {"upsampling": 2}, 4),
])
def test_an_upsampling_that_does_not_fit_the_depth_is_refused_at_load(demo_root, tmp_path, arch, params, need):
    """smp's defaults suit its default depth only: FPN at depth 4 returned 256x256 logits for 128x128."""
    model = {"arch": arch, "encoder": "tu-test_resnet", "params": {**SMALL_PARAMS[arch], **params}}
    with pytest.raises(ConfigError, match=rf"model\.params\.upsampling: {arch} .* needs upsampling {need} .*set model\.params\.upsampling: {need}"):
        config_from_dict(demo_dict(demo_root, tmp_path / "runs", model=model))


@pytest.mark.parametrize("arch,params", [("fpn", {"encoder_depth": 4, "upsampling": 2}), ("pspnet", {"encoder_depth": 4, "upsampling": 16})])
def test_the_upsampling_named_in_the_error_returns_the_input_size(arch, params):
    cfg = ModelConfig(arch=arch, encoder="tu-test_resnet", params={**SMALL_PARAMS[arch], **params})
    model = build_model(cfg, num_classes=2).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 101, 75)).shape == (1, 2, 101, 75)


def test_logits_of_another_size_are_refused_by_the_forward(monkeypatch):
    """The safety net behind the load check: smp's output must have the padded input's size, never cropped."""
    model = build_model(ModelConfig(arch="fpn", encoder="tu-test_resnet", params=SMALL_PARAMS["fpn"]), num_classes=1).eval()
    model.segmentation_head[1].scale_factor = 2.0  # as a wrong upsampling would
    with torch.no_grad(), pytest.raises(ValueError, match=r"'fpn': smp returned \(32, 32\) logits for a \(64, 64\) input"):
        model(torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_a_bare_encoder_saved_from_a_ddp_or_compiled_wrapper_loads(tmp_path, prefix):
    """A scratch encoder's file saved through DDP / torch.compile: every tensor loads, the wrapper prefix removed."""
    source = build_model(tiny_cfg("scratch_unet"), num_classes=1)
    path = tmp_path / "wrapped.pth"
    torch.save({prefix + k: v for k, v in source.encoder.state_dict().items()}, path)
    model = build_model(tiny_cfg("scratch_unet", encoder_weights=str(path)), num_classes=2)
    report = model.encoder_weights_report
    assert report.prefix_removed == prefix and report.missing == [] and report.coverage == 1.0
    for k, v in source.encoder.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[k], v, rtol=0, atol=0)


def test_a_params_value_smp_refuses_stops_train_before_anything_is_written(demo_root, tmp_path):
    """``model.params`` names are checked at load, their values only by smp / timm: fold 0 building its model used to
    be the first to see them, after the run folder, folds.csv and the tracker were written. A trial build on the meta
    device (no memory, no weights read) finds them first."""
    from seg_toolkit.cv import run_cv
    from seg_toolkit.models.registry import check_model_builds

    model = {"arch": "unet", "encoder": "tu-test_resnet", "encoder_weights": None,
             "params": {"decoder_attention_type": "bogus"}}
    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", model=model))
    with pytest.raises(ConfigError, match=r"model: cannot build arch 'unet' with encoder 'tu-test_resnet' .*Attention bogus"):
        run_cv(cfg)
    assert not (tmp_path / "runs").exists()
    good = config_from_dict(demo_dict(demo_root, tmp_path / "runs", model={**model, "params": {"decoder_attention_type": "scse"}}))
    before = torch.zeros(1).device
    check_model_builds(good.model, good.data.num_classes, good.data.in_channels)
    assert torch.zeros(1).device == before  # the meta device was only the trial's
    # values only the forward pass reads, or that the meta device does not check (a config audit: a traceback at the
    # first training step, after the run folder was written)
    for params, said in [({"decoder_interpolation": "bogus"}, r"model: unet with model.params \{'decoder_interpolation': "
                                                             r"'bogus'\} fails its first forward pass on a batch \(NotImplementedError"),
                         ({"drop_path_rate": 5}, r"model.params.drop_path_rate: expected a rate in \[0, 1\), got 5")]:
        with pytest.raises(ConfigError, match=said):
            run_cv(config_from_dict(demo_dict(demo_root, tmp_path / "runs", model={**model, "params": params})))
        assert not (tmp_path / "runs").exists()
    # BatchNorm on one image at a 1x1 bottleneck (depth 6 at 32x32): a torch traceback at the first step before
    deep = {"arch": "scratch_unet", "depth": 6, "base_width": 2}
    one = config_from_dict(demo_dict(demo_root, tmp_path / "runs", model=deep, transforms={"resize": [32, 32]},
                                     train={"epochs": 1, "batch_size": 1}))
    with pytest.raises(ConfigError, match=r"fails its first forward pass on a training batch of 1 at 32x32 \(train.batch_size, "
                                          r"transforms.resize\) \(ValueError: Expected more than 1 value per channel"):
        run_cv(one)
    assert not (tmp_path / "runs").exists()
    check_model_builds(one.model, one.data.num_classes, one.data.in_channels, 2, (32, 32))  # two images: fine
