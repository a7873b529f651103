"""Export a trained run's fold models to ONNX, and run them with ONNX Runtime in the one predictor.

``seg-toolkit export RUN --format onnx`` writes ``export/fold_<k>.onnx`` into the run folder
(:attr:`~seg_toolkit.run.Run.export_dir`) for every trained fold of the run (of every member
of an ensemble, each into its own run), built from ``best.pt`` exactly as the predictor builds
it (EMA weights when the run uses them). Each graph has a dynamic batch, height and width.

The graph is the model **without** its pad-to-multiple wrapper: the padding amounts depend on
the input size through Python arithmetic, which a trace would freeze at the example's size.
So an exported graph takes images whose height and width are multiples of ``pad_multiple``
(and at least ``min_input_size``), both written in the file's metadata;
:class:`OnnxModel` pads and crops around the session with the same functions the PyTorch
model uses (:func:`~seg_toolkit.models.scratch_unet.pad_to_multiple`), so any size works.

Every file is checked before it is published: the ONNX checker, then the logits of ONNX
Runtime against PyTorch's on real images of the fold's validation split, preprocessed by the
predictor's own loader, at two sizes (the preprocessed size with a batch of two, and an odd
size that needs padding with a batch of one). The largest absolute difference must stay
within ``PARITY_BOUND x max(1, max |logit|)`` (fp32 logits; the scale keeps the bound
meaningful for large logits), else nothing is written. Files are written atomically; a file
at an export path that is not an export of this toolkit is never replaced.

``export.json`` also records, per fold, the values of the keys ``best.pt`` was trained with
(:data:`~seg_toolkit.run_settings.TRAINED_KEYS`) and, for a run that predicts with bf16/fp16
autocast, the gap between ONNX Runtime's fp32 output and the predictor's own (autocast) output
on the same inputs (``max_abs_diff_vs_predictor``, ``max_abs_prob_diff_vs_predictor``).

``predict.backend: onnx`` makes each member's fold models :class:`OnnxModel` instances (tensor
in, logits tensor out), so TTA, scales, tiles, ensembles and post-processing run unchanged.
:func:`check_onnx_backend` says at load time what is missing or wrong: onnxruntime, an exported
file, an export older than the fold's ``best.pt``, a config.yaml whose trained keys differ from
those ``best.pt`` was trained with (as the torch backend refuses), or a member that predicts in
bf16/fp16 (its OOF files and the post-processing tuned on them are not fp32 probabilities, and
the graph runs in fp32; the remedy is ``train.amp: none`` in its config.yaml and ``seg-toolkit oof``).

TorchScript is not offered: ``torch.jit.trace`` is deprecated in current PyTorch (it warns
FutureWarning) and would freeze the same padding arithmetic; ONNX covers the use (a model file
that runs without this package's model code).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .files import atomic_write, read_json, sha256_file, write_json
from .checkpoint import load_model
from .config import Config, ConfigError
from .errors import SegToolkitError
from .models.presence import with_presence
from .models.scratch_unet import crop_padding, pad_to_multiple
from .run import RunExistsError
from .tensors import resize_to

log = logging.getLogger(__name__)

__all__ = ["OPSET", "PARITY_BOUND", "ExportError", "OnnxModel", "export_run", "check_onnx_backend", "unpadded"]

OPSET = 17
#: Largest allowed ``max |onnx - torch|`` on fp32 logits, as a fraction of ``max(1, max |logit|)``.
PARITY_BOUND = 1e-4
_MARK = "seg_toolkit.export"
_FORMATS = ("onnx",)


class ExportError(SegToolkitError, RuntimeError):
    """An exported model does not reproduce the PyTorch one, or cannot be written."""


class _Unpadded(nn.Module):
    """The model's forward on an input already padded to its multiple (what the graph holds)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .models.scratch_unet import ScratchUNet
        from .models.smp_models import _PaddedSmpMixin

        if isinstance(self.model, ScratchUNet):
            out = self.model._forward(x)
        elif isinstance(self.model, _PaddedSmpMixin):
            out = super(_PaddedSmpMixin, self.model).forward(x)  # smp's own forward, after the padding mixin
        else:
            raise ExportError(f"cannot export {type(self.model).__name__}: not a model of seg_toolkit.models")
        # the model's own forward hook does not run here (its forward is bypassed): add the classifier's channels
        return with_presence(self.model, out) if hasattr(self.model, "presence_head") else out


def unpadded(model: nn.Module) -> tuple[nn.Module, int, int]:
    """``(module without the padding wrapper, pad_multiple, min_input_size)`` of a built model."""
    return _Unpadded(model).eval(), int(model.pad_multiple), int(getattr(model, "min_input_size", 0))


class OnnxModel(nn.Module):
    """An exported fold model run by ONNX Runtime on the CPU, called like the PyTorch one.

    ``(N, C, H, W)`` float tensor in, ``(N, classes, H, W)`` float32 logits out on the input's
    device; the input is padded to the graph's multiple and the logits cropped back as the
    PyTorch model does. ``threads``: ONNX Runtime's intra-op threads (default: torch's).
    """

    def __init__(self, path: str | Path, threads: int | None = None, expect: dict[str, Any] | None = None) -> None:
        """``expect``: metadata the file must hold (the fold and the ``best.pt`` hash that ``export.json`` names), so a
        file copied over another fold's, or exported from another checkpoint, is refused rather than used."""
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types (InvalidProtobuf, NoSuchFile, Fail)
            raise ConfigError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                              "export the run again (seg-toolkit export RUN --format onnx)") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get(_MARK) != "1":
            raise ConfigError(f"{path}: not an export of seg_toolkit (no {_MARK} metadata); export the run again")
        wrong = {k: (meta.get(k), str(v)) for k, v in (expect or {}).items() if meta.get(k) != str(v)}
        if wrong:
            raise ConfigError(f"{path}: its metadata says {', '.join(f'{k} {a!r}' for k, (a, _) in wrong.items())}, the run's "
                              f"export.json {', '.join(f'{k} {b!r}' for k, (_, b) in wrong.items())}: a file of another fold "
                              "or checkpoint; export the run again")
        self.multiple, self.min_size = int(meta["pad_multiple"]), int(meta.get("min_input_size", 0))
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp, pads = pad_to_multiple(x.float(), self.multiple, self.min_size)
        out = self.session.run(None, {self.input_name: xp.detach().cpu().contiguous().numpy()})[0]
        return crop_padding(torch.from_numpy(out).to(x.device), pads)


def _is_own_export(path: Path) -> bool:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return any(p.key == _MARK and p.value == "1" for p in model.metadata_props)


# ----------------------------------------------------------------------------- export


def parity_inputs(member, fold: int) -> tuple[list[torch.Tensor], str]:
    """Two inputs preprocessed by the predictor's loader from the fold's validation images: the
    preprocessed size (batch of 2 when two images share it) and an odd size that needs padding."""
    from .data import load_train_samples
    from .predictor import Predictor

    try:
        fold_of = member.run.fold_of()
        samples = [s for s in load_train_samples(member.cfg) if fold_of.get(s.id) == fold][:2]
        if not samples:
            raise FileNotFoundError(f"no validation image of fold {fold} in {member.run.folds_csv}")
        loader = Predictor([member], device=torch.device("cpu"), batch_size=1, num_workers=0).loader(samples)
        images = [batch["images"][member.preprocess] for batch in loader]
        what = f"validation images of fold {fold}: {', '.join(s.id for s in samples)}"
    except (SegToolkitError, FileNotFoundError, OSError) as e:  # the data folder is gone: still check, on noise
        log.warning("parity check of fold %d on random inputs: the run's images cannot be read (%s)", fold, e)
        h, w = member.cfg.transforms.resize or (64, 64)
        images = [torch.randn(1, member.cfg.data.in_channels, h, w, generator=torch.Generator().manual_seed(k)) for k in range(2)]
        what = "random normal inputs (the run's images cannot be read)"
    first = torch.cat(images) if len({tuple(x.shape) for x in images}) == 1 else images[0]
    h, w = first.shape[-2:]
    odd = resize_to(first[:1], (max(9, round(h * 0.75)) | 1, max(9, round(w * 1.25)) | 1))
    return [first, odd], what


def _check_parity(model: nn.Module, onnx_file: Path, inputs: list[torch.Tensor], where: str, amp: str = "none",
                  task: str = "binary", num_classes: int = 1) -> list[dict[str, Any]]:
    """fp32 logits of ONNX Runtime against PyTorch's fp32 ones (must be within the bound); with ``amp`` (the precision
    the predictor runs the member in: bf16 / fp16) also the gap to the predictor's own autocast output, recorded only."""
    from .models.presence import split_presence
    from .tensors import activate

    session = OnnxModel(onnx_file)
    out = []
    for x in inputs:
        with torch.inference_mode():
            ref = model(x).float()
            got = session(x)
        diff = float((got - ref).abs().max())
        bound = PARITY_BOUND * max(1.0, float(ref.abs().max()))
        out.append({"shape": list(x.shape), "max_abs_diff": diff, "bound": bound})
        if amp != "none":  # what `predict.backend: torch` (and the OOF files) compute: the model under autocast
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
            try:
                with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
                    mixed = model(x).float()
            except RuntimeError as e:  # a torch without CPU autocast in this dtype: nothing to compare here
                log.warning("%s: the %s gap is not measured on the CPU (%s)", where, amp, e)
                continue
            present = mixed.shape[1] == 2 * num_classes

            def probs(t: torch.Tensor) -> torch.Tensor:
                return activate(split_presence(t, num_classes, present)[0], task)

            out[-1].update({"predictor_amp": amp, "max_abs_diff_vs_predictor": float((got - mixed).abs().max()),
                            "max_abs_prob_diff_vs_predictor": float((probs(got) - probs(mixed)).abs().max())})
        if not diff <= bound:
            raise ExportError(f"{where}: ONNX Runtime's logits differ from PyTorch's by up to {diff:.3g} on an input of "
                              f"{tuple(x.shape)} (allowed {bound:.3g} = {PARITY_BOUND:g} x max(1, max |logit|)); "
                              "nothing was written for this fold")
    return out


def _export_onnx(model: nn.Module, example: torch.Tensor, tmp: str, meta: dict[str, Any]) -> None:
    import onnx

    core, multiple, min_size = unpadded(model)
    x, _ = pad_to_multiple(example, multiple, min_size)
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():  # the legacy exporter says it is legacy; the tracer warns about a shape check
        warnings.simplefilter("ignore")  # that the padding makes constant (padded inputs always match their skips)
        torch.onnx.export(core, (x,), tmp, dynamo=False, opset_version=OPSET, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": axes, "logits": axes})
    proto = onnx.load(tmp)
    for key, value in {_MARK: "1", "pad_multiple": multiple, "min_input_size": min_size, **meta}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(proto)
    onnx.save(proto, tmp)


def _export_member(member, fmt: str) -> list[dict[str, Any]]:
    run = member.run
    manifest = read_json(run.export_json) or {}
    if run.export_json.is_file() and manifest.get("format") not in _FORMATS:
        raise RunExistsError(f"{run.export_json}: exists and is not an export manifest of seg_toolkit; move it away")
    manifest = {"format": fmt, "opset": OPSET, "parity_bound": PARITY_BOUND, "folds": dict(manifest.get("folds", {}))}
    mixed = mixed_precision(member)
    amp_mode = mixed[0][0] if mixed else "none"
    results = []
    for fold in member.folds:
        path, best = run.onnx_path(fold), run.best_pt(fold)
        if path.exists() and not _is_own_export(path):
            raise RunExistsError(f"{path}: exists and is not an export of this toolkit; move it away (it is not replaced)")
        inputs, what = parity_inputs(member, fold)
        model, trained = load_model(best, map_location="cpu", use_ema=member.cfg.train.use_ema)
        sha = sha256_file(best)
        meta = {"run": run.dir.name, "fold": fold, "task": member.cfg.data.task, "num_classes": member.cfg.data.num_classes,
                "in_channels": member.cfg.data.in_channels, "best_pt_sha256": sha, "torch": torch.__version__}
        parity: list[dict[str, Any]] = []

        def write(tmp: str) -> None:
            _export_onnx(model, inputs[0], tmp, meta)
            parity.extend(_check_parity(model, Path(tmp), inputs, f"{run.dir} fold {fold}", amp_mode,
                                        member.cfg.data.task, member.cfg.data.num_classes))

        atomic_write(path, write)
        # what best.pt was trained with (TRAINED_KEYS): predict.backend: onnx compares it with config.yaml, as torch does
        entry = {"fold": fold, "file": path.name, "best_pt_sha256": sha, "use_ema": member.cfg.train.use_ema,
                 "trained_keys": trained_values(trained), "predictor_amp": amp_mode,
                 "parity_inputs": what, "parity": parity, "bytes": os.path.getsize(path)}
        manifest["folds"][str(fold)] = entry
        write_json(run.export_json, manifest)
        results.append({**entry, "path": str(path)})
        log.info("exported %s (max |onnx - torch| %s)", path, ", ".join(f"{p['max_abs_diff']:.2g}" for p in parity))
    if mixed:
        gaps = [p for r in results for p in r["parity"] if "max_abs_diff_vs_predictor" in p]
        gap = (f"ONNX Runtime's fp32 output differs from the predictor's {amp_mode} one by up to "
               f"{max(p['max_abs_diff_vs_predictor'] for p in gaps):.2g} in logits, "
               f"{max(p['max_abs_prob_diff_vs_predictor'] for p in gaps):.2g} in probabilities; " if gaps else "")
        log.warning("%s: %s%s", run.dir, gap, _amp_refusal(member, mixed, what="predict.backend: onnx will refuse this run"))
    return results


def export_run(cfg: Config, fmt: str = "onnx") -> dict[str, list[dict[str, Any]]]:
    """Export every trained fold of the run of ``cfg`` (every member's, for an ensemble); see the module doc.

    Returns ``{run folder: [per fold: path, bytes, parity (shape, max_abs_diff, bound), ...]}``.
    """
    from .inference import run_predictor

    if fmt not in _FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(_FORMATS)} (TorchScript: see seg_toolkit/export.py)")
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"exporting to ONNX needs the onnx package: pip install 'seg_toolkit[onnx]' ({e})") from None
    _, predictor = run_predictor(_torch_backend(cfg))
    return {str(m.run.dir): _export_member(m, fmt) for m in predictor.members}


def _torch_backend(cfg: Config) -> Config:
    import dataclasses

    return dataclasses.replace(cfg, predict=dataclasses.replace(cfg.predict, backend="torch"), train=dataclasses.replace(cfg.train, device="cpu"))


# ----------------------------------------------------------------------------- the predictor's backend


def check_onnx_backend(members: list, device: torch.device | None = None) -> None:
    """Refuse ``predict.backend: onnx`` unless onnxruntime imports, every fold of every member has an export made
    from its current ``best.pt`` with the trained settings its config.yaml names, and every member predicts in fp32
    (:func:`mixed_precision` on ``device``: the OOF files were tuned on its precision); each message names the fix."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"predict.backend: onnx needs onnxruntime: pip install 'seg_toolkit[onnx]' ({e}); "
                          "or predict with predict.backend: torch") from None
    for m in members:
        fix = f"run `seg-toolkit export {m.run.dir} --format onnx`"
        manifest = read_json(m.run.export_json) or {}
        for fold in m.folds:
            path, entry = m.run.onnx_path(fold), (manifest.get("folds") or {}).get(str(fold))
            if not path.is_file() or not isinstance(entry, dict):
                raise ConfigError(f"predict.backend: onnx, but fold {fold} of {m.run.dir} is not exported ({path} "
                                  f"{'not found' if not path.is_file() else 'not in ' + str(m.run.export_json)}); {fix}")
            best = m.run.best_pt(fold)
            if best.is_file() and sha256_file(best) != entry.get("best_pt_sha256"):
                raise ConfigError(f"predict.backend: onnx, but {path} was exported from another {best.name} than the current "
                                  f"one (the fold was trained again since); {fix}")
            if entry.get("use_ema") not in (None, m.cfg.train.use_ema):
                raise ConfigError(f"{path} was exported with train.use_ema {entry['use_ema']}, the run predicts with "
                                  f"{m.cfg.train.use_ema}; {fix}")
            trained = entry.get("trained_keys")
            if not isinstance(trained, dict):
                raise ConfigError(f"{m.run.export_json} does not record the settings fold {fold}'s best.pt was trained with "
                                  f"(an export made before they were recorded), so config.yaml cannot be checked against it; {fix}")
            diff = trained_diff(trained, m.cfg)
            if diff:  # as the torch backend refuses (Member.model): preprocessing from config.yaml, model from best.pt
                raise ConfigError(f"{path} was exported from a {m.run.best_pt(fold).name} trained with other settings than "
                                  f"{m.run.config_yaml} says ({'; '.join(diff[:6])}); the run folder's files disagree: "
                                  "restore its config.yaml, or train the fold again")
        mixed = mixed_precision(m, device)
        if mixed:
            gaps = [p["max_abs_prob_diff_vs_predictor"] for e in (manifest.get("folds") or {}).values() if isinstance(e, dict)
                    for p in e.get("parity") or () if isinstance(p, dict) and "max_abs_prob_diff_vs_predictor" in p]
            gap = f" (export measured probabilities differing by up to {max(gaps):.2g})" if gaps else ""
            raise ConfigError(_amp_refusal(m, mixed, what="predict.backend: onnx", gap=gap))


def trained_values(cfg: Config) -> dict[str, Any]:
    """The config values that training fixed (:data:`~seg_toolkit.run_settings.TRAINED_KEYS`), as ``{dotted key: value}``
    (JSON values): what an export records of its ``best.pt``, compared with the run's config at prediction."""
    import json

    from .config import config_to_dict
    from .run_settings import TRAINED_KEYS, key_named

    flat: dict[str, Any] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(json.loads(json.dumps(config_to_dict(cfg))), "")
    return {k: v for k, v in flat.items() if key_named(k, TRAINED_KEYS)}


def trained_diff(recorded: dict[str, Any], cfg: Config) -> list[str]:
    """``key: trained -> configured`` for every trained key on which ``cfg`` differs from an export's record."""
    now = trained_values(cfg)
    return [f"{k}: {recorded.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(recorded) | set(now)) if recorded.get(k) != now.get(k)]


def mixed_precision(member, device: torch.device | None = None) -> list[tuple[str, str]]:
    """``[(bf16 | fp16, why)]``: the mixed precisions the member predicts in (empty: fp32), by its saved ``train.amp``
    (inference follows it; there is no predict-side key): resolved on ``device`` (default: the CPU) with the run's
    ``amp.json``, and as each fold's ``done.json`` records its training, in which its OOF files were predicted."""
    from .amp import oof_precision, resolve_amp

    saved = member.run.config() if member.run.config_yaml.is_file() else member.cfg  # not a predict-time --set
    requested = saved.train.amp
    device = device or torch.device("cpu")
    out = []
    if requested != "none":
        choice = resolve_amp(requested, device, read_json(member.run.amp_json))
        if choice.mode != "none":
            out.append((choice.mode, f"train.amp: {requested} resolves to {choice.mode} on {device.type}: {choice.reason}"))
    for fold in member.folds:  # whatever config.yaml says now: an edited train.amp does not remake the OOF files
        mode = oof_precision(read_json(member.run.done_json(fold)) or {})
        if mode not in (None, "none"):
            out.append((str(mode), f"fold {fold} made its OOF files in {mode} ({member.run.done_json(fold).name})"))
    return out


def _amp_refusal(member, mixed: list[tuple[str, str]], what: str, gap: str = "") -> str:
    modes = "/".join(dict.fromkeys(m for m, _ in mixed))
    return (f"{what}: {member.run.dir} predicts in {modes}, not fp32 ({'; '.join(dict.fromkeys(w for _, w in mixed))}): its "
            f"OOF files and the post-processing tuned on them are {modes} probabilities, while ONNX Runtime runs the exported "
            f"graph in fp32{gap}, so the submission would not be what was tuned. The inference precision follows train.amp: "
            f"set `train.amp: none` in {member.run.config_yaml}, re-make the OOF files and the post-processing in fp32 with "
            f"`seg-toolkit oof {member.run.dir}`, then predict with predict.backend: onnx; or predict with predict.backend: torch")
