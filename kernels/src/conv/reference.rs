//! The definition of conv2d as plain f64 loops, forward and backward side
//! by side: the oracle the fast kernels (Winograd, im2col + GEMM, CUDA)
//! are tested against. Nothing here is meant to be fast.
//!
//! y[n,o,i,j] = b[o] + Σ_{c,p,q} w[o,c,p,q] · x[n, c, i·s + p − pad, j·s + q − pad]
//! (cross-correlation, zero padding), so each product term gives
//! dx[n,c,·,·] += w·dy, dw[o,c,p,q] += x·dy and db[o] += dy.

use super::Conv2dGeometry;

/// Calls `term(x_index, w_index, y_index)` for every product term of the
/// convolution, skipping the ones that fall in the zero padding.
fn for_each_term(g: &Conv2dGeometry, mut term: impl FnMut(usize, usize, usize)) {
    let (ho, wo) = (g.out_h(), g.out_w());
    let (c, h, w, kh, kw) = (g.in_channels, g.in_h, g.in_w, g.kernel_h, g.kernel_w);
    for n in 0..g.batch {
        for o in 0..g.out_channels {
            for oi in 0..ho {
                for oj in 0..wo {
                    let y = ((n * g.out_channels + o) * ho + oi) * wo + oj;
                    for ci in 0..c {
                        for p in 0..kh {
                            for q in 0..kw {
                                let ih = (oi * g.stride + p).checked_sub(g.padding);
                                let iw = (oj * g.stride + q).checked_sub(g.padding);
                                let (Some(ih), Some(iw)) = (ih, iw) else {
                                    continue;
                                };
                                if ih < h && iw < w {
                                    let x = ((n * c + ci) * h + ih) * w + iw;
                                    let wi = ((o * c + ci) * kh + p) * kw + q;
                                    term(x, wi, y);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The output `[N, O, Ho, Wo]` of input `x` `[N, C, H, W]`, weight `w`
/// `[O, C, kh, kw]` and optional bias `[O]`.
pub fn forward(g: &Conv2dGeometry, x: &[f64], w: &[f64], bias: Option<&[f64]>) -> Vec<f64> {
    let plane = g.out_h() * g.out_w();
    let mut y: Vec<f64> = (0..g.output_len())
        .map(|i| bias.map_or(0.0, |b| b[i / plane % g.out_channels]))
        .collect();
    for_each_term(g, |xi, wi, yi| y[yi] += w[wi] * x[xi]);
    y
}

/// The gradients (dx, dw, db) of Σ y ⊙ dy with respect to the input, the
/// weight and the bias.
pub fn backward(
    g: &Conv2dGeometry,
    x: &[f64],
    w: &[f64],
    dy: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut dx, mut dw) = (vec![0.0; g.input_len()], vec![0.0; g.weight_len()]);
    for_each_term(g, |xi, wi, yi| {
        dx[xi] += w[wi] * dy[yi];
        dw[wi] += x[xi] * dy[yi];
    });
    let plane = g.out_h() * g.out_w();
    let mut db = vec![0.0; g.out_channels];
    for (i, &d) in dy.iter().enumerate() {
        db[i / plane % g.out_channels] += d;
    }
    (dx, dw, db)
}
