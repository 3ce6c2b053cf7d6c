//! im2col / col2im for one image: the patches a kernel sees, laid out as
//! the columns of a `[C·kh·kw, Ho·Wo]` matrix, and the adjoint scatter-add.

use super::Conv2dGeometry;
use crate::Float;

/// For kernel offset `j` (0 ≤ j < k), the output positions `o` in
/// `[lo, hi)` whose input position `o·s + j − pad` lies inside `[0, len)`.
fn valid_range(out_len: usize, len: usize, s: usize, pad: usize, j: usize) -> (usize, usize) {
    // o·s + j ≥ pad  ⇔  o ≥ ceil((pad − j) / s)
    let lo = pad.saturating_sub(j).div_ceil(s);
    // o·s + j − pad < len  ⇔  o·s < len + pad − j
    let hi = if len + pad > j {
        (len + pad - j).div_ceil(s)
    } else {
        0
    };
    (lo.min(out_len), hi.clamp(lo.min(out_len), out_len))
}

/// Rows `c·kh·kw + i·kw + j` for the channels `c` of `x_channels` (one
/// image, `[cs, H, W]`), written into `col` (`[cs·kh·kw, Ho·Wo]`):
/// `col[(c,i,j), (oh,ow)] = x[c, oh·s + i − pad, ow·s + j − pad]`, zero
/// outside the image.
pub fn im2col<T: Float>(g: &Conv2dGeometry, x_channels: &[T], col: &mut [T]) {
    let (h, w, ho, wo) = (g.in_h, g.in_w, g.out_h(), g.out_w());
    let (s, pad) = (g.stride, g.padding);
    let rows_per_channel = g.kernel_h * g.kernel_w;
    for (r, row) in col.chunks_exact_mut(ho * wo).enumerate() {
        let c = r / rows_per_channel;
        let (i, j) = ((r / g.kernel_w) % g.kernel_h, r % g.kernel_w);
        let x = &x_channels[c * h * w..][..h * w];
        let (oh_lo, oh_hi) = valid_range(ho, h, s, pad, i);
        let (ow_lo, ow_hi) = valid_range(wo, w, s, pad, j);
        for (oh, out) in row.chunks_exact_mut(wo).enumerate() {
            if oh < oh_lo || oh >= oh_hi || ow_lo == ow_hi {
                out.fill(T::ZERO);
                continue;
            }
            let x_row = &x[(oh * s + i - pad) * w..][..w];
            out[..ow_lo].fill(T::ZERO);
            out[ow_hi..].fill(T::ZERO);
            copy_strided(&mut out[ow_lo..ow_hi], &x_row[ow_lo * s + j - pad..], s);
        }
    }
}

/// Copies `dst.len()` elements `src[0], src[s], src[2s], ...`; strides 1
/// and 2 get their own loops (a constant stride vectorises, a variable one
/// does not).
#[inline(always)]
fn copy_strided<T: Float>(dst: &mut [T], src: &[T], s: usize) {
    match s {
        1 => dst.copy_from_slice(&src[..dst.len()]),
        2 => {
            for (d, pair) in dst.iter_mut().zip(src.chunks(2)) {
                *d = pair[0];
            }
        }
        _ => {
            for (d, v) in dst.iter_mut().zip(src.iter().step_by(s)) {
                *d = *v;
            }
        }
    }
}

/// Columns `[j0, j0 + n)` of one image's im2col matrix (K = C·kh·kw rows),
/// written directly in the GEMM's packed-B layout `[panel][K][nr]` (last
/// panel zero-padded): the patches go from the image to the micro-kernel's
/// operand in one pass, without an im2col buffer.
pub fn pack_patches<T: Float>(
    g: &Conv2dGeometry,
    x_image: &[T],
    j0: usize,
    n: usize,
    nr: usize,
    dst: &mut [T],
) {
    let (h, w, ho, wo) = (g.in_h, g.in_w, g.out_h(), g.out_w());
    let (s, pad, kh, kw) = (g.stride, g.padding, g.kernel_h, g.kernel_w);
    let k = g.in_channels * kh * kw;
    let ow_valid: Vec<(usize, usize)> = (0..kw).map(|j| valid_range(wo, w, s, pad, j)).collect();
    let oh_valid: Vec<(usize, usize)> = (0..kh).map(|i| valid_range(ho, h, s, pad, i)).collect();
    for (panel, out) in dst.chunks_exact_mut(k * nr).enumerate() {
        let start = j0 + panel * nr;
        let cols = nr.min(j0 + n - start);
        // The panel's output positions as runs along output rows:
        // (offset in the panel, oh, first ow, length).
        let mut runs = Vec::with_capacity(nr / wo.max(1) + 2);
        let mut q = 0;
        while q < cols {
            let (oh, ow) = ((start + q) / wo, (start + q) % wo);
            let len = (wo - ow).min(cols - q);
            runs.push((q, oh, ow, len));
            q += len;
        }
        for (row, dst_row) in out.chunks_exact_mut(nr).enumerate() {
            let c = row / (kh * kw);
            let (i, j) = ((row / kw) % kh, row % kw);
            let plane = &x_image[c * h * w..][..h * w];
            let (lo, hi) = ow_valid[j];
            for &(at, oh, ow0, len) in &runs {
                let seg = &mut dst_row[at..at + len];
                if oh < oh_valid[i].0 || oh >= oh_valid[i].1 {
                    seg.fill(T::ZERO);
                    continue;
                }
                let x_row = &plane[(oh * s + i - pad) * w..][..w];
                // ow in [ow0, ow0 + len): zero before lo and from hi on.
                let (a, b) = (lo.clamp(ow0, ow0 + len), hi.clamp(ow0, ow0 + len));
                seg[..a - ow0].fill(T::ZERO);
                seg[b - ow0..].fill(T::ZERO);
                if a < b {
                    copy_strided(&mut seg[a - ow0..b - ow0], &x_row[a * s + j - pad..], s);
                }
            }
            dst_row[cols..].fill(T::ZERO);
        }
    }
}

/// The adjoint of [`im2col`] for the channels of `dx_channels`:
/// `dx[c, oh·s + i − pad, ow·s + j − pad] += col[(c,i,j), (oh,ow)]`.
/// `dx_channels` is overwritten (zeroed first).
pub fn col2im<T: Float>(g: &Conv2dGeometry, col: &[T], dx_channels: &mut [T]) {
    let (h, w, ho, wo) = (g.in_h, g.in_w, g.out_h(), g.out_w());
    let (s, pad) = (g.stride, g.padding);
    let rows_per_channel = g.kernel_h * g.kernel_w;
    dx_channels.fill(T::ZERO);
    for (r, row) in col.chunks_exact(ho * wo).enumerate() {
        let c = r / rows_per_channel;
        let (i, j) = ((r / g.kernel_w) % g.kernel_h, r % g.kernel_w);
        let dx = &mut dx_channels[c * h * w..][..h * w];
        let (oh_lo, oh_hi) = valid_range(ho, h, s, pad, i);
        let (ow_lo, ow_hi) = valid_range(wo, w, s, pad, j);
        if ow_lo == ow_hi {
            continue;
        }
        for oh in oh_lo..oh_hi {
            let src = &row[oh * wo + ow_lo..oh * wo + ow_hi];
            let dx_row = &mut dx[(oh * s + i - pad) * w..][..w];
            let first = ow_lo * s + j - pad;
            if s == 1 {
                for (d, &v) in dx_row[first..].iter_mut().zip(src) {
                    *d += v;
                }
            } else {
                for (d, &v) in dx_row[first..].iter_mut().step_by(s).zip(src) {
                    *d += v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ranges_match_brute_force() {
        for len in 1..7 {
            for s in 1..4 {
                for pad in 0..4 {
                    for k in 1..5 {
                        if len + 2 * pad < k {
                            continue;
                        }
                        let out = (len + 2 * pad - k) / s + 1;
                        for j in 0..k {
                            let inside = |o: usize| {
                                let p = (o * s + j) as isize - pad as isize;
                                p >= 0 && (p as usize) < len
                            };
                            let (lo, hi) = valid_range(out, len, s, pad, j);
                            for o in 0..out {
                                assert_eq!(
                                    inside(o),
                                    o >= lo && o < hi,
                                    "{len} {s} {pad} {k} {j} {o}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
