"""DistributedDataParallel on CPU (gloo): 2 processes under torchrun, identical weights, one set of files."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from .conftest import demo_dict

# Each rank records its own weights after every epoch into a folder of the test's (not the
# run folder), so the test can compare ranks; the library itself writes from rank 0 only.
CHILD = textwrap.dedent(
    """
    import json, os, sys, torch
    from seg_toolkit.cli import main
    from seg_toolkit.distributed import Dist

    spy_dir = sys.argv[2]
    original, epochs = Dist.average_buffers, [0]
    def spy(self, model):  # each rank's weights at the end of every epoch, after the buffer averaging
        original(self, model)
        torch.save(model.state_dict(), f"{spy_dir}/rank{self.rank}_epoch{epochs[0]}.pt")
        epochs[0] += 1
    Dist.average_buffers = spy
    rc = main(["train", sys.argv[1]])  # what torchrun -m seg_toolkit.cli train runs
    with open(f"{spy_dir}/exit_rank{os.environ['RANK']}.json", "w") as fh:
        json.dump({"rc": rc, "group_left": not torch.distributed.is_initialized()}, fh)
    """
)


def _torchrun(child: str, cfg_data: dict, tmp_path: Path) -> Path:
    """Run ``child`` (argv: config, spy folder) in 2 processes under torchrun; returns the spy folder."""
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg_data))
    spy = tmp_path / "spy"
    spy.mkdir()
    script = tmp_path / "child.py"
    script.write_text(child)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(cfg_path), str(spy)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"torchrun exited {proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
    return spy


@pytest.mark.slow
def test_two_process_ddp_on_cpu(demo_root, tmp_path):
    cfg_data = demo_dict(demo_root, tmp_path / "runs", folds={"n_splits": 2, "method": "kfold", "seed": 0, "only": [0]},
                         train={"epochs": 2, "batch_size": 2, "num_workers": 0, "device": "cpu"})
    spy = _torchrun(CHILD, cfg_data, tmp_path)
    # both ranks returned 0 from the CLI and left the process group before exiting (without that,
    # Gloo's threads can abort the interpreter's teardown: pytorch/pytorch#190489)
    for rank in (0, 1):
        assert json.loads((spy / f"exit_rank{rank}.json").read_text()) == {"rc": 0, "group_left": True}
    for epoch in (0, 1):
        a = torch.load(spy / f"rank0_epoch{epoch}.pt", weights_only=True)
        b = torch.load(spy / f"rank1_epoch{epoch}.pt", weights_only=True)
        for k in a:
            assert torch.equal(a[k], b[k]), f"epoch {epoch}: {k} differs between ranks"
    run = tmp_path / "runs" / "t"
    metrics = pd.read_csv(run / "fold_0" / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]  # one row per epoch: only rank 0 wrote
    assert json.loads((run / "fold_0" / "done.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "cv.json", "fold_0", "fold_balance.csv", "folds.csv", "folds.json",
                                                     "learning_curves.html", "learning_curves.png", "oof", "oof_summary.json",
                                                     "postprocess.json"]  # folds.only: [0] is the whole run: tuned
    # each rank trains on its own half: 6 training images -> 3 per rank, batch 2 with the partial
    # batch dropped -> 1 update per epoch (a single process would make 3), 2 over the two epochs
    assert torch.load(run / "fold_0" / "last.pt", weights_only=True)["step"] == 2


# Rank 1's own plan would stop its fold after the first epoch; rank 0's keeps going. The ranks
# must follow one plan (rank 0's, broadcast), or rank 0 would wait forever for rank 1's gradients.
BUDGET_CHILD = textwrap.dedent(
    """
    import json, os, sys
    from seg_toolkit.budget import FoldBudget
    from seg_toolkit.cli import main

    rank = int(os.environ["RANK"])
    FoldBudget.replan = lambda self, total, done, elapsed_s, last_epoch_s: done if rank == 1 else total
    rc = main(["train", sys.argv[1]])
    with open(f"{sys.argv[2]}/exit_rank{rank}.json", "w") as fh:
        json.dump({"rc": rc}, fh)
    """
)


@pytest.mark.slow
def test_ddp_ranks_follow_rank_0s_time_budget_plan(demo_root, tmp_path):
    cfg_data = demo_dict(demo_root, tmp_path / "runs", folds={"n_splits": 2, "method": "kfold", "seed": 0, "only": [0]},
                         train={"epochs": 2, "batch_size": 2, "num_workers": 0, "device": "cpu", "time_budget": "1h"})
    spy = _torchrun(BUDGET_CHILD, cfg_data, tmp_path)
    for rank in (0, 1):
        assert json.loads((spy / f"exit_rank{rank}.json").read_text()) == {"rc": 0}
    fold = tmp_path / "runs" / "t" / "fold_0"
    assert pd.read_csv(fold / "metrics.csv")["epoch"].tolist() == [1, 2]
    assert json.loads((fold / "done.json").read_text())["epochs_planned"] == 2


ACCUM_CHILD = textwrap.dedent(
    """
    import json, os, sys, torch
    from torch.nn.parallel import DistributedDataParallel as DDP
    from seg_toolkit.cli import main

    calls, original = [0], DDP.no_sync
    def no_sync(self):
        calls[0] += 1
        return original(self)
    DDP.no_sync = no_sync
    rc = main(["train", sys.argv[1]])
    rank = os.environ["RANK"]
    with open(f"{sys.argv[2]}/exit_rank{rank}.json", "w") as fh:
        json.dump({"rc": rc, "no_sync": calls[0]}, fh)
    """
)


@pytest.mark.slow
def test_ddp_gradient_accumulation_all_reduces_once_per_update(demo_root, tmp_path):
    """With train.grad_accum every micro-batch's backward all-reduced its gradients; only the update's last needs to."""
    cfg_data = demo_dict(demo_root, tmp_path / "runs", folds={"n_splits": 2, "method": "kfold", "seed": 0, "only": [0]},
                         train={"epochs": 1, "batch_size": 1, "grad_accum": 2, "num_workers": 0, "device": "cpu"})
    spy = _torchrun(ACCUM_CHILD, cfg_data, tmp_path)
    # 6 training images -> 3 per rank, batch 1 -> 3 micro-batches: updates after the 2nd and the 3rd (the last);
    # the 1st runs without the all-reduce
    for rank in (0, 1):
        assert json.loads((spy / f"exit_rank{rank}.json").read_text()) == {"rc": 0, "no_sync": 1}
    assert torch.load(tmp_path / "runs" / "t" / "fold_0" / "last.pt", weights_only=True)["step"] == 2
