"""What the figures draw is what the user wrote: ids, class names and run names with ``$`` (matplotlib reads text
between two as a formula), run names with HTML markup in the plotly charts, and learning curves whose one huge or
non-finite value would flatten or vanish from the panel."""

from __future__ import annotations

from pathlib import Path

import pytest

from seg_toolkit.plots import figure_png, learning_curves, literal, new_figure
from seg_toolkit.run import Run


@pytest.mark.parametrize("text", ["cost_$5_$10", "_$x^2$_", "tri$a$ngle", "$", "plain"])
def test_literal_text_is_drawn_as_written(text):
    fig = new_figure(3, 1)
    drawn = fig.text(0, 0.5, literal(text))
    assert drawn._preprocess_math(drawn.get_text()) == (text, False)  # matplotlib's own reading: no maths, the text itself
    figure_png(fig)
    raw = new_figure(3, 1)
    raw.text(0, 0.5, "cost_$5_$10")
    with pytest.raises(ValueError):  # what the report and audit raised before
        figure_png(raw)


def _curves_run(tmp_path: Path, rows: str) -> Run:
    run = Run(tmp_path / "run")
    run.fold_dir(0).mkdir(parents=True)
    run.metrics_csv(0).write_text("fold,epoch,lr,train_loss,images_per_s,val_loss,val_score,best,seconds\n" + rows)
    return run


def test_one_huge_loss_is_marked_at_the_edge_and_a_non_finite_one_is_shown(tmp_path):
    run = _curves_run(tmp_path, "0,1,0.001,0.9,10,0.8,0.30,1,1\n0,2,0.001,1e30,10,0.7,0.35,1,1\n"
                                "0,3,0.001,0.6,10,inf,0.50,1,1\n0,4,0.001,0.5,10,0.5,0.45,0,1\n")
    fig = learning_curves(run.dir)
    ax_loss, ax_score = fig.axes[:2]
    bottom, top = ax_loss.get_ylim()
    assert 0.9 < top < 1.0 and 0.4 < bottom < 0.5  # the finite values 0.5..0.9 and a margin; not 0..1e30
    notes = sorted(t.get_text() for t in ax_loss.texts)
    assert notes == ["1e+30", "inf"]
    marks = [(line.get_marker(), line.get_xdata()[0]) for line in ax_loss.lines if len(line.get_xdata()) == 1]
    assert sorted(marks) == [("^", 2), ("x", 3)]
    assert len(ax_score.texts) == 0
    lo, hi = ax_score.get_ylim()
    assert lo <= 0.30 and hi >= 0.50


def test_ordinary_curves_keep_matplotlibs_range(tmp_path):
    """An early loss of 5 among later ones near 0.3 is a real epoch, not an outlier: nothing is cut or marked."""
    rows = "".join(f"0,{e},0.001,{v},10,{v},0.5,0,1\n" for e, v in enumerate([5.0, 1.0, 0.5, 0.4, 0.35, 0.33, 0.32], 1))
    fig = learning_curves(_curves_run(tmp_path, rows).dir)
    ax_loss = fig.axes[0]
    assert len(ax_loss.texts) == 0
    y0, y1 = ax_loss.dataLim.y0, ax_loss.dataLim.y1
    assert ax_loss.get_ylim() == pytest.approx((y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0)))  # matplotlib's own margins


def test_compare_charts_show_run_names_as_written():
    from seg_toolkit.compare import RunRow, _figures

    rows = [RunRow(name="a<b>&c", path=Path("x"), kind="trained", metric="dice", cv=0.5, fold_scores=[0.4, 0.6],
                   curves={0: [(1, 0.5)]}),
            RunRow(name="plain", path=Path("y"), kind="trained", metric="dice", cv=0.9, fold_scores=[0.9])]
    bars, curves = _figures(rows, curves=True)
    assert list(bars.data[0].x) == ["a&lt;b&gt;&amp;c", "plain"]  # plotly then shows the characters, not bold text
    assert curves.data[0].name == "a&lt;b&gt;&amp;c"
    assert bars.layout.yaxis.range[1] >= 0.6  # the first run's error bar (0.5 + 0.1) stays on the chart
