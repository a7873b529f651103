"""The audit's report: :func:`format_audit` (text, what ``seg-toolkit audit`` prints) and
:func:`write_audit` (``audit.html`` with its two pictures, ``audit_problems.csv``), from an
:class:`~seg_toolkit.audit.AuditResult` (:mod:`seg_toolkit.audit` reads the data)."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from .audit import AuditResult, audit
from .audit_pictures import audit_pictures
from .config import Config, ConfigError
from .data import class_colors, class_names

log = logging.getLogger(__name__)

__all__ = ["format_audit", "write_audit", "check_audit_out"]


# ----------------------------------------------------------------------------- text


def _pct(num: float, den: float) -> str:
    return f"{100.0 * num / den:.2f}%" if den else "-"


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def _class_rows(res: AuditResult) -> list[list[str]]:
    rows = []
    for c, name in enumerate(res.class_names):
        row = [name, f"{res.class_pixels[c]:,}", _pct(res.class_pixels[c], res.valid_pixels[c]),
               f"{res.images_with_class[c]} ({_pct(res.images_with_class[c], res.n_read)})"]
        if res.task != "multiclass":
            row.append(f"{res.empty_images[c]} ({_pct(res.empty_images[c], res.n_read)})")
        rows.append(row)
    return rows


def _class_header(res: AuditResult) -> list[str]:
    header = ["class", "pixels", "share of non-void", "images with class"]
    return header + (["empty images"] if res.task != "multiclass" else [])


def _sizes(res: AuditResult) -> list[tuple[str, int]]:
    return [(f"{h}x{w}", n) for (h, w), n in res.image_sizes.most_common()]


def object_line(r: AuditResult) -> str:
    """Objects per image, their sizes and how many touch another: what decides ``data.instance_target: borders``,
    ``data.border_weight``, ``postprocess.split_seed`` and ``min_area``."""
    n = sum(r.objects_per_image)
    if not n:
        return f"objects: none in {len(r.objects_per_image)} image(s)"
    per, areas = np.asarray(r.objects_per_image), np.asarray(r.object_areas)
    return (f"objects: {n:,} in {len(per)} image(s) (per image median {np.median(per):g}, max {per.max()}); pixels per "
            f"object median {np.median(areas):g}, 5th percentile {np.percentile(areas, 5):g}, smallest {areas.min()}; "
            f"{r.touching_objects:,} ({_pct(r.touching_objects or 0, n)}) touch another object, which a mask merges "
            "with it unless data.instance_target: borders (with data.border_weight weighing the gaps, as the U-Net paper) "
            "or postprocess.split_seed keep them apart")


def format_audit(result: AuditResult, max_per_kind: int = 20) -> str:
    """A plain-text report of ``result``: counts, then the problems grouped by kind (``max_per_kind`` shown each)."""
    r = result
    out = [f"Audit of {r.root} ({r.task}, {r.layout} layout): {r.n_listed} sample(s) listed, "
           f"{r.n_read} read without a problem, {len(r.problems)} problem(s)", ""]
    out.append("Class pixels (of the samples read; frequencies exclude void):")
    out += ["  " + x for x in _text_table(_class_header(r), _class_rows(r))]
    void_what = "pixels" if r.task == "multiclass" else "(pixel, class) pairs"
    out.append(f"  void: {r.void_pixels:,} {void_what}"
               + (f" ({_pct(r.void_pixels, r.total_pixels)} of all pixels)" if r.task == "multiclass" else ""))
    if r.all_empty_images is not None:
        out.append(f"  images empty in every class: {r.all_empty_images} of {r.n_read} ({_pct(r.all_empty_images, r.n_read)})")
    if r.overlap_pixels is not None:
        out.append(f"  pixels in more than one class: {r.overlap_pixels:,}")
    if r.touching_objects is not None:
        out.append("  " + object_line(r))
    if r.task == "multiclass" and r.n_read:
        fmt = lambda ws: "[" + ", ".join(f"{w:.3g}" for w in ws) + "]"  # noqa: E731
        out.append(f"  class weights by median frequency balancing (loss_params.ce.class_weights): {fmt(r.median_frequency_weights())}")
        out.append(f"    milder, their square roots: {fmt(r.median_frequency_weights(0.5))}")
    out.append("")
    sizes = _sizes(r)
    out.append(f"Image sizes (HxW) of every image opened, {len(sizes)} distinct: " + (", ".join(f"{s}: {n}" for s, n in sizes[:12]) or "-")
               + (f", ... ({len(sizes) - 12} more)" if len(sizes) > 12 else ""))
    out.append("Image modes: " + (", ".join(f"{m}: {n}" for m, n in r.image_modes.most_common()) or "-"))
    if r.wide_values:
        out.append("Image values over 8 bits (min..max over the files): "
                   + ", ".join(f"{m}: {lo:g}..{hi:g}" for m, (lo, hi) in sorted(r.wide_values.items())))
    if r.mask_values:
        vals = sorted(r.mask_values.items())
        out.append(f"Mask class ids as training reads them (after data.mask_values, colours, thresholds; void as "
                   f"data.ignore_index, else -1), {len(vals)} distinct, pixels: " + ", ".join(f"{v}: {n:,}" for v, n in vals[:20])
                   + (" ..." if len(vals) > 20 else ""))
    out.append("")
    if not r.problems:
        out.append("No problems found.")
        return "\n".join(out)
    counts = r.problem_counts()
    out.append(f"Problems ({len(r.problems)}): " + ", ".join(f"{k} {n}" for k, n in counts.most_common()))
    for kind, n in counts.most_common():
        out.append(f"  [{kind}]")
        shown = [p for p in r.problems if p.kind == kind][:max_per_kind]
        out += [f"    {p.message}" for p in shown]
        if n > len(shown):
            out.append(f"    ... and {n - len(shown)} more (all in audit_problems.csv)")
    return "\n".join(out)


# ----------------------------------------------------------------------------- html


def _audit_html(r: AuditResult, colors: np.ndarray, max_problems: int = 5000, pictures: str = "") -> str:
    from .report.html import esc, note, page, section, table

    freqs = r.class_frequency
    top = max([f for f in freqs if f == f] or [0.0]) or 1.0
    rows = []
    for c, row in enumerate(_class_rows(r)):
        f = freqs[c]
        width = 0 if f != f else max(1, round(260 * f / top))
        rgb = tuple(int(v) for v in colors[c])
        bar = f"<span class='bar' style='width:{width}px;background:rgb{rgb}'></span> {_pct(r.class_pixels[c], r.valid_pixels[c])}"
        rows.append([esc(row[0]), row[1], bar] + row[3:])
    status = ("<span class='ok'>no problems found</span>" if not r.problems
              else f"<span class='bad'>{len(r.problems)} problem(s)</span>")
    images = [table(["size (HxW)", "images opened"], [[s, str(n)] for s, n in _sizes(r)]),
              table(["mode", "images"], [[esc(m), str(n)] for m, n in r.image_modes.most_common()])]
    if r.wide_values:
        images.append(table(["mode (over 8 bits)", "min", "max"], [[esc(m), f"{lo:g}", f"{hi:g}"] for m, (lo, hi) in sorted(r.wide_values.items())]))
    if r.mask_values:
        images.append(table(["mask class id as read (void: data.ignore_index, else -1)", "pixels"],
                            [[str(v), f"{n:,}"] for v, n in sorted(r.mask_values.items())]))
    if r.problems:
        shown = r.problems[:max_problems]
        problems = (table(["kind", "count"], [[esc(k), str(n)] for k, n in r.problem_counts().most_common()])
                    + table(["kind", "where", "message"], [[esc(p.kind), esc(p.where), esc(p.message)] for p in shown],
                            left=2, cls=["l", "l", "msg"]))
        if len(r.problems) > len(shown):
            problems += note(f"{len(r.problems) - len(shown)} more in audit_problems.csv")
    else:
        problems = "<p class='ok'>No problems found.</p>"
    classes = table(_class_header(r), rows, cls=["l", "", "l"]) + note(
        "Over the samples read without a problem. Share = class pixels / non-void pixels (bars relative to the largest "
        "class). " + esc(f"Void: {r.void_pixels:,} " + ("pixels" if r.task == "multiclass" else "(pixel, class) pairs") + ".")
        + (esc(f" Images empty in every class: {r.all_empty_images} of {r.n_read} ({_pct(r.all_empty_images, r.n_read)}).")
           if r.all_empty_images is not None else "")
        + (esc(f" Pixels in more than one class: {r.overlap_pixels:,}.") if r.overlap_pixels is not None else "")
        + (esc(" " + object_line(r)) if r.touching_objects is not None else ""))
    body = "\n".join([
        f"<p>{esc(r.task)} task, {esc(r.layout)} layout: {r.n_listed} sample(s) listed, {r.n_read} read without a "
        f"problem; {status}.</p>",
        section("Classes", classes), pictures, section("Images", "".join(images)), section("Problems", problems),
    ])
    return page(f"Data audit: {r.root}", body)


def check_audit_out(cfg: Config, out_dir: Path) -> None:
    """``audit --out``: not ``data.root`` nor a folder the config reads, and never over a file the audit did
    not write (an ``audit.html`` of the user's was replaced; the pictures count as the audit's beside its own page)."""
    from .run import Run
    from .run_guard import check_not_input

    for p in (out_dir, *out_dir.parents):  # `--out FILE` (or a folder below a file) failed after the whole pass: [Errno 17]
        if p.exists():
            if not p.is_dir():
                where = "" if p == out_dir else f" ({out_dir} would lie inside it)"
                raise ConfigError(f"{p} is a file, not a folder{where}: audit writes audit.html and its pictures into a "
                                  "folder (--out, default the run folder); name another")
            break
    if out_dir.resolve() == Path(cfg.data.root).resolve():
        raise ConfigError(f"--out {out_dir} is data.root; write the audit elsewhere (nothing is written among the data)")
    check_not_input(cfg, out_dir / "audit.html", "--out")  # nor inside a folder of images, masks or lists
    run = Run(out_dir)
    foreign = run.foreign_entries() if out_dir.is_dir() else []
    if foreign:  # a folder of the user's (a competition folder, their notes): the audit's files would sit among them,
        # and its problem list would then mark the folder as a run's, which `train` writes into
        names = ", ".join(str(p.relative_to(out_dir)) for p in foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise ConfigError(f"{out_dir} holds files that neither a run nor an audit wrote ({names}); audit writes into an "
                          "empty folder, a run folder or an earlier audit's: choose another --out (or experiment name)")
    html, csv_path = run.audit_html, run.audit_problems_csv
    head = html.read_text(encoding="utf-8", errors="replace")[:4000] if html.is_file() else ""
    ours = head.startswith("<!DOCTYPE html>") and "<title>Data audit: " in head
    if html.exists() and not ours:
        raise ConfigError(f"{html} exists and is not an audit page; choose another --out (an audit never replaces "
                          "a file it did not write)")
    if csv_path.exists() and not (csv_path.is_file() and csv_path.read_text(encoding="utf-8", errors="replace")
                                  .startswith("kind,where,message")):
        raise ConfigError(f"{csv_path} exists and is not an audit's problem list; choose another --out")
    pictures = [p for p in (run.audit_samples_png, run.audit_batch_png) if p.exists()]
    if pictures and not ours:
        raise ConfigError(f"{pictures[0]} exists beside no audit page of ours; choose another --out (an audit never "
                          "replaces a file it did not write)")


def write_audit(cfg: Config, out_dir: Path, result: Optional[AuditResult] = None) -> Path:
    """Audit (unless ``result`` is given) and write ``audit.html``, ``audit_problems.csv``, ``audit_samples.png``
    and ``audit_batch.png`` into ``out_dir`` (see the module doc).

    Returns the path of ``audit.html``.
    """
    from .files import write_text

    from .run import Run

    out_dir = Path(out_dir)
    check_audit_out(cfg, out_dir)
    res = result if result is not None else audit(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = audit_pictures(cfg, res, out_dir)
    from .report.overlays import legend_colors

    shown = legend_colors(cfg, class_names(cfg), class_colors(cfg))  # a class the pictures leave undrawn: grey
    page = write_text(Run(out_dir).audit_html, _audit_html(res, shown, pictures=pictures))
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["kind", "where", "message"])
    w.writerows([p.kind, p.where, p.message] for p in res.problems)
    write_text(Run(out_dir).audit_problems_csv, buf.getvalue())
    log.info("audit written to %s", page)
    return page
