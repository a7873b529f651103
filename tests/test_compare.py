"""``seg-toolkit compare``: a leaderboard from run folders alone (no tracker).

One tiny run is trained; copies of it with edited cv.json / folds.csv make the other runs, so
the order, the share groups and every value can be checked against the files."""

from __future__ import annotations

import json
import math
import re
import shutil

import pandas as pd
import pytest

from seg_toolkit.cli import main
from seg_toolkit.compare import CompareError, collect, find_runs, format_table, write_html
from seg_toolkit.config import ConfigError, config_from_dict, load_config
from seg_toolkit.cv import run_cv
from seg_toolkit.ensemble import build_ensemble

from .conftest import demo_dict


def _edit_cv(run_dir, score, fold_scores):
    cv = json.loads((run_dir / "cv.json").read_text())
    cv.update(score=score, fold_scores=fold_scores)
    (run_dir / "cv.json").write_text(json.dumps(cv))


@pytest.fixture(scope="module")
def runs(demo_root, tmp_path_factory):
    """runs/: a (trained), b (a copy, higher CV), c (a copy with other folds, lower CV), part (a copy with one fold
    unfinished and the best CV, over one fold), half (one fold unfinished, no cv.json), ens (an ensemble of a and b)
    and notes/ (not a run)."""
    root = tmp_path_factory.mktemp("runs")
    cfg = config_from_dict(demo_dict(demo_root, root, experiment="a", train={"epochs": 2}))
    cv = run_cv(cfg)
    a = root / "a"
    for name in ("b", "c", "part", "half"):
        shutil.copytree(a, root / name)
    _edit_cv(root / "b", (1 + cv["score"]) / 2, [(1 + s) / 2 for s in cv["fold_scores"]])
    _edit_cv(root / "c", cv["score"] / 2, [s / 2 for s in cv["fold_scores"]])
    folds = pd.read_csv(root / "c" / "folds.csv", dtype={"id": str}, keep_default_na=False)
    i, j = folds.index[folds.fold == 0][0], folds.index[folds.fold == 1][0]
    folds.loc[[i, j], "fold"] = folds.loc[[j, i], "fold"].to_numpy()  # two ids change folds: c cannot join a or b
    folds.to_csv(root / "c" / "folds.csv", index=False)
    for name in ("cv.json", "postprocess.json", "fold_1/done.json"):
        (root / "half" / name).unlink()
    (root / "part" / "fold_1" / "done.json").unlink()
    cv_part = json.loads((root / "part" / "cv.json").read_text())
    (root / "part" / "cv.json").write_text(json.dumps({**cv_part, "score": 0.999, "folds": [0], "fold_scores": [0.999]}))
    members = [load_config(root / n / "config.yaml", [f"runs_dir={root}", f"experiment={n}"]) for n in ("a", "b")]
    build_ensemble(members, name="ens", weights=[0.5, 0.5])
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("not a run")
    return root


def test_rows_sorted_by_cv_with_values_from_the_run_folders(runs):
    rows = collect([runs])
    names = [r.name for r in rows]
    scores = {n: json.loads((runs / n / "cv.json").read_text())["score"] for n in ("a", "b", "c", "ens")}
    # best first; a CV over some folds only after the complete runs, whatever its value; the run without CV last
    assert names == sorted(scores, key=lambda n: -scores[n]) + ["part", "half"]
    assert "notes" not in names
    by = {r.name: r for r in rows}
    for n in ("a", "b", "c", "ens"):
        cv = json.loads((runs / n / "cv.json").read_text())
        r = by[n]
        assert r.metric == cv["metric"] == "dice" and r.cv == pytest.approx(cv["score"])
        mean, std, lo, hi = r.fold_stats
        assert (mean, lo, hi) == pytest.approx((sum(cv["fold_scores"]) / 2, min(cv["fold_scores"]), max(cv["fold_scores"])))
        assert std == pytest.approx(abs(cv["fold_scores"][0] - cv["fold_scores"][1]) / 2)
    pp = json.loads((runs / "a" / "postprocess.json").read_text())
    assert by["a"].tuned == pytest.approx(pp["after"]) and by["half"].tuned is None
    seconds = sum(pd.read_csv(runs / "a" / f"fold_{k}" / "metrics.csv").seconds.sum() for k in (0, 1))
    assert by["a"].seconds == pytest.approx(seconds) and by["a"].model == "scratch_unet (depth 2, width 4)" and by["a"].tta == "identity"
    assert by["a"].epochs_run == [2, 2] and by["a"].epochs_configured == 2
    assert by["a"].curves[1] == [(e, pytest.approx(s)) for e, s in pd.read_csv(runs / "a" / "fold_1" / "metrics.csv")[["epoch", "val_score"]].itertuples(index=False)]
    # share groups: a, b, their ensemble and half (a copy) share folds.csv; c has its own
    assert by["a"].group == by["b"].group == by["ens"].group == by["half"].group != by["c"].group
    assert {r.group for r in rows} == {"A", "B"} and rows[0].group == "A"
    assert by["ens"].kind == "ensemble" and by["ens"].model == "ensemble of a, b"
    assert by["half"].cv is None and by["half"].status == "CV missing (1/2 folds trained)"
    assert by["part"].cv == 0.999 and by["part"].status == "partial: 1/2 folds"


def test_terminal_table(runs):
    rows = collect([runs])
    text = format_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["#", "run", "metric", "CV"]
    body = [ln.split()[1] for ln in lines[2 : 2 + len(rows)]]
    assert body == [r.name for r in rows]
    half = next(ln for ln in lines if ln.split()[1] == "half")
    assert "missing" in half and "CV missing (1/2 folds trained)" in half
    ens = next(ln for ln in lines if ln.split()[1] == "ens")
    assert ens.rstrip().endswith("ensemble") and "ensemble of a, b" in ens
    a = next(ln for ln in lines if ln.split()[1] == "a")
    assert f"{json.loads((runs / 'a' / 'cv.json').read_text())['score']:.4f}" in a and " 2/2 " in a
    assert "same folds.csv" in lines[-1]


def test_html_page_is_standalone_with_bars_and_curves(runs, tmp_path, capsys):
    assert main(["compare", str(runs), "--html", str(tmp_path / "cmp.html"), "--curves"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["#", "run"] and f"page: {tmp_path / 'cmp.html'}" in out
    page = (tmp_path / "cmp.html").read_text()
    assert page.count("Plotly.newPlot") == 2 and not re.search(r"<script[^>]*\bsrc=", page)  # plotly.js inline
    assert len(page) > 1_000_000 and "per epoch (one colour per run" in page
    for name in ("a", "b", "c", "ens", "part", "half"):
        assert f"<td class='l'>{name}</td>" in page


def test_html_refreshes_its_own_page_and_never_replaces_another_file(runs, tmp_path, capsys):
    """`compare runs --html mypage.html` replaced a user's file of that name without a word."""
    mine = tmp_path / "mypage.html"
    mine.write_text("<html>my notes</html>")
    assert main(["compare", str(runs), "--html", str(mine)]) == 2
    assert "the file exists and is not a page `compare` wrote" in capsys.readouterr().err
    assert mine.read_text() == "<html>my notes</html>"
    page = tmp_path / "cmp.html"
    for _ in range(2):  # the second run refreshes the first's page
        assert main(["compare", str(runs), "--html", str(page)]) == 0
    assert "<meta name='generator' content='seg_toolkit compare'>" in page.read_text()[:1000]
    assert main(["compare", str(runs), "--html", str(tmp_path / "newdir") + "/"]) == 2  # wrote a file named newdir
    assert "--html " in capsys.readouterr().err and not (tmp_path / "newdir").exists()


def test_predict_never_writes_over_the_data_it_reads(runs, tmp_path):
    """`predict --out <data.root>/train.csv --overwrite` replaced the competition's labels."""
    from seg_toolkit.inference import predict_test

    cfg = load_config(runs / "a" / "config.yaml")
    labels = cfg.data_path(cfg.data.train_csv)
    before = labels.read_bytes()
    for out in (labels, cfg.data_path(cfg.data.sample_submission), cfg.data_path(cfg.data.test_images) / "x.csv"):
        with pytest.raises(ConfigError, match=r"--out .* (is|lies inside) data\.\w+ .*which the config reads"):
            predict_test(cfg, out=out, overwrite=True)
    assert labels.read_bytes() == before


def test_run_folders_named_directly_and_errors(runs, tmp_path, capsys):
    rows = collect([runs / "c", runs / "a"])
    assert [r.name for r in rows] == ["a", "c"] and [r.group for r in rows] == ["A", "B"]
    assert [r.dir.name for r in find_runs([runs / "a", runs / "a"])] == ["a"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match="no run folder in"):
        collect([tmp_path / "empty"])
    assert main(["compare", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing'}: not found; give a runs folder (runs/) or run folders (runs/<experiment>)"
    assert main(["compare", str(runs), "--curves"]) == 2
    assert "--html OUT" in capsys.readouterr().err
    write_html(collect([runs / "half"]), tmp_path / "one.html")  # nothing scored: the page is still written
    assert "half" in (tmp_path / "one.html").read_text()


def test_a_folder_only_lr_find_wrote_is_skipped(runs, tmp_path):
    """lr-find writes folds.csv and lr_find.json beside no config.yaml: compare listed it as a row of errors."""
    shutil.copytree(runs / "a", tmp_path / "runs" / "a")
    lrf = tmp_path / "runs" / "lrf"
    lrf.mkdir()
    shutil.copy(runs / "a" / "folds.csv", lrf / "folds.csv")
    (lrf / "lr_find.json").write_text("{}")
    assert [r.name for r in collect([tmp_path / "runs"])] == ["a"]


def test_a_damaged_run_is_one_row_that_says_so(runs, tmp_path):
    """A corrupt ensemble.json stopped the whole leaderboard (its folds were read outside the guard), and what a row
    could not read was kept but never shown."""
    for name in ("a", "b", "ens"):
        shutil.copytree(runs / name, tmp_path / "runs" / name)
    (tmp_path / "runs" / "ens" / "ensemble.json").write_text("{not json")
    rows = collect([tmp_path / "runs"])
    assert sorted(r.name for r in rows) == ["a", "b", "ens"]
    broken = next(r for r in rows if r.name == "ens")
    assert broken.problems and "ensemble.json: not valid JSON" in broken.problems[0]
    assert "unreadable: " in format_table(rows)


def test_the_note_says_when_the_tuned_score_or_the_cv_is_not_what_it_seems():
    """compare showed a tuning of fold 0 beside a CV of folds 0 and 1, and named predict.tta for a CV made from
    un-augmented OOF (predict.oof_tta: identity), without a word; report and predict said both."""
    from seg_toolkit.compare import _qualifiers
    from seg_toolkit.config import config_from_dict

    cfg = config_from_dict({"predict": {"tta": ["identity", "hflip"]}})
    cv = {"score": 0.396, "folds": [0, 1], "oof": {"tta": ["identity", "hflip"]}}
    assert _qualifiers(cv, {"after": 0.42, "folds": [0, 1], "cv_json_score": 0.396}, cfg, None) == []
    assert _qualifiers(cv, {"after": 0.42, "folds": [0], "cv_json_score": 0.39}, cfg, None) == [
        "tuned on folds [0], CV on [0, 1]: tune again"]
    assert _qualifiers(cv, {"after": 0.42, "folds": [0, 1], "cv_json_score": 0.401}, cfg, None) == [
        "tuned on other OOF files than the CV's: tune again"]
    made = {**cv, "oof": {"tta": ["identity"]}}
    assert _qualifiers(made, None, cfg, None) == ["CV on OOF made with identity"]
    assert _qualifiers(made, None, cfg, {"tta": ["identity"]}) == []  # tune --tta chose what the OOF were made with


def test_an_ensemble_of_some_folds_is_partial_and_runs_of_one_name_are_told_apart(tmp_path):
    """An ensemble built on folds [0, 1] of 3 was ranked among complete runs without a note; two runs named `a` in two
    folders shared one bar of compare's chart (a category axis), one run's bar inside the other's."""
    from seg_toolkit.compare import RunRow, labels

    ens = RunRow(name="ad", path=tmp_path / "runs" / "ad", kind="ensemble", cv=0.34, folds_done=2, n_splits=3)
    assert ens.status == "partial: 2/3 folds"
    assert RunRow(name="ab", path=tmp_path / "runs" / "ab", kind="ensemble", cv=0.4, folds_done=3, n_splits=3).status == ""
    rows = [RunRow(name="a", path=tmp_path / "runs" / "a", kind="trained"),
            RunRow(name="a", path=tmp_path / "runs2" / "a", kind="trained"),
            RunRow(name="b", path=tmp_path / "runs" / "b", kind="trained")]
    assert labels(rows) == ["runs/a", "runs2/a", "b"]
    same_parent = [RunRow(name="a", path=tmp_path / "x" / "runs" / "a", kind="trained"),
                   RunRow(name="a", path=tmp_path / "y" / "runs" / "a", kind="trained")]
    assert labels(same_parent) == [str(tmp_path / "x" / "runs" / "a"), str(tmp_path / "y" / "runs" / "a")]


def test_the_chart_has_one_panel_per_metric_and_marks_partial_runs(tmp_path):
    """Dice and mIoU runs shared one 'CV score' axis, a run of 1 of 3 folds was a plain bar beside complete runs, and
    its one fold's std drew a zero-length error bar that read as certainty (audit)."""
    from seg_toolkit.compare import RunRow, _figures

    rows = [RunRow(name="d1", path=tmp_path / "d1", kind="trained", metric="dice", cv=0.8, fold_scores=[0.7, 0.9],
                   folds_done=2, n_splits=2),
            RunRow(name="d2", path=tmp_path / "d2", kind="trained", metric="dice", cv=0.6, fold_scores=[0.6, math.nan],
                   folds_done=1, n_splits=3),
            RunRow(name="m1", path=tmp_path / "m1", kind="trained", metric="miou", cv=0.5, fold_scores=[0.4, 0.6],
                   folds_done=2, n_splits=2)]
    figs = _figures(rows, curves=False)
    assert [f.layout.yaxis.title.text for f in figs] == ["CV dice", "CV miou"]
    dice = figs[0].data[0]
    assert list(dice.x) == ["d1", "d2 (1/3 folds)"] and list(dice.marker.opacity) == [1.0, 0.45]
    assert dice.error_y.array[0] == pytest.approx(0.1) and dice.error_y.array[1] != dice.error_y.array[1]  # NaN: none
    assert list(figs[1].data[0].x) == ["m1"]
    # the bars start at 0 (the visual audit: an axis from min - 0.1 drew 0.43 as a fifth of 0.79), the whiskers' tops
    # on the chart; the tuned score without the tuning's luck beside the in-sample one
    assert tuple(figs[0].layout.yaxis.range) == (0.0, pytest.approx(0.95))
    rows[0].tuned, rows[0].tuned_cross_fitted = 0.85, 0.82
    figs = _figures(rows, curves=False)
    assert [b.name for b in figs[0].data] == ["CV", "tuned post-processing (in-sample)", "tuned, cross-fitted"]
    assert figs[0].data[2].y[0] == 0.82
    # learning curves: one chart per metric too (dice and mIoU shared one 'validation score' axis)
    rows[0].curves, rows[2].curves = {0: [(1, 0.5), (2, 0.7)]}, {0: [(1, 0.3)]}
    curves = _figures(rows, curves=True)[2:]
    assert [f.layout.yaxis.title.text for f in curves] == ["validation dice", "validation miou"]
    from seg_toolkit.compare import _cells

    assert _cells(2, rows[1])[4] == "0.6000 (one fold)" and _cells(1, rows[0])[4] == "0.8000 +- 0.1000 [0.7000, 0.9000]"
