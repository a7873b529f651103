"""The neighbourhood rule of colour masks (``data.mask_color_support_px`` with ``data.mask_color_clean``).

JPEG-compressed, downscaled colour labels (Cityscapes' image pairs) hold blended colours along every class edge, and
the nearest colour of a blend can be a third class: 60-70% sky + building is nearest to wall's colour, sky against
black void to bus or train, car against black to truck. Read with the nearest colour alone, half of Cityscapes' wall
pixels were such edges. Under this rule a pixel within ``clean`` of its nearest table colour takes it; any other pixel
may only take a class (or a void colour) that has such a clean pixel within ``support_px`` pixels (square window), the
nearest of those within the tolerance, else void. :func:`seg_toolkit.data.colors.colors_to_ids` calls it.
"""

from __future__ import annotations

import numpy as np

from .colors import _NOT_YET, VOID_ID
from .data_errors import DataError

__all__ = ["supported_ids"]


def _groups(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(group of each table colour, id of each group)``: a class's colours form one group (a class is supported by
    any of its colours), each void colour its own (a blend next to black is not supported by another void colour)."""
    group_ids: list[int] = []
    seen: dict[int, int] = {}
    groups = np.empty(len(ids), np.int64)
    for k, i in enumerate(ids.tolist()):
        if i == VOID_ID:
            groups[k] = len(group_ids)
            group_ids.append(VOID_ID)
        else:
            if i not in seen:
                seen[i] = len(group_ids)
                group_ids.append(i)
            groups[k] = seen[i]
    return groups, np.array(group_ids, np.int32)


def _dist2(keys: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """``int64 (n, K)`` squared RGB distances of packed colours to the table's."""
    u = np.stack([(keys >> 16) & 255, (keys >> 8) & 255, keys & 255], axis=1).astype(np.int64)
    return ((u[:, None, :] - colors[None, :, :].astype(np.int64)) ** 2).sum(-1)


def _or_dilate(bits: np.ndarray, s: int) -> np.ndarray:
    """Bitwise OR of ``bits (words, H, W)`` over each pixel's ``(2s+1)^2`` square window (separable: rows, then columns)."""
    rows = bits.copy()
    for k in range(1, s + 1):
        rows[:, k:] |= bits[:, :-k]
        rows[:, :-k] |= bits[:, k:]
    out = rows.copy()
    for k in range(1, s + 1):
        out[:, :, k:] |= rows[:, :, :-k]
        out[:, :, :-k] |= rows[:, :, k:]
    return out


class _RuleLut:
    """Per colour answers of the neighbourhood rule, remembered as :func:`_color_lut` remembers the nearest colour:
    ``lut[packed RGB]`` is the group of a clean colour (``< n_groups``), else ``n_groups + t``, ``t`` indexing the
    distinct lists of groups within the tolerance, nearest first (ties: the lower group; empty: far from every colour),
    held padded with -1 in ``cands (T, M)``."""

    def __init__(self, colors: np.ndarray, ids: np.ndarray, tolerance: float, clean: float) -> None:
        self.colors, self.tolerance, self.clean = colors, tolerance, clean
        self.groups, self.group_ids = _groups(ids)
        self.lut = np.full(1 << 24, _NOT_YET, np.int16)  # 32 MB, as _color_lut's
        self.lists: dict[tuple, int] = {}
        self.cands = np.full((0, 1), -1, np.int64)

    def __call__(self, keys: np.ndarray) -> np.ndarray:
        lab = self.lut[keys]
        todo = lab == _NOT_YET
        if todo.any():
            self._add(np.unique(keys[todo]))
            lab = self.lut[keys]
        return lab.astype(np.int64)

    def _add(self, new: np.ndarray) -> None:
        n_groups = len(self.group_ids)
        d2 = _dist2(new, self.colors)
        order = np.argsort(self.groups, kind="stable")
        dg = np.minimum.reduceat(d2[:, order], np.searchsorted(self.groups[order], np.arange(n_groups)), axis=1)
        near = dg.argmin(1)
        is_clean = dg[np.arange(len(new)), near] <= self.clean * self.clean
        within = dg <= self.tolerance * self.tolerance
        rank = np.argsort(np.where(within, dg, np.iinfo(np.int64).max), axis=1, kind="stable")
        value = near.copy()
        other = np.nonzero(~is_clean)[0]
        if len(other):
            m = max(1, int(within[other].sum(1).max()))
            lists = np.where(within[other[:, None], rank[other, :m]], rank[other, :m], -1)
            rows, inverse = np.unique(lists, axis=0, return_inverse=True)
            ts = np.array([self.lists.setdefault(tuple(int(g) for g in r if g >= 0), len(self.lists)) for r in rows])
            value[other] = n_groups + ts[inverse.ravel()]
        if n_groups + len(self.lists) > np.iinfo(self.lut.dtype).max:
            raise DataError(f"a colour table of {len(self.colors)} colours has too many distinct candidate lists for "
                            "data.mask_color_support_px; lower data.mask_color_tolerance")
        self.lut[new] = value.astype(self.lut.dtype)
        if len(self.lists) > len(self.cands):
            m = max(1, max(len(x) for x in self.lists))
            self.cands = np.full((len(self.lists), m), -1, np.int64)
            for lst, t in self.lists.items():
                self.cands[t, :len(lst)] = lst


_RULE_LUTS: dict[tuple, _RuleLut] = {}


def supported_ids(keys: np.ndarray, colors: np.ndarray, ids: np.ndarray, tolerance: float, support_px: int,
                  clean: float) -> tuple[np.ndarray, int]:
    """:func:`colors_to_ids` with the neighbourhood rule: ``(int32 (H, W) ids, pixels farther than the tolerance
    from every colour)``. Which colours are clean, and each other colour's groups within the tolerance nearest
    first, are remembered per colour (:class:`_RuleLut`); only the other pixels are then searched: each takes its
    first candidate whose bit is set in the clean pixels' group bits OR-ed over its window."""
    key = (colors.tobytes(), ids.tobytes(), tolerance, clean)
    if key not in _RULE_LUTS:
        if len(_RULE_LUTS) >= 2:
            _RULE_LUTS.pop(next(iter(_RULE_LUTS)))
        _RULE_LUTS[key] = _RuleLut(colors, ids, tolerance, clean)
    rule = _RULE_LUTS[key]
    n_groups = len(rule.group_ids)
    lab = rule(keys)
    is_clean = lab < n_groups
    out = np.full(lab.shape, VOID_ID, np.int32)
    out[is_clean] = rule.group_ids[lab[is_clean]]
    rows, cols = np.nonzero(~is_clean)
    if not len(rows):
        return out, 0
    cands = rule.cands[lab[rows, cols] - n_groups]  # (pixels, M): groups within the tolerance, nearest first
    n_far = int((cands[:, 0] < 0).sum())
    m = int((cands >= 0).sum(1).max())
    if m == 0:
        return out, n_far
    # groups with a clean pixel within support_px: one bit per group, OR-ed over the square window
    words = (n_groups + 63) // 64
    bits = np.zeros((words,) + lab.shape, np.uint64)
    lab_clean = lab[is_clean]
    for w in range(words):
        word = np.zeros(len(lab_clean), np.uint64)
        sel = lab_clean // 64 == w
        word[sel] = np.left_shift(np.uint64(1), (lab_clean[sel] % 64).astype(np.uint64))
        bits[w][is_clean] = word
    near = _or_dilate(bits, support_px)[:, rows, cols]  # (words, pixels)
    pix = np.arange(len(rows))
    chosen = np.full(len(rows), -1, np.int64)
    for j in range(m):  # nearest candidate first; a pixel keeps the first supported one
        g = cands[:, j]
        gc = np.maximum(g, 0)
        word = near[gc // 64, pix] if words > 1 else near[0]
        ok = (g >= 0) & (chosen < 0) & ((word >> (gc % 64).astype(np.uint64)) & np.uint64(1)).astype(bool)
        chosen[ok] = g[ok]
    hit = chosen >= 0
    out[rows[hit], cols[hit]] = rule.group_ids[chosen[hit]]
    return out, n_far
