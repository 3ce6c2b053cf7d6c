//! Pictures a run leaves behind: sample grids and the loss curve, as PNG.

use noisegrad_engine::{Error, Result, Tensor};
use std::path::Path;

/// An 8-bit RGB canvas.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize, fill: [u8; 3]) -> Canvas {
        Canvas {
            width,
            height,
            rgb: fill.repeat(width * height),
        }
    }

    pub fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }

    /// A straight line by simple interpolation (enough for plots).
    pub fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
        let n = (x1 - x0).abs().max((y1 - y0).abs()).ceil().max(1.0) as usize;
        for i in 0..=n {
            let f = i as f64 / n as f64;
            self.set(
                (x0 + (x1 - x0) * f).round() as i64,
                (y0 + (y1 - y0) * f).round() as i64,
                c,
            );
        }
    }

    /// Text in a 3×5 pixel font scaled by `scale` (digits, letters drawn
    /// as capitals except 'e' and 'k', '.', '-', '/', '=', ',').
    pub fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let glyph = glyph(ch);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..3 {
                    if bits & (0b100 >> col) != 0 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                self.set(
                                    x + (k as i64 * 4 + col) * scale + dx,
                                    y + row as i64 * scale + dy,
                                    c,
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    pub fn save_png(&self, path: &Path) -> Result<()> {
        encode_png(
            path,
            self.width,
            self.height,
            png::ColorType::Rgb,
            &self.rgb,
        )
    }
}

fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b010, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0, 0, 0, 0, 0b010],
        '-' => [0, 0, 0b111, 0, 0],
        'e' => [0, 0b111, 0b111, 0b100, 0b111],
        'k' => [0b100, 0b101, 0b110, 0b101, 0b101],
        '/' => [0b001, 0b001, 0b010, 0b100, 0b100],
        '=' => [0, 0b111, 0, 0b111, 0],
        ',' => [0, 0, 0, 0b010, 0b100],
        c if c.is_ascii_alphabetic() => letter(c.to_ascii_uppercase()),
        _ => [0; 5],
    }
}

/// Capital letters of the 3×5 font.
fn letter(c: char) -> [u8; 5] {
    match c {
        'A' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'B' => [0b110, 0b101, 0b110, 0b101, 0b110],
        'C' => [0b011, 0b100, 0b100, 0b100, 0b011],
        'D' => [0b110, 0b101, 0b101, 0b101, 0b110],
        'E' => [0b111, 0b100, 0b110, 0b100, 0b111],
        'F' => [0b111, 0b100, 0b110, 0b100, 0b100],
        'G' => [0b011, 0b100, 0b101, 0b101, 0b011],
        'H' => [0b101, 0b101, 0b111, 0b101, 0b101],
        'I' => [0b111, 0b010, 0b010, 0b010, 0b111],
        'J' => [0b001, 0b001, 0b001, 0b101, 0b010],
        'K' => [0b101, 0b101, 0b110, 0b101, 0b101],
        'L' => [0b100, 0b100, 0b100, 0b100, 0b111],
        'M' => [0b101, 0b111, 0b111, 0b101, 0b101],
        'N' => [0b110, 0b101, 0b101, 0b101, 0b101],
        'O' => [0b010, 0b101, 0b101, 0b101, 0b010],
        'P' => [0b110, 0b101, 0b110, 0b100, 0b100],
        'Q' => [0b010, 0b101, 0b101, 0b110, 0b011],
        'R' => [0b110, 0b101, 0b110, 0b101, 0b101],
        'S' => [0b011, 0b100, 0b010, 0b001, 0b110],
        'T' => [0b111, 0b010, 0b010, 0b010, 0b010],
        'U' => [0b101, 0b101, 0b101, 0b101, 0b111],
        'V' => [0b101, 0b101, 0b101, 0b101, 0b010],
        'W' => [0b101, 0b101, 0b111, 0b111, 0b101],
        'X' => [0b101, 0b101, 0b010, 0b101, 0b101],
        'Y' => [0b101, 0b101, 0b010, 0b010, 0b010],
        _ => [0b111, 0b001, 0b010, 0b100, 0b111], // 'Z'
    }
}

fn encode_png(path: &Path, w: usize, h: usize, color: png::ColorType, data: &[u8]) -> Result<()> {
    let err = |e: String| Error::Io {
        path: path.display().to_string(),
        msg: e,
    };
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, w as u32, h as u32);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc
            .write_header()
            .map_err(|e| err(format!("PNG header: {e}")))?;
        writer
            .write_image_data(data)
            .map_err(|e| err(format!("PNG data: {e}")))?;
    }
    noisegrad_engine::io::write_atomically(path, &buf)
}

/// Saves images [N, C, H, W] with values in [−1, 1] as a grid of `ncol`
/// columns (2-pixel gaps). C = 1 gives grayscale, C = 3 RGB.
pub fn save_grid(path: &Path, images: &Tensor, ncol: usize) -> Result<()> {
    grid_canvas(images, ncol)?.save_png(path)
}

/// [`save_grid`] with a text label left of each row (e.g. class names);
/// returns the width of the label margin (the grid's x offset).
pub fn save_labelled_grid(
    path: &Path,
    images: &Tensor,
    ncol: usize,
    rows: &[String],
) -> Result<usize> {
    let grid = grid_canvas(images, ncol)?;
    let tile = images.shape()[2] + 2;
    let scale = ((tile / 14) as i64).max(1);
    let chars = rows.iter().map(|r| r.chars().count()).max().unwrap_or(0);
    let margin = chars * 4 * scale as usize + 6;
    let mut c = Canvas::new(grid.width + margin, grid.height, [255, 255, 255]);
    for y in 0..grid.height {
        let (src, dst) = (y * grid.width * 3, (y * c.width + margin) * 3);
        c.rgb[dst..dst + grid.width * 3].copy_from_slice(&grid.rgb[src..src + grid.width * 3]);
    }
    for (i, r) in rows.iter().enumerate() {
        let y = 2 + i * tile + (tile - 5 * scale as usize) / 2;
        c.text(3, y as i64, &r.to_uppercase(), scale, [0, 0, 0]);
    }
    c.save_png(path)?;
    Ok(margin)
}

/// The grid picture of [`save_grid`].
fn grid_canvas(images: &Tensor, ncol: usize) -> Result<Canvas> {
    let s = images.shape();
    if s.len() != 4 || !(s[1] == 1 || s[1] == 3) {
        return Err(Error::Input(format!(
            "save_grid: expected [N, 1 or 3, H, W] images, got {s:?}"
        )));
    }
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let ncol = ncol.clamp(1, n.max(1));
    let nrow = n.div_ceil(ncol);
    let (pad, gw, gh) = (2, ncol * (w + 2) + 2, nrow * (h + 2) + 2);
    let mut canvas = Canvas::new(gw, gh, [255, 255, 255]);
    let v = images.to_vec_f32();
    for i in 0..n {
        let (ox, oy) = (pad + (i % ncol) * (w + pad), pad + (i / ncol) * (h + pad));
        for y in 0..h {
            for x in 0..w {
                let px = |ch: usize| {
                    (((v[((i * c + ch) * h + y) * w + x] + 1.0) * 127.5)
                        .round()
                        .clamp(0.0, 255.0)) as u8
                };
                let rgb = if c == 1 {
                    [px(0); 3]
                } else {
                    [px(0), px(1), px(2)]
                };
                canvas.set((ox + x) as i64, (oy + y) as i64, rgb);
            }
        }
    }
    Ok(canvas)
}

/// Plots the loss (log scale): raw values as light dots, an exponential
/// moving average as a line, with the axis range written at the corners.
pub fn save_loss_plot(path: &Path, points: &[(u64, f64)]) -> Result<()> {
    let (w, h, margin) = (720usize, 400usize, 40.0);
    let mut c = Canvas::new(w, h, [255, 255, 255]);
    let finite: Vec<(u64, f64)> = points
        .iter()
        .copied()
        .filter(|p| p.1.is_finite() && p.1 > 0.0)
        .collect();
    let (x0, y0, x1, y1) = (
        margin,
        margin / 2.0,
        w as f64 - margin / 2.0,
        h as f64 - margin,
    );
    let axis = [90, 90, 90];
    c.line((x0, y0), (x0, y1), axis);
    c.line((x0, y1), (x1, y1), axis);
    if finite.len() < 2 {
        return c.save_png(path);
    }
    let (smin, smax) = (finite[0].0 as f64, finite.last().unwrap().0 as f64);
    let lo = finite
        .iter()
        .map(|p| p.1)
        .fold(f64::INFINITY, f64::min)
        .log10();
    let hi = finite
        .iter()
        .map(|p| p.1)
        .fold(f64::NEG_INFINITY, f64::max)
        .log10();
    let span = (hi - lo).max(1e-6);
    let to_xy = |step: f64, loss: f64| {
        (
            x0 + (step - smin) / (smax - smin).max(1.0) * (x1 - x0),
            y1 - (loss.log10() - lo) / span * (y1 - y0),
        )
    };
    for &(s, l) in &finite {
        let (x, y) = to_xy(s as f64, l);
        c.set(x.round() as i64, y.round() as i64, [190, 200, 230]);
    }
    let alpha = 2.0 / (1.0 + (finite.len() as f64 / 20.0).max(1.0));
    let mut ema = finite[0].1;
    let mut prev = to_xy(finite[0].0 as f64, ema);
    for &(s, l) in &finite[1..] {
        ema = alpha * l + (1.0 - alpha) * ema;
        let cur = to_xy(s as f64, ema);
        c.line(prev, cur, [200, 40, 40]);
        prev = cur;
    }
    let label = [40, 40, 40];
    c.text(2, y0 as i64, &format!("{:.3}", 10f64.powf(hi)), 2, label);
    c.text(
        2,
        y1 as i64 - 10,
        &format!("{:.3}", 10f64.powf(lo)),
        2,
        label,
    );
    c.text(
        x0 as i64,
        y1 as i64 + 8,
        &format!("{}", smin as u64),
        2,
        label,
    );
    let last = format!("{}", smax as u64);
    c.text(
        x1 as i64 - 8 * last.len() as i64,
        y1 as i64 + 8,
        &last,
        2,
        label,
    );
    c.save_png(path)
}
