"""Rotated maximum / mean intensity projections about one axis, by shear-warp.

The volume is a C-ordered stack ``(slice, line, element)`` whose slices are perpendicular to the rotation axis;
every slice is a 2-D problem. For one slice and one angle the caller gives three numbers (millimetres along the
detector line, see ``voxelpipe.ops.projection``)::

    t(l, m) = delta + (l - lc) * alpha + (m - mc) * beta        lc = (n_lines - 1) / 2, mc = (n_elements - 1) / 2

the detector coordinate of the centre of voxel ``(l, m)`` of the slice (``beta != 0``); the rays are the
lines of constant ``t``. Detector pixel ``j`` (of ``width``) sits at ``t_j = (j - (width - 1) / 2) * pixel_mm``.

Shear-warp, per slice and angle:

1. Every line ``l`` (a contiguous row) maps onto an intermediate profile whose bins are ``|beta|`` mm apart,
   on a grid symmetric about ``t = 0`` (``t_0 = -(width - 1) / 2 * |beta|``): bin ``i`` is at
   ``t = t_0 + (base + i) * beta``. The line lands at the fractional bin offset
   ``off_l = (t(l, 0) - t_0) / beta - base = k_l + phi_l`` (``0 <= phi_l < 1``), so bin ``k_l + 1 + m``
   receives ``phi_l * line[m] + (1 - phi_l) * line[m + 1]`` (1-D linear interpolation with one weight per
   line; ``phi_l == 0``: bin ``k_l + m`` receives ``line[m]``), combined by max (or summed, and counted, for
   the mean). Samples lie between the first and last element centres: nothing is extrapolated.
2. The profile is resampled once to the detector grid with 1-D linear interpolation (pixel ``j`` is at bin
   ``q_j = (t_j - t_0) / beta - base``); pixels whose two neighbouring bins did not both get a sample get
   ``fill``. Interpolating the max profile (rather than the data) can exceed the rotate-then-max value where
   the brightest structure along the rays changes (a kink of the projection), by up to about the change of
   slope times ``|beta| / 4``.

The caller chooses, per angle, whether the lines are the slice's rows or its columns (``transposed[a]``), so
that the line direction is the one closer to the detector line; that bounds the per-line shift. Row lines are
read in place, a band of rows (``BAND_BYTES``) at a time for every angle, so the band stays in L1/L2 cache
while all angles consume it. Column lines are handled a strip of ``STRIP`` columns at a time: the strip is copied,
transposed, into a buffer that stays in L2 cache, and every column-line angle consumes it before the next
strip. So each slice is read from memory once for all angles and every inner loop reads contiguous memory.

Offsets within ``SNAP`` of an integer are snapped to it, so that at multiples of 90° on matching grids the
projection is exactly ``max`` along an array axis (no interpolation weights at all).

The mask (uint8 labels) is projected alongside with nearest-neighbour sampling on the same bins (bin ``i``
takes the line element nearest to its position; ties to the lower element) and a nearest bin per detector
pixel, combined by max: label values are preserved; pixels without a sample get 0.

Arithmetic: interpolation and max in float32 (values are converted to float32 first); mean sums in float64.
NaN samples are skipped by max (a comparison with NaN is false) and propagate through the mean.

Validation is the job of ``voxelpipe.ops.projection``; these kernels trust their inputs.
"""
from __future__ import annotations

import numpy as np

from ._jit import jit

SNAP = 1e-6  # offsets this close to an integer are that integer
STRIP = 64  # columns per transposed strip (64 x 512 float32 = 128 KiB: stays in L2)
_PAD = 16  # strip rows are padded by this many elements (a power-of-two row stride thrashes cache sets)
BAND_BYTES = 32 * 1024  # row lines are consumed by every angle a band of about this many bytes at a time


@jit
def _snap(x):
    r = np.floor(x + 0.5)
    if abs(x - r) < SNAP:
        return r
    return x


@jit
def _anchor(width, beta):
    """``t_0``: the bins are at ``t_0 + integer * beta``. A grid symmetric about the rotation axis (a bin at
    0, or bins at +-beta/2), so that mirrored geometries give mirrored results; it contains the detector pixels
    when ``|beta| == pixel_mm`` (``width`` odd: a pixel at 0; even: pixels at +-pixel_mm/2)."""
    return -0.5 * (width - 1) * abs(beta)


@jit
def profile_capacity(n_lines, n_elements, alpha, beta, delta, width):
    """Bins needed by the intermediate profile (with margin) for every slice and angle.

    ``alpha``, ``beta``: ``(n_angles,)``; ``delta``: ``(n_slices, n_angles)``; ``n_lines``, ``n_elements``:
    ``(n_angles,)`` line count and line length per angle.
    """
    cap = 1
    for a in range(alpha.shape[0]):
        nl = n_lines[a]
        nm = n_elements[a]
        t0 = _anchor(width, beta[a])
        lo = np.inf
        hi = -np.inf
        for z in range(delta.shape[0]):
            for l in (0, nl - 1):
                off = (delta[z, a] + (l - 0.5 * (nl - 1)) * alpha[a] - 0.5 * (nm - 1) * beta[a] - t0) / beta[a]
                lo = min(lo, off)
                hi = max(hi, off)
        n = int(np.ceil(hi) - np.floor(lo)) + nm + 4
        cap = max(cap, n)
    return cap


@jit
def _transpose_strip(sl, c0, w, strip):
    """``strip[j, r] = sl[r, c0 + j]`` for ``j < w``: columns ``c0 .. c0 + w - 1`` of a C-contiguous slice as
    rows of ``strip`` (whose rows are padded so that they do not all map to the same cache sets).

    8 x 8 blocks with unsigned flat indices (numba adds no negative-index wraparound to those)."""
    n1, n2 = sl.shape
    ld = strip.shape[1]
    src = sl.reshape(n1 * n2)
    dst = strip.reshape(strip.shape[0] * ld)
    un2 = np.uint64(n2)
    uld = np.uint64(ld)
    w8 = w - w % 8
    h8 = n1 - n1 % 8
    for r0 in range(0, h8, 8):
        for j0 in range(0, w8, 8):
            for i in range(8):
                si = np.uint64(r0 + i) * un2 + np.uint64(c0 + j0)
                di = np.uint64(j0) * uld + np.uint64(r0 + i)
                for j in range(8):
                    dst[di + np.uint64(j) * uld] = src[si + np.uint64(j)]
        for j in range(w8, w):
            for i in range(8):
                strip[j, r0 + i] = sl[r0 + i, c0 + j]
    for r in range(h8, n1):
        for j in range(w):
            strip[j, r] = sl[r, c0 + j]


@jit
def _accumulate_lines(g, mg, j0, j1, nm, ks, phis, l_off, mean, has_mask, prof, psum, mprof):
    """Lines ``g[j]``, ``j0 <= j < j1`` (their first ``nm`` elements), into one angle's profile; line ``j`` has
    the offset ``ks[l_off + j] + phis[l_off + j]``. ``mg``: the mask lines, likewise.

    Inner loops run over a slice of the profile (``dst``), so every index is a non-negative range variable (no
    wraparound checks) and they vectorize; ``dst[m]`` gets the sample between ``src[m]`` and ``src[m + 1]``.
    """
    if mean:
        for j in range(j0, j1):
            k = ks[l_off + j]
            phi = phis[l_off + j]
            src = g[j]
            if phi == 0.0:
                dst = psum[k:k + nm]
                for m in range(nm):
                    dst[m] += np.float32(src[m])
            else:
                wa = np.float32(phi)
                wb = np.float32(1.0 - phi)
                dst = psum[k + 1:k + nm]
                for m in range(nm - 1):
                    dst[m] += wa * np.float32(src[m]) + wb * np.float32(src[m + 1])
    else:
        for j in range(j0, j1):
            k = ks[l_off + j]
            phi = phis[l_off + j]
            src = g[j]
            if phi == 0.0:
                dst = prof[k:k + nm]
                for m in range(nm):
                    v = np.float32(src[m])
                    p = dst[m]
                    dst[m] = v if v > p else p
            else:
                wa = np.float32(phi)
                wb = np.float32(1.0 - phi)
                dst = prof[k + 1:k + nm]
                for m in range(nm - 1):
                    v = wa * np.float32(src[m]) + wb * np.float32(src[m + 1])
                    p = dst[m]
                    dst[m] = v if v > p else p
    if has_mask:
        for j in range(j0, j1):
            k = ks[l_off + j]
            s = k if phis[l_off + j] <= 0.5 else k + 1  # bin s + m is nearest to element m
            dst8 = mprof[s:s + nm]
            src8 = mg[j]
            for m in range(nm):
                v8 = src8[m]
                p8 = dst8[m]
                dst8[m] = v8 if v8 > p8 else p8


@jit
def _prepare(nl, nm, alpha, beta, delta, width, mean, has_mask, prof, psum, cnt, mprof, ks, phis):
    """Per slice and angle: every line's bin offset ``ks[l] + phis[l]``, the per-bin sample counts ``cnt``
    and zeroed profiles. Returns ``(base, n_bins)``: bin ``i`` is at ``t_0 + (base + i) * beta``."""
    lc = 0.5 * (nl - 1)
    mc = 0.5 * (nm - 1)
    t0 = _anchor(width, beta)
    inv = 1.0 / beta
    lo = np.inf
    for l in range(nl):
        off = _snap((delta + (l - lc) * alpha - mc * beta - t0) * inv)
        phis[l] = off
        lo = min(lo, off)
    base = np.floor(lo)
    n = 0
    for l in range(nl):
        off = phis[l] - base
        k = int(np.floor(off))
        ks[l] = k
        phis[l] = off - k
        n = max(n, k + nm + 1)
    for i in range(n + 1):
        cnt[i] = 0
    for l in range(nl):  # line l samples bins k..k+nm-1 (phi == 0) or k+1..k+nm-1
        k = ks[l]
        cnt[k if phis[l] == 0.0 else k + 1] += 1
        cnt[k + nm] -= 1
    c = 0
    for i in range(n):
        c += cnt[i]
        cnt[i] = c
    if mean:
        for i in range(n):
            psum[i] = 0.0
    else:
        for i in range(n):
            prof[i] = -np.inf
    if has_mask:
        for i in range(n):
            mprof[i] = 0
    return base, n


@jit
def _finish(base, n, beta, pixel_mm, fill, mean, has_mask, prof, psum, cnt, mprof, out_row, mask_row):
    """Resample the profile to the detector pixels (linear; nearest for the mask)."""
    width = out_row.shape[0]
    ratio = pixel_mm / beta
    q0 = -0.5 * (width - 1) * ratio - _anchor(width, beta) / beta - base  # bin position of pixel 0
    last = n - 1
    for j in range(width):
        q = _snap(q0 + j * ratio)
        value = fill
        if q >= 0.0 and q <= last:
            i0 = int(np.floor(q))
            f = q - i0
            if f == 0.0:
                if cnt[i0] > 0:
                    value = psum[i0] / cnt[i0] if mean else prof[i0]
            elif cnt[i0] > 0 and cnt[i0 + 1] > 0:
                if mean:
                    value = (1.0 - f) * (psum[i0] / cnt[i0]) + f * (psum[i0 + 1] / cnt[i0 + 1])
                else:
                    value = (1.0 - f) * prof[i0] + f * prof[i0 + 1]
        out_row[j] = value
        if has_mask:
            label = 0
            i = int(np.floor(q + 0.5))
            if i >= 0 and i <= last:
                label = mprof[i]
            mask_row[j] = label


@jit
def project_into(volume, mask, transposed, alpha, beta, delta, pixel_mm, fill, mean, out_rows,
                 images, mask_images, z_start, z_stop):
    """Project every slice of ``volume`` at every angle; see the module docstring for the model.

    ``volume``: 3-D C-contiguous ``(slice, row, column)``, any real dtype (converted to float32 per sample).
    ``mask``: uint8 of the same shape, or shape ``(0, 0, 0)`` for none (then ``mask_images`` is a dummy of
    shape ``(1, 1, 1)``, never written).
    ``transposed``: bool ``(n_angles,)``, lines are the slice's columns at that angle.
    ``alpha``, ``beta``: float64 ``(n_angles,)`` mm along the detector per line step and per element step (for
    the line orientation chosen by ``transposed``); ``delta``: float64 ``(n_slices, n_angles)``, detector
    coordinate of each slice's centre. ``pixel_mm``: detector pixel spacing; ``fill``: value of pixels without
    a sample; ``mean``: mean instead of max.
    ``out_rows``: int64 ``(n_slices,)``, output row of each slice. ``images``: float32
    ``(n_angles, n_slices, width)``; ``mask_images``: uint8, same shape (or the dummy).
    ``z_start``, ``z_stop``: only slices ``z_start <= z < z_stop`` are projected (their output rows written), with
    scratch buffers of this call. Serial: ``voxelpipe.ops.projection`` runs it on runs of consecutive slices in
    threads (it releases the GIL; a few runs per thread balance the load), which compiles much faster than numba's
    ``parallel=True``.
    """
    nz, n1, n2 = volume.shape
    n_angles = alpha.shape[0]
    has_mask = mask.shape[0] > 0
    any_t = False
    n_lines = np.empty(n_angles, np.int64)
    n_elements = np.empty(n_angles, np.int64)
    for a in range(n_angles):
        if transposed[a]:
            any_t = True
            n_lines[a] = n2
            n_elements[a] = n1
        else:
            n_lines[a] = n1
            n_elements[a] = n2
    width = images.shape[2]
    cap = profile_capacity(n_lines, n_elements, alpha, beta, delta, width)
    nmax = max(n1, n2)
    first = np.int64(0)  # not a literal 0, so both calls share one compiled _accumulate_lines
    band = max(1, BAND_BYTES // max(1, n2 * volume.itemsize))
    prof = np.empty((n_angles, cap), np.float32)
    psum = np.empty((n_angles, cap), np.float64)
    cnt = np.empty((n_angles, cap + 1), np.int32)
    mprof = np.empty((n_angles, cap), np.uint8)
    ks = np.empty((n_angles, nmax), np.int64)
    phis = np.empty((n_angles, nmax), np.float64)
    bases = np.empty(n_angles, np.float64)
    nbins = np.empty(n_angles, np.int64)
    strip = np.empty((STRIP if any_t else 0, n1 + _PAD), volume.dtype)
    mstrip = np.empty((STRIP if any_t and has_mask else 0, n1 + _PAD), np.uint8)
    for z in range(z_start, z_stop):
        sl = volume[z]
        msl = mask[z] if has_mask else mstrip
        for a in range(n_angles):
            bases[a], nbins[a] = _prepare(n_lines[a], n_elements[a], alpha[a], beta[a], delta[z, a], width,
                                          mean, has_mask, prof[a], psum[a], cnt[a], mprof[a], ks[a], phis[a])
        for r0 in range(0, n1, band):  # row lines, read in place, a band of rows for every angle
            r1 = min(r0 + band, n1)
            for a in range(n_angles):
                if not transposed[a]:
                    _accumulate_lines(sl, msl, r0, r1, n2, ks[a], phis[a], first, mean, has_mask, prof[a],
                                      psum[a], mprof[a])
        if any_t:  # column lines, a transposed strip of columns for every angle
            for c0 in range(0, n2, STRIP):
                w = min(STRIP, n2 - c0)
                _transpose_strip(sl, c0, w, strip)
                if has_mask:
                    _transpose_strip(msl, c0, w, mstrip)
                for a in range(n_angles):
                    if transposed[a]:
                        _accumulate_lines(strip, mstrip, first, w, n1, ks[a], phis[a], c0, mean, has_mask,
                                          prof[a], psum[a], mprof[a])
        zo = out_rows[z]
        for a in range(n_angles):
            mask_row = mask_images[a, zo] if has_mask else mask_images[0, 0]
            _finish(bases[a], nbins[a], beta[a], pixel_mm, fill, mean, has_mask, prof[a], psum[a], cnt[a],
                    mprof[a], images[a, zo], mask_row)
