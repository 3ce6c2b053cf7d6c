//! Nearest-neighbour ×2 upsampling as plain loops, forward and backward
//! side by side: the oracle of the CPU kernel's tests.
//!
//! y[p, i, j] = x[p, ⌊i/2⌋, ⌊j/2⌋] on each of the `planes` H×W planes, so
//! dx[p, i, j] = Σ of the 2×2 block of dy it was copied to.

/// y `[planes, 2H, 2W]` of x `[planes, H, W]`.
pub fn forward(x: &[f64], planes: usize, h: usize, w: usize) -> Vec<f64> {
    let mut y = vec![0.0; planes * 4 * h * w];
    for p in 0..planes {
        for i in 0..2 * h {
            for j in 0..2 * w {
                y[(p * 2 * h + i) * 2 * w + j] = x[(p * h + i / 2) * w + j / 2];
            }
        }
    }
    y
}

/// dx `[planes, H, W]` of dy `[planes, 2H, 2W]`.
pub fn backward(dy: &[f64], planes: usize, h: usize, w: usize) -> Vec<f64> {
    let mut dx = vec![0.0; planes * h * w];
    for p in 0..planes {
        for i in 0..2 * h {
            for j in 0..2 * w {
                dx[(p * h + i / 2) * w + j / 2] += dy[(p * 2 * h + i) * 2 * w + j];
            }
        }
    }
    dx
}
