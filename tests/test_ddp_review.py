"""DDP defects found in review, and their fixes: one 2-process gloo launch on CPU runs the scenarios one after the
other in the same process group (a launch costs ~20 s); what needs no second process is tested directly."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import torch

from seg_toolkit.checkpoint import load_checkpoint
from seg_toolkit.config import ConfigError, config_from_dict
from seg_toolkit.distributed import Dist
from seg_toolkit.errors import SegToolkitError

from .conftest import demo_dict

# Runs the scenarios of argv[1] (a JSON list) in turn in each rank, as `seg-toolkit train` would, and records each one's
# exit code and printed error per rank. A scenario may inject a NaN loss on some ranks (first loss of the run), ask for a
# stop (Ctrl-C) on some ranks right after their n-th optimiser update of the run, and plant partial checkpoint writes.
CHILD = textwrap.dedent(
    """
    import contextlib, hashlib, io, json, os, sys
    from pathlib import Path
    import torch
    import seg_toolkit.averaging as A
    import seg_toolkit.distributed as D
    import seg_toolkit.epoch as E
    from seg_toolkit.cli import main

    rank = int(os.environ["RANK"])
    now, box = {}, {}
    original_loss, original_step, original_enter = E.model_loss, E.optimizer_step, E.GracefulStop.__enter__
    def loss(*a, **k):
        value, terms = original_loss(*a, **k)
        now["losses"] += 1
        if now["losses"] == 1 and rank in now.get("nan_ranks", []):
            value = value * float("nan")
        return value, terms
    def step(*a, **k):
        original_step(*a, **k)
        now["updates"] += 1  # each rank's torch RNG after each update: its dropout stream
        now.setdefault("rng", []).append(hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()[:16])
        if now.get("stop", {}).get(str(rank)) == now["updates"]:
            box["stop"].requested = True
    def enter(self):
        box["stop"] = self
        return original_enter(self)
    original_bn = A.recompute_batchnorm
    def bn(model, loader, device, forward):
        seen = []
        def counted(m, batch):
            seen.append(batch["image"].shape[0])
            forward(m, batch)
        n = original_bn(model, loader, device, counted)
        now.setdefault("bn_images", []).append(sum(seen))
        return n
    E.model_loss, E.optimizer_step, E.GracefulStop.__enter__, A.recompute_batchnorm = loss, step, enter, bn
    close, D.close_distributed = D.close_distributed, lambda: None  # one process group for all the scenarios

    class Tee(io.StringIO):
        def write(self, text):
            sys.__stderr__.write(text)
            return super().write(text)

    results = {}
    for sc in json.loads(open(sys.argv[1]).read()):
        now.clear()
        now.update(sc, losses=0, updates=0)
        if rank == 0:
            for i in range(sc.get("plant", 0)):  # partial checkpoint writes a kill left
                Path(sc["fold_dir"], f".last.pt.k{i}x.tmp").write_bytes(b"x")
        err = Tee()
        with contextlib.redirect_stderr(err):  # the log handler the first main() makes writes to the real stderr too
            rc = main(["train", sc["config"], *sc.get("args", [])])
        results[sc["name"]] = {"rc": rc, "err": err.getvalue(), "bn_images": now.get("bn_images", []), "rng": now.get("rng", [])}
        print(f"SCENARIO {sc['name']} rank {rank} rc {rc}", flush=True)
    close()
    with open(f"{sys.argv[2]}/rank{rank}.json", "w") as fh:
        json.dump(results, fh)
    """
)


def _cfg(demo_root, runs: Path, name: str, train=None, **sections) -> dict:
    data = demo_dict(demo_root, runs, folds={"n_splits": 2, "method": "kfold", "seed": 0, "only": [0]},
                     train={"epochs": 2, "batch_size": 1, "num_workers": 0, "device": "cpu", **(train or {})},
                     postprocess={"tune": False}, **sections)
    data["experiment"] = name
    return data


@pytest.mark.slow
def test_ddp_review_scenarios(demo_root, tmp_path):
    runs = tmp_path / "runs"
    configs = {
        "bs4": _cfg(demo_root, runs, "bs4", {"epochs": 1, "batch_size": 4}),  # 3 images per rank < batch_size 4
        "nan": _cfg(demo_root, runs, "nan", {"epochs": 1, "nan_retries": 1}),
        "nan1": _cfg(demo_root, runs, "nan1", {"epochs": 1}),
        # 3 images per rank, batch 1: 3 updates per epoch; dropout on the bottleneck draws from each rank's stream
        "ref": _cfg(demo_root, runs, "ref", model={"dropout": 0.5}),
        "stop": _cfg(demo_root, runs, "stop", model={"dropout": 0.5}),
        "world": _cfg(demo_root, runs, "world", {"epochs": 3, "batch_size": 2}, scheduler={"name": "onecycle"}),
        "world_mid": _cfg(demo_root, runs, "world_mid"),
        "avg": _cfg(demo_root, runs, "avg", {"epochs": 3, "batch_size": 2, "keep_best_k": 2, "average_best": True}),
        "unused": _cfg(demo_root, runs, "unused", {"epochs": 1, "batch_size": 2},
                       model={"arch": "unet", "encoder": "tu-test_efficientnet", "encoder_weights": None,
                              "params": {"encoder_depth": 4, "decoder_channels": [16, 8, 8, 4]}}),
    }
    paths = {}
    for name, data in configs.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(data))
    fold = {name: runs / name / "fold_0" for name in configs}
    scenarios = [
        {"name": "bs4", "config": str(paths["bs4"])},
        {"name": "nan", "config": str(paths["nan"]), "nan_ranks": [0, 1]},
        {"name": "nan1", "config": str(paths["nan1"]), "nan_ranks": [1]},
        {"name": "ref", "config": str(paths["ref"])},
        # Ctrl-C reaching rank 0 only, at epoch 1's last update; then rank 1 only, at epoch 2's second update
        {"name": "stop_end", "config": str(paths["stop"]), "stop": {"0": 3}},
        {"name": "stop_mid", "config": str(paths["stop"]), "args": ["--resume"], "stop": {"1": 2}, "plant": 40,
         "fold_dir": str(fold["stop"])},
        {"name": "stop_done", "config": str(paths["stop"]), "args": ["--resume"]},
        {"name": "world", "config": str(paths["world"]), "stop": {"0": 1, "1": 1}},  # after epoch 1 (its one update)
        {"name": "world_mid", "config": str(paths["world_mid"]), "stop": {"0": 4, "1": 4}},  # epoch 2's first update
        {"name": "avg", "config": str(paths["avg"])},
        {"name": "unused", "config": str(paths["unused"])},
    ]
    (tmp_path / "scenarios.json").write_text(json.dumps(scenarios))
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(child),
                           str(tmp_path / "scenarios.json"), str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    rc = {name: [r[name]["rc"] for r in ranks] for name in ranks[0]}
    err = {name: ranks[0][name]["err"] + ranks[1][name]["err"] for name in ranks[0]}

    # 1. a shard smaller than train.batch_size is one batch (was: none, and an AttributeError on every rank)
    assert rc["bs4"] == [0, 0], err["bs4"]
    assert load_checkpoint(fold["bs4"] / "last.pt")["step"] == 1
    # 2. a NaN loss on every rank: one retry, the files set aside once (was: "File exists" on the second rank)
    assert rc["nan"] == [0, 0], err["nan"]
    assert (fold["nan"] / "failed_attempt_1").is_dir() and (fold["nan"] / "done.json").is_file()
    # ... on one rank: every rank stops with the error naming it (was: SIGABRT of the rank waiting in the all-reduce)
    assert rc["nan1"] == [2, 2] and "loss is not finite at epoch 1, step 1 of 3 on rank(s) [1]" in err["nan1"]
    # 3. a stop at an epoch's last update ends the epoch first; resumed, then stopped mid-epoch on one rank only, then
    # resumed again: the weights and the rows (losses, lr) of the uninterrupted run (was: a crash on resume)
    assert rc["ref"] == [0, 0], err["ref"]
    assert rc["stop_end"] == [130, 130] and "stopped after epoch 1" in err["stop_end"]
    assert rc["stop_mid"] == [130, 130] and "interrupted in epoch 2 after 2 batches" in err["stop_mid"]
    assert rc["stop_done"] == [0, 0], err["stop_done"]
    ref, resumed = load_checkpoint(fold["ref"] / "last.pt"), load_checkpoint(fold["stop"] / "last.pt")
    assert ref["step"] == resumed["step"] == 6
    for k, v in ref["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    rows, ref_rows = pd.read_csv(fold["stop"] / "metrics.csv"), pd.read_csv(fold["ref"] / "metrics.csv")
    assert rows["epoch"].tolist() == [1, 2] and rows["lr"].tolist() == ref_rows["lr"].tolist()
    losses = [c for c in ref_rows.columns if c.startswith("train_")]
    assert rows[losses].values == pytest.approx(ref_rows[losses].values, rel=1e-5)
    # ... and each rank went on with its own dropout stream, as saved: the RNG states after each update are the
    # uninterrupted run's, rank by rank, and no state of rank 0's is ever rank 1's (was: the same masks on both ranks,
    # and a resume put rank 0's state on rank 1)
    for r in (0, 1):
        resumed_rng = ranks[r]["stop_end"]["rng"] + ranks[r]["stop_mid"]["rng"] + ranks[r]["stop_done"]["rng"]
        assert len(ranks[r]["ref"]["rng"]) == 6 and resumed_rng == ranks[r]["ref"]["rng"], r
    assert not set(ranks[0]["ref"]["rng"]) & set(ranks[1]["ref"]["rng"])
    # 6. the resume's partial writes were removed by rank 0 alone (was: ENOENT on the rank that lost the race)
    assert not list(fold["stop"].glob(".*.tmp"))
    # 5. checkpoint averaging's BatchNorm pass sees the fold's 6 training images on rank 0 (was: its shard, 2 of them)
    assert rc["avg"] == [0, 0], err["avg"]
    assert ranks[0]["avg"]["bn_images"] == [6] and ranks[1]["avg"]["bn_images"] == []
    # 9. a Unet with encoder_depth 4 leaves the encoder's last stage without gradients: DDP is told to look for them
    assert rc["unused"] == [0, 0], err["unused"]
    assert "13 parameter tensor(s) get no gradient from the loss" in proc.stderr
    # minor: the other rank logs warnings only
    assert "distributed: rank 0 of 2" in proc.stderr and "distributed: rank 1 of 2" not in proc.stderr

    # 4. resumed with 1 process after epoch 1 of a 2-process run: the rest of the one-cycle schedule is laid out for 1
    # process's updates per epoch (was: "Tried to step 4 times"); its lr is that of a 1-process run from there on
    from seg_toolkit.cv import run_cv

    assert rc["world"] == [130, 130] and rc["world_mid"] == [130, 130]
    run_cv(config_from_dict({**configs["world"], "experiment": "world_single"}))
    run_cv(config_from_dict(configs["world"]), resume=True)
    lr = pd.read_csv(fold["world"] / "metrics.csv")["lr"].tolist()
    lr_single = pd.read_csv(runs / "world_single" / "fold_0" / "metrics.csv")["lr"].tolist()
    assert len(lr) == 3 and lr[1:] == pytest.approx(lr_single[1:], rel=1e-9)
    assert load_checkpoint(fold["world"] / "last.pt")["train_state"]["world_size"] == 1
    # ... stopped mid-epoch, it is refused, naming both numbers of processes
    with pytest.raises(SegToolkitError, match=r"middle of epoch 2 .* by a run of 2 process\(es\); this run has 1"):
        run_cv(config_from_dict(configs["world_mid"]), resume=True)


# ----------------------------------------------------------------------------- without a second process


def test_each_ranks_share_smaller_than_a_batch_is_one_batch(demo_cfg):
    """6 images over 2 ranks with train.batch_size 4: 3 per rank, one batch each (drop_last was decided on all 6)."""
    from seg_toolkit.data import load_train_samples
    from seg_toolkit.train import build_loaders

    samples = load_train_samples(demo_cfg)
    for rank in (0, 1):
        loader, _ = build_loaders(demo_cfg, samples[:6], samples[6:7], torch.device("cpu"), Dist(rank=rank, world_size=2))
        assert len(loader) == 1 and [b["image"].shape[0] for b in loader] == [3]
    loader, _ = build_loaders(demo_cfg, samples[:10], samples[10:], torch.device("cpu"))  # one process: as before
    assert len(loader) == 2 and loader.drop_last


def test_an_epoch_without_a_batch_is_a_clear_error(demo_cfg):
    from seg_toolkit.epoch import train_one_epoch
    from seg_toolkit.fold_state import TrainState

    with pytest.raises(SegToolkitError, match=r"fold 0: the training loader gives no batch in epoch 1 \(0 image\(s\) for this "
                                              r"process, train.batch_size=4\)"):
        train_one_epoch(demo_cfg, torch.nn.Linear(1, 1), None, None, None, None, None, [], TrainState(), 0, 0, torch.device("cpu"))


def test_an_epoch_resumed_with_no_batch_left_is_its_row_from_before_the_stop(demo_cfg):
    """A checkpoint saved after an epoch's last batch (as a stop at that update did): nothing left to run, the row is
    the batches before the stop (was: None sums, an AttributeError under DDP)."""
    from seg_toolkit.epoch import train_one_epoch
    from seg_toolkit.fold_state import TrainState

    model = torch.nn.Linear(1, 1)
    state = TrainState(batch=3, partial={"names": ["loss", "bce"], "sums": [6.0, 3.0], "n_images": 3, "lr_sum": 0.3, "n_updates": 3})
    stats = train_one_epoch(demo_cfg, model, None, None, torch.optim.SGD(model.parameters(), lr=1.0), None, None, [], state, 0, 1,
                            torch.device("cpu"))
    assert (stats["train_loss"], stats["train_bce"], stats["lr"]) == pytest.approx((2.0, 1.0, 0.1)) and state.partial == {}


def test_whole_train_loader_has_every_image_and_no_batch_of_one(demo_cfg):
    from seg_toolkit.data import load_train_samples
    from seg_toolkit.train import whole_train_loader

    samples = load_train_samples(demo_cfg)[:9]  # batch 4: 4, 4 and 1 -> 4 and 5
    sizes = [b["image"].shape[0] for b in whole_train_loader(demo_cfg, samples, torch.device("cpu"), 2)]
    assert sizes == [4, 5]
    first = [b["id"] for b in whole_train_loader(demo_cfg, samples, torch.device("cpu"), 2)]
    assert sorted(sum(first, [])) == sorted(s.id for s in samples)


class _Rank:
    """A Dist stand-in for one rank of two, without a process group."""

    def __init__(self, rank: int) -> None:
        self.rank, self.world_size, self.enabled, self.is_main = rank, 2, True, rank == 0
        self.barriers = 0

    def barrier(self) -> None:
        self.barriers += 1


def test_restore_changes_files_on_rank_0_only(tmp_path):
    from seg_toolkit.fold_state import restore
    from seg_toolkit.run import Run

    run = Run(tmp_path)
    run.fold_dir(0).mkdir(parents=True)
    partial = run.fold_dir(0) / ".last.pt.k3j9x_2a.tmp"
    partial.write_bytes(b"x")
    run.metrics_csv(0).write_text("fold,epoch\n0,1\n")  # killed before its first checkpoint: rows dropped on resume
    other = _Rank(1)
    assert restore(run, 0, None, None, None, None, None, other).epoch == 0
    assert partial.is_file() and run.metrics_csv(0).read_text() == "fold,epoch\n0,1\n" and other.barriers == 2
    main = _Rank(0)
    restore(run, 0, None, None, None, None, None, main)
    assert not partial.exists() and pd.read_csv(run.metrics_csv(0)).empty and main.barriers == 2


def test_resumed_with_another_number_of_processes(demo_cfg):
    from seg_toolkit.fold_state import TrainState
    from seg_toolkit.train import resumed_layout

    one = Dist()
    state = TrainState(epoch=1, step=1, epochs=3, world_size=2, updates_per_epoch=1)
    assert resumed_layout(demo_cfg, 0, state, one, 3) and state.step == 3  # the updates a 1-process run has made
    same = TrainState(epoch=1, step=1, epochs=3, world_size=2, updates_per_epoch=3)
    assert not resumed_layout(demo_cfg, 0, same, one, 3) and same.step == 1
    old = TrainState(epoch=1, step=1, batch=1, epochs=3)  # a checkpoint from before the sizes were kept: as before
    assert not resumed_layout(demo_cfg, 0, old, one, 3)
    mid = TrainState(epoch=1, step=4, batch=1, epochs=3, world_size=2, updates_per_epoch=3)
    with pytest.raises(SegToolkitError, match=r"fold 0: .* middle of epoch 2 \(after 1 batches per process\) by a run of 2 "
                                              r"process\(es\); this run has 1.* resume it under torchrun with 2 processes"):
        resumed_layout(demo_cfg, 0, mid, one, 3)


def test_explicit_cuda_index_is_refused_under_ddp():
    from seg_toolkit.device import resolve_device

    with mock.patch.object(torch.cuda, "is_available", return_value=True), \
            mock.patch.object(torch.cuda, "device_count", return_value=2):
        for name in ("auto", "cuda"):
            assert [resolve_device(name, Dist(rank=r, world_size=2, local_rank=r)) for r in (0, 1)] == \
                [torch.device("cuda", 0), torch.device("cuda", 1)]
        for name in ("cuda:0", "cuda:1"):
            with pytest.raises(ConfigError, match=rf"train.device: '{name}' names one GPU, but under torchrun \(2 processes\)"
                                                  r".*expected 'auto' or 'cuda'"):
                resolve_device(name, Dist(rank=1, world_size=2, local_rank=1))
        assert resolve_device("cuda:1", Dist()) == torch.device("cuda", 1)  # one process: the GPU it names


def test_process_group_timeout_default_and_environment(monkeypatch):
    import seg_toolkit.distributed as D

    calls = []
    monkeypatch.setattr(D.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(D.dist, "init_process_group", lambda **kw: calls.append(kw))
    monkeypatch.setattr(D, "_CURRENT", D.Dist())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv(D.TIMEOUT_ENV, raising=False)
    assert D.init_distributed("cpu").rank == 1
    assert calls[-1]["backend"] == "gloo" and calls[-1]["timeout"].total_seconds() == D.DEFAULT_TIMEOUT_S == 6 * 3600
    monkeypatch.setenv(D.TIMEOUT_ENV, "90.5")
    D.init_distributed("cpu")
    assert calls[-1]["timeout"].total_seconds() == 90.5
    for bad in ("soon", "0", "-3", "inf"):
        monkeypatch.setenv(D.TIMEOUT_ENV, bad)
        with pytest.raises(ConfigError, match=rf"SEG_TOOLKIT_DDP_TIMEOUT_S='{bad}': expected a positive number of seconds"):
            D.init_distributed("cpu")


def test_unused_parameters_found_without_touching_the_model_or_the_rng(demo_cfg):
    import dataclasses

    from seg_toolkit.data import load_train_samples
    from seg_toolkit.losses import build_loss
    from seg_toolkit.models import build_model
    from seg_toolkit.train import unused_parameters

    from seg_toolkit.config import ModelConfig

    cfg = dataclasses.replace(demo_cfg, model=ModelConfig(arch="unet", encoder="tu-test_efficientnet", encoder_weights=None,
                                                          params={"encoder_depth": 4, "decoder_channels": [16, 8, 8, 4]}))
    model = build_model(cfg.model, num_classes=3, in_channels=3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    unused = unused_parameters(cfg, model, build_loss(cfg), load_train_samples(cfg)[:2], torch.device("cpu"))
    assert len(unused) == 13 and all(n.startswith("encoder.model.blocks.4.") for n in unused)
    assert torch.equal(torch.get_rng_state(), rng) and not model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BatchNorm statistics included
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", ["cosine", "poly", "step", "onecycle", "plateau"])
def test_schedule_laid_out_again_for_another_number_of_updates_per_epoch(demo_cfg, name):
    """Restored from a run of 2 updates per epoch at the end of epoch 2, laid out for 3: every later lr is a 3-update run's."""
    import dataclasses

    from seg_toolkit.optim import LRSchedule

    cfg = dataclasses.replace(demo_cfg, train=dataclasses.replace(demo_cfg.train, epochs=6),
                              scheduler=dataclasses.replace(demo_cfg.scheduler, name=name, step_size=2, warmup_epochs=1))

    def schedule(updates_per_epoch, done):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
        s = LRSchedule(cfg, opt, updates_per_epoch)
        for n in range(1, done + 1):
            opt.step()
            s.step_update(n)
        return opt, s

    old_opt, old = schedule(2, 4)
    opt, fresh = schedule(3, 0)  # a resume: a new schedule, the old one's state loaded
    opt.load_state_dict(old_opt.state_dict())
    fresh.load_state_dict(old.state_dict())
    relaid = fresh.for_epochs(cfg, opt, 3, 6, 6, per_epoch_changed=True)
    ref_opt, ref = schedule(3, 6)
    for n in range(7, 19):
        for o, s in ((opt, relaid), (ref_opt, ref)):
            o.step()
            s.step_update(n)
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-9), n


def test_each_rank_resumes_its_own_rng_stream_or_one_of_its_own():
    """``rng_ranks`` holds every rank's states; a rank beyond them (a checkpoint of fewer processes, or one saved before
    ranks had streams of their own) gets rank 0's state reseeded for it, never rank 0's stream itself."""
    from seg_toolkit.checkpoint import rng_state
    from seg_toolkit.device import seed_rank
    from seg_toolkit.fold_state import _restore_rng

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        rank0 = rng_state()
        torch.manual_seed(2)
        rank1 = rng_state()
        ckpt = {"rng": rank0, "rng_ranks": [rank0, rank1], "step": 7}
        draws = {}
        for rank in (0, 1, 2):
            _restore_rng(ckpt, rank)
            draws[rank] = torch.rand(3)
        torch.manual_seed(2)
        assert torch.equal(draws[1], torch.rand(3))  # rank 1: its own saved state
        torch.manual_seed(1)
        assert torch.equal(draws[0], torch.rand(3))  # rank 0: the single process's
        seed_rank(7, 2)
        assert torch.equal(draws[2], torch.rand(3))  # rank 2: reseeded from the update reached
        assert not torch.equal(draws[2], draws[0])
        before = torch.get_rng_state()
        seed_rank(5, 0)  # rank 0 keeps the stream seed_everything gave it
        assert torch.equal(torch.get_rng_state(), before)
