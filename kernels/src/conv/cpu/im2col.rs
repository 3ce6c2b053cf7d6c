//! The patches a kernel sees (im2col: the columns of a `[C·kh·kw, Ho·Wo]`
//! matrix per image) and the adjoint scatter-add (col2im), both through
//! [`Phases`]: the zero-padded input split by stride phase, in which every
//! run of patch values along an output row is contiguous. Padding and
//! stride are thus handled once per channel, and the copies and additions
//! are plain unit-stride loops.

use super::Conv2dGeometry;
use crate::Float;

/// Copies `dst.len()` elements `src[0], src[s], src[2s], ...`; strides 1
/// and 2 get their own loops (a constant stride vectorises, a variable one
/// does not).
#[inline(always)]
fn copy_strided<T: Float>(dst: &mut [T], src: &[T], s: usize) {
    match s {
        1 => dst.copy_from_slice(&src[..dst.len()]),
        2 => {
            let src = &src[..2 * dst.len() - 1];
            for (i, d) in dst.iter_mut().enumerate() {
                *d = src[2 * i];
            }
        }
        _ => {
            for (d, v) in dst.iter_mut().zip(src.iter().step_by(s)) {
                *d = *v;
            }
        }
    }
}

/// The zero-padded input of one image split into stride² phases: phase
/// (a, b) of channel c holds padded rows a, a + s, … and columns b, b + s, …
/// so the input under kernel offset (i, j) at output (oh, ow) is
/// `phase(i % s, j % s)[oh + i/s][ow + j/s]`: every run of output positions
/// along a row reads a contiguous run of one phase, with no bounds checks.
#[derive(Clone, Copy, Debug)]
pub struct Phases {
    /// Rows and columns of each phase plane.
    pub h: usize,
    pub w: usize,
}

impl Phases {
    pub fn new(g: &Conv2dGeometry) -> Self {
        let s = g.stride;
        Phases {
            h: (g.in_h + 2 * g.padding).div_ceil(s),
            w: (g.in_w + 2 * g.padding).div_ceil(s),
        }
    }

    /// Elements per image: C · s² planes.
    pub fn image_len(&self, g: &Conv2dGeometry) -> usize {
        g.in_channels * g.stride * g.stride * self.h * self.w
    }

    /// Elements per input channel: s² planes.
    pub fn channel_len(&self, g: &Conv2dGeometry) -> usize {
        g.stride * g.stride * self.h * self.w
    }

    /// Writes the phases of one input channel (`plane`, H×W) into `out`
    /// (s² planes of h×w, including every padding element).
    pub fn split_channel<T: Float>(&self, g: &Conv2dGeometry, plane: &[T], out: &mut [T]) {
        let (s, pad, w) = (g.stride, g.padding, g.in_w);
        let len = self.h * self.w;
        out.fill(T::ZERO);
        for (ih, row) in plane.chunks_exact(w).enumerate() {
            let r = ih + pad;
            let row_at = |b: usize| ((r % s) * s + b) * len + (r / s) * self.w;
            if s == 2 {
                // Input columns 2m, 2m + 1 go to padded columns 2m + pad,
                // 2m + 1 + pad: split the pairs in one pass.
                let (b0, b1) = (pad % 2, (pad + 1) % 2);
                let (at0, at1) = (row_at(b0) + pad / 2, row_at(b1) + pad.div_ceil(2));
                let pairs = w / 2;
                let (lo, hi) = if at0 < at1 { (at0, at1) } else { (at1, at0) };
                let (head, tail) = out.split_at_mut(hi);
                let (first, second) = (&mut head[lo..lo + pairs], &mut tail[..pairs]);
                let (even, odd) = if at0 < at1 {
                    (first, second)
                } else {
                    (second, first)
                };
                for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(row.chunks_exact(2)) {
                    *e = pair[0];
                    *o = pair[1];
                }
                if w % 2 == 1 {
                    out[at0 + pairs] = row[w - 1];
                }
                continue;
            }
            for b in 0..s {
                // Padded columns q ≡ b (mod s): input columns q − pad.
                let first = (b + s - pad % s) % s;
                if first >= w {
                    continue;
                }
                let at = row_at(b) + (first + pad) / s;
                copy_strided(&mut out[at..at + (w - first).div_ceil(s)], &row[first..], s);
            }
        }
    }

    /// The inverse of [`Phases::split_channel`] on the image itself:
    /// `plane[ih][iw]` = the phase value at padded (ih + pad, iw + pad).
    pub fn merge_channel<T: Float>(&self, g: &Conv2dGeometry, phases: &[T], plane: &mut [T]) {
        let (s, pad, w) = (g.stride, g.padding, g.in_w);
        let len = self.h * self.w;
        for (ih, row) in plane.chunks_exact_mut(w).enumerate() {
            let r = ih + pad;
            let row_at = |b: usize| ((r % s) * s + b) * len + (r / s) * self.w;
            if s == 2 {
                let (b0, b1) = (pad % 2, (pad + 1) % 2);
                let (at0, at1) = (row_at(b0) + pad / 2, row_at(b1) + pad.div_ceil(2));
                let pairs = w / 2;
                let (even, odd) = (&phases[at0..at0 + pairs], &phases[at1..at1 + pairs]);
                for ((pair, &e), &o) in row.chunks_exact_mut(2).zip(even).zip(odd) {
                    pair[0] = e;
                    pair[1] = o;
                }
                if w % 2 == 1 {
                    row[w - 1] = phases[at0 + pairs];
                }
                continue;
            }
            for (iw, v) in row.iter_mut().enumerate() {
                let q = iw + pad;
                *v = phases[row_at(q % s) + q / s];
            }
        }
    }
}

/// The kh·kw im2col rows of one channel, `rows[(i, j)][(oh, ow)] =
/// x_padded[oh·s + i][ow·s + j]`, from that channel's phases.
pub fn im2col_channel<T: Float>(g: &Conv2dGeometry, ph: &Phases, phases: &[T], rows: &mut [T]) {
    let (ho, wo, s, kw) = (g.out_h(), g.out_w(), g.stride, g.kernel_w);
    let plane_len = ph.h * ph.w;
    for (ij, row) in rows.chunks_exact_mut(ho * wo).enumerate() {
        let (i, j) = (ij / kw, ij % kw);
        let plane = &phases[((i % s) * s + j % s) * plane_len..][..plane_len];
        for (oh, dst) in row.chunks_exact_mut(wo).enumerate() {
            copy_run(dst, &plane[(oh + i / s) * ph.w + j / s..][..wo]);
        }
    }
}

/// The adjoint of [`im2col_channel`]: adds the kh·kw rows back into the
/// channel's phases (`phases` must start zeroed; padding positions collect
/// contributions that [`Phases::merge_channel`] then ignores).
pub fn col2im_channel<T: Float>(g: &Conv2dGeometry, ph: &Phases, rows: &[T], phases: &mut [T]) {
    let (ho, wo, s, kw) = (g.out_h(), g.out_w(), g.stride, g.kernel_w);
    let plane_len = ph.h * ph.w;
    for (ij, row) in rows.chunks_exact(ho * wo).enumerate() {
        let (i, j) = (ij / kw, ij % kw);
        let plane = &mut phases[((i % s) * s + j % s) * plane_len..][..plane_len];
        for (oh, src) in row.chunks_exact(wo).enumerate() {
            let dst = &mut plane[(oh + i / s) * ph.w + j / s..][..wo];
            for (d, &v) in dst.iter_mut().zip(src) {
                *d += v;
            }
        }
    }
}

/// Rows `[p0, p0 + kc)` × columns `[j0, j0 + cols)` (cols ≤ nr) of one
/// image's im2col matrix (rows (c, i, j), columns (oh, ow)), written as one
/// packed-B slice `out[row][nr]` (columns past `cols` zero) from the
/// image's [`Phases`]: each output row's run of positions is a contiguous
/// copy, and no im2col buffer exists.
pub fn pack_patch_slice<T: Float>(
    g: &Conv2dGeometry,
    ph: &Phases,
    phases: &[T],
    (p0, j0, cols): (usize, usize, usize),
    nr: usize,
    out: &mut [T],
) {
    let (wo, s, kh, kw) = (g.out_w(), g.stride, g.kernel_h, g.kernel_w);
    let plane_len = ph.h * ph.w;
    // The positions as runs along output rows: (offset, oh, first ow, length).
    let mut runs = [(0, 0, 0, 0); 8];
    let mut count = 0;
    let mut q = 0;
    while q < cols {
        let (oh, ow) = ((j0 + q) / wo, (j0 + q) % wo);
        let len = (wo - ow).min(cols - q);
        if count == runs.len() {
            // Very narrow images: more runs than fit; take the slow path.
            return pack_patch_slice_by_element(g, ph, phases, (p0, j0, cols), nr, out);
        }
        runs[count] = (q, oh, ow, len);
        count += 1;
        q += len;
    }
    for (r, dst_row) in out.chunks_exact_mut(nr).enumerate() {
        let row = p0 + r;
        let (c, i, j) = (row / (kh * kw), (row / kw) % kh, row % kw);
        let phase = c * s * s + (i % s) * s + j % s;
        let plane = &phases[phase * plane_len..][..plane_len];
        for &(at, oh, ow0, len) in &runs[..count] {
            let src = &plane[(oh + i / s) * ph.w + ow0 + j / s..][..len];
            copy_run(&mut dst_row[at..at + len], src);
        }
        dst_row[cols..].fill(T::ZERO);
    }
}

fn pack_patch_slice_by_element<T: Float>(
    g: &Conv2dGeometry,
    ph: &Phases,
    phases: &[T],
    (p0, j0, cols): (usize, usize, usize),
    nr: usize,
    out: &mut [T],
) {
    let (wo, s, kh, kw) = (g.out_w(), g.stride, g.kernel_h, g.kernel_w);
    let plane_len = ph.h * ph.w;
    for (r, dst_row) in out.chunks_exact_mut(nr).enumerate() {
        let row = p0 + r;
        let (c, i, j) = (row / (kh * kw), (row / kw) % kh, row % kw);
        let plane = &phases[(c * s * s + (i % s) * s + j % s) * plane_len..][..plane_len];
        for (q, d) in dst_row[..cols].iter_mut().enumerate() {
            let (oh, ow) = ((j0 + q) / wo, (j0 + q) % wo);
            *d = plane[(oh + i / s) * ph.w + ow + j / s];
        }
        dst_row[cols..].fill(T::ZERO);
    }
}

/// `dst.copy_from_slice(src)` for the short runs of patch packing, in
/// blocks of 8 so that it compiles to vector moves, not a `memcpy` call.
#[inline(always)]
fn copy_run<T: Float>(dst: &mut [T], src: &[T]) {
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (a, b) in (&mut d).zip(&mut s) {
        let a: &mut [T; 8] = a.try_into().expect("8");
        *a = *<&[T; 8]>::try_from(b).expect("8");
    }
    for (a, b) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *a = *b;
    }
}
