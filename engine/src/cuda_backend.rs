//! The CUDA device: storage as a pooled device buffer of f32, and each
//! primitive as a launch of a kernel in `noisegrad_kernels::cuda`.
//!
//! Mirrors `cpu_backend.rs`: kernel families with their own file (conv,
//! norms, attention, ...) add `impl CudaStorage` blocks next to their CPU
//! counterparts in `ops/`. CUDA tensors are f32 only (f64 is the CPU's
//! gradient-check type); asking for f64 on the GPU is an `Unsupported` error.

use crate::error::{Error, Result, shape_err};
use crate::layout::reduce_runs;
use crate::memory::MemTicket;
use crate::primitive::{BinaryOp, MatmulDims, RandKind, ReduceOp, UnaryOp, split_at_axis};
use crate::{DType, Device, Layout};
use noisegrad_kernels::cpu::collapse_dims;
use noisegrad_kernels::cuda::{CudaDevice, CudaError, DeviceBuffer};
use noisegrad_kernels::cuda::{MAX_RANK, Strided};
use noisegrad_kernels::elementwise::cuda::{self as ew, Dense, View};
use noisegrad_kernels::gemm::cuda::{self as gemm, MatOperand, MatOut};
use noisegrad_kernels::rng::Philox;
use noisegrad_kernels::{index::cuda as kindex, random::cuda as krandom, reduce::cuda as kreduce};
use std::sync::Arc;

impl From<CudaError> for Error {
    fn from(e: CudaError) -> Error {
        Error::Cuda(e)
    }
}

/// The [`CudaDevice`] behind `Device::Cuda(ordinal)` (its controls are
/// `Device` methods, see `device.rs`).
pub(crate) fn cuda_device(ordinal: usize) -> Result<Arc<CudaDevice>> {
    Ok(CudaDevice::get(ordinal)?)
}

#[derive(Debug)]
pub struct CudaStorage {
    pub(crate) buf: DeviceBuffer,
    pub(crate) dev: Arc<CudaDevice>,
    _mem: MemTicket,
}

/// The error for f64 (or another non-f32 dtype) on the GPU.
pub(crate) fn f32_only(op: &'static str, dtype: DType) -> Error {
    Error::Unsupported {
        op,
        msg: format!(
            "CUDA tensors are f32, got {dtype:?}; f64 is for CPU gradient checks \
             (convert with to_dtype(DType::F32) first)"
        ),
    }
}

impl CudaStorage {
    pub(crate) fn new(dev: Arc<CudaDevice>, buf: DeviceBuffer) -> Self {
        let _mem = MemTicket::new(Device::Cuda(dev.ordinal()), buf.len() * 4);
        Self { buf, dev, _mem }
    }

    pub fn device(&self) -> Device {
        Device::Cuda(self.dev.ordinal())
    }

    pub fn dtype(&self) -> DType {
        DType::F32
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The same device, a new buffer.
    pub(crate) fn wrap(&self, buf: DeviceBuffer) -> CudaStorage {
        CudaStorage::new(self.dev.clone(), buf)
    }

    /// This buffer seen through `layout`, for a kernel argument. Dims are
    /// collapsed first, so only views that cannot be flattened to
    /// [`MAX_RANK`] dims are refused.
    pub(crate) fn view(&self, layout: &Layout) -> Result<View<'_>> {
        Ok(View {
            buf: &self.buf,
            strided: strided(layout)?,
            contiguous: layout.is_contiguous(),
        })
    }

    pub fn zeros(ordinal: usize, dtype: DType, n: usize) -> Result<Self> {
        Self::full(ordinal, dtype, n, 0.0)
    }

    pub fn full(ordinal: usize, dtype: DType, n: usize, value: f64) -> Result<Self> {
        if dtype != DType::F32 {
            return Err(f32_only("full", dtype));
        }
        let dev = cuda_device(ordinal)?;
        let buf = if value == 0.0 {
            dev.zeros(n)?
        } else {
            ew::fill(&dev, n, value as f32)?
        };
        Ok(Self::new(dev, buf))
    }

    pub fn from_f64(ordinal: usize, dtype: DType, data: &[f64]) -> Result<Self> {
        let host: Vec<f32> = data.iter().map(|&v| v as f32).collect();
        Self::from_f32(ordinal, dtype, &host)
    }

    pub fn from_f32(ordinal: usize, dtype: DType, data: &[f32]) -> Result<Self> {
        if dtype != DType::F32 {
            return Err(f32_only("to_device", dtype));
        }
        let dev = cuda_device(ordinal)?;
        let buf = dev.upload(data)?;
        Ok(Self::new(dev, buf))
    }

    /// The elements of `layout`, row-major, on the host.
    pub fn to_f32_vec(&self, layout: &Layout) -> Result<Vec<f32>> {
        let n = layout.numel();
        if layout.is_contiguous() {
            return Ok(self.dev.download(&self.buf, layout.offset(), n)?);
        }
        let packed = self.contiguous(layout)?;
        Ok(self.dev.download(&packed.buf, 0, n)?)
    }

    pub fn to_dtype(&self, layout: &Layout, dtype: DType) -> Result<Self> {
        if dtype != DType::F32 {
            return Err(f32_only("to_dtype", dtype));
        }
        self.contiguous(layout)
    }

    pub fn contiguous(&self, layout: &Layout) -> Result<Self> {
        let y = ew::contiguous(&self.dev, self.view(layout)?, layout.numel())?;
        Ok(self.wrap(y))
    }

    pub fn copy_from(
        &mut self,
        dst: &Layout,
        src: &CudaStorage,
        src_layout: &Layout,
    ) -> Result<()> {
        if dst.shape() != src_layout.shape() {
            return Err(shape_err(
                "copy",
                dst.shape(),
                src_layout.shape(),
                "shapes differ",
            ));
        }
        let (d, s) = (strided(dst)?, src.view(src_layout)?);
        ew::copy_into(&self.dev, s, &self.buf, d, dst.numel())?;
        Ok(())
    }

    pub fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Self> {
        let y = ew::unary(&self.dev, op, self.view(layout)?, layout.numel())?;
        Ok(self.wrap(y))
    }

    pub fn binary(&self, l: &Layout, rhs: &CudaStorage, r: &Layout, op: BinaryOp) -> Result<Self> {
        let (a, b) = collapsed_pair(l, r)?;
        let va = View {
            buf: &self.buf,
            strided: a,
            contiguous: l.is_contiguous(),
        };
        let vb = View {
            buf: &rhs.buf,
            strided: b,
            contiguous: r.is_contiguous(),
        };
        Ok(self.wrap(ew::binary(&self.dev, op, va, vb, l.numel())?))
    }

    pub fn where_cond(
        &self,
        c: &Layout,
        a: &CudaStorage,
        al: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> Result<Self> {
        let y = ew::where_cond(
            &self.dev,
            self.view(c)?,
            a.view(al)?,
            b.view(bl)?,
            c.numel(),
        )?;
        Ok(self.wrap(y))
    }
}

/// The core primitives: reductions, softmax, indexing, matmul, random fills.
/// Inputs that are not one contiguous run are packed first (as the CPU's
/// `contiguous_slice` does); results are new contiguous buffers.
impl CudaStorage {
    /// The elements of `layout` as one contiguous run: this buffer when the
    /// layout is one, else a packed copy (keep it alive while its address is
    /// used). `op` names the caller in errors.
    pub(crate) fn dense(&self, layout: &Layout, op: &'static str) -> Result<Dense<'_>> {
        Ok(Dense::new(
            &self.dev,
            self.view(layout)?,
            layout.numel(),
            op,
        )?)
    }

    /// Reduces over `axes` (sorted, unique) one contiguous run of axes at a
    /// time, last run first, as `CpuStorage::reduce` does; the result is
    /// contiguous with the reduced axes kept as size 1.
    pub fn reduce(&self, layout: &Layout, op: ReduceOp, axes: &[usize]) -> Result<Self> {
        let runs = reduce_runs(layout.shape(), axes);
        if runs.is_empty() {
            return self.contiguous(layout);
        }
        let x = self.dense(layout, "reduce")?;
        let x = x.ptr();
        let mut cur: Option<DeviceBuffer> = None;
        for (outer, r, inner) in runs {
            let src = cur.as_ref().map_or(x, |b| b.ptr());
            // Dropping the previous run's buffer is safe: the launch reading
            // it is already queued on the device's one stream.
            cur = Some(kreduce::reduce(&self.dev, op, src, outer, r, inner)?);
        }
        Ok(self.wrap(cur.expect("at least one run")))
    }

    /// Softmax (`log`: log-softmax) along `axis`.
    pub fn softmax(&self, layout: &Layout, axis: usize, log: bool) -> Result<Self> {
        let dims = split_at_axis(layout.shape(), axis);
        let y = if layout.is_contiguous() {
            kreduce::softmax(&self.dev, &self.buf, layout.offset(), dims, log)?
        } else {
            let x = ew::contiguous(&self.dev, self.view(layout)?, layout.numel())?;
            kreduce::softmax(&self.dev, &x, 0, dims, log)?
        };
        Ok(self.wrap(y))
    }

    /// ∂L/∂x of softmax along `axis` from its output `y` (this storage) and
    /// `g` = ∂L/∂y.
    pub fn softmax_backward(
        &self,
        yl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
        axis: usize,
        log: bool,
    ) -> Result<Self> {
        if yl.shape() != gl.shape() {
            return Err(shape_err(
                "softmax_backward",
                yl.shape(),
                gl.shape(),
                "output and gradient shapes differ",
            ));
        }
        let dims = split_at_axis(yl.shape(), axis);
        let (yp, gp) = (self.contiguous_or_self(yl)?, g.contiguous_or_self(gl)?);
        let y = (yp.as_ref().unwrap_or(&self.buf), offset_if(&yp, yl));
        let gv = (gp.as_ref().unwrap_or(&g.buf), offset_if(&gp, gl));
        let dx = kreduce::softmax_backward(&self.dev, y, gv, dims, log)?;
        Ok(self.wrap(dx))
    }

    /// `None` when `layout` already is one contiguous run of this buffer,
    /// else a packed copy of it.
    fn contiguous_or_self(&self, layout: &Layout) -> Result<Option<DeviceBuffer>> {
        if layout.is_contiguous() {
            Ok(None)
        } else {
            Ok(Some(ew::contiguous(
                &self.dev,
                self.view(layout)?,
                layout.numel(),
            )?))
        }
    }

    /// Rows `ids` along `axis`.
    pub fn index_select(&self, layout: &Layout, axis: usize, ids: &[usize]) -> Result<Self> {
        let dims = split_at_axis(layout.shape(), axis);
        let x = self.dense(layout, "index_select")?;
        Ok(self.wrap(kindex::index_select(&self.dev, x.ptr(), dims, ids)?))
    }

    /// A zero tensor of `shape` with this storage's rows (seen through
    /// `src_layout`) added at `ids` along `axis`.
    pub fn index_add_zeros(
        &self,
        src_layout: &Layout,
        shape: &[usize],
        axis: usize,
        ids: &[usize],
    ) -> Result<Self> {
        let (outer, dim, inner) = split_at_axis(shape, axis);
        if src_layout.numel() != outer * ids.len() * inner {
            return Err(shape_err(
                "index_add",
                src_layout.shape(),
                shape,
                "source does not have ids.len() rows along the axis",
            ));
        }
        let src = self.dense(src_layout, "index_add")?;
        Ok(self.wrap(kindex::index_add_zeros(
            &self.dev,
            src.ptr(),
            (outer, dim, inner),
            ids,
        )?))
    }

    /// `[batch.., m, k] @ [batch.., k, n]` on cuBLAS, layouts already
    /// broadcast to `dims.batch`. Operands are read in place when their
    /// matrices are row-major or transposed and their batch is one stride
    /// (0 for a broadcast operand); otherwise they are packed.
    pub fn matmul(
        &self,
        l: &Layout,
        rhs: &CudaStorage,
        r: &Layout,
        d: &MatmulDims,
    ) -> Result<Self> {
        let batch: usize = d.batch.iter().product();
        let len = batch * d.m * d.n;
        if d.k == 0 || len == 0 {
            // An empty sum is 0 (and cuBLAS wants k ≥ 1).
            return Ok(self.wrap(self.dev.zeros(len)?));
        }
        let nb = d.batch.len();
        let (a, _pa) = self.gemm_operand(l, nb, d.m, d.k)?;
        let (b, _pb) = rhs.gemm_operand(r, nb, d.k, d.n)?;
        let y = self.dev.alloc(len)?;
        let (m, batch, a) = fold_batch(a, b, d.m, batch);
        let out = MatOut {
            ptr: y.ptr(),
            ld: d.n,
            batch_stride: d.m * d.n,
        };
        gemm::gemm(&self.dev, (m, d.n, d.k), a, b, out, batch, (1.0, 0.0))?;
        Ok(self.wrap(y))
    }

    /// The operand of a `[batch.., rows, cols]` layout (batch axes `..nb`),
    /// and the packed copy it points into when the layout had to be packed.
    fn gemm_operand(
        &self,
        layout: &Layout,
        nb: usize,
        rows: usize,
        cols: usize,
    ) -> Result<(MatOperand, Option<DeviceBuffer>)> {
        let (shape, st) = (layout.shape(), layout.strides());
        let batch = batch_stride(&shape[..nb], &st[..nb]);
        if let (Some(batch_stride), Some((trans, ld))) =
            (batch, mat_form(rows, cols, st[nb], st[nb + 1]))
        {
            let op = MatOperand {
                ptr: self.buf.ptr_at(layout.offset()),
                ld,
                trans,
                batch_stride,
            };
            return Ok((op, None));
        }
        let y = ew::contiguous(&self.dev, self.view(layout)?, layout.numel())?;
        let op = MatOperand {
            ptr: y.ptr(),
            ld: cols,
            trans: false,
            batch_stride: rows * cols,
        };
        Ok((op, Some(y)))
    }

    /// `n` uniform or normal values from `rng`, the same values as
    /// `CpuStorage::rand` gives for the same generator state; the blocks are
    /// reserved on `rng` exactly as the CPU does, so both advance alike.
    pub fn rand(ordinal: usize, n: usize, kind: RandKind, rng: &mut Philox) -> Result<Self> {
        // Open the device before touching the generator, so a missing GPU
        // leaves it where it was.
        let dev = cuda_device(ordinal)?;
        let seed = rng.seed();
        let first = rng.reserve_blocks(n.div_ceil(4) as u64);
        let normal = matches!(kind, RandKind::Normal);
        let y = krandom::philox_fill(&dev, n, seed, first, normal)?;
        Ok(Self::new(dev, y))
    }
}

/// The element offset of a layout's data: 0 in a packed copy, else the
/// layout's own offset.
fn offset_if(packed: &Option<DeviceBuffer>, layout: &Layout) -> usize {
    if packed.is_some() { 0 } else { layout.offset() }
}

/// How cuBLAS can read a `rows × cols` matrix whose element `(i, j)` is at
/// `i·rs + j·cs`: `Some((false, ld))` when it is row-major with row stride
/// `ld` (`(i, j)` at `i·ld + j`), `Some((true, ld))` when it is stored
/// transposed (`(i, j)` at `j·ld + i`, a `.t()` view), with `ld` at least
/// the stored row length, as cuBLAS requires. `None`: pack it.
pub(crate) fn mat_form(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<(bool, usize)> {
    // The stride of an axis of size 1 never matters.
    if cs == 1 || cols == 1 {
        let ld = if rows == 1 { cols.max(1) } else { rs };
        if ld >= cols.max(1) {
            return Some((false, ld));
        }
    }
    if rs == 1 || rows == 1 {
        let ld = if cols == 1 { rows.max(1) } else { cs };
        if ld >= rows.max(1) {
            return Some((true, ld));
        }
    }
    None
}

/// The single stride between consecutive matrices of a batch with
/// (broadcast) batch axes `shape` and `strides`, when flat batch index `b`
/// sits at `b · stride`; 0 when every batch axis is broadcast (or there is
/// one matrix). `None` when the axes do not nest like that (e.g. only some
/// batch axes broadcast): the operand is packed.
pub(crate) fn batch_stride(shape: &[usize], strides: &[usize]) -> Option<usize> {
    let mut stride: Option<usize> = None;
    let mut count = 1;
    for d in (0..shape.len()).rev() {
        if shape[d] == 1 {
            continue;
        }
        match stride {
            None => stride = Some(strides[d]),
            Some(s) if strides[d] != s * count => return None,
            Some(_) => {}
        }
        count *= shape[d];
    }
    Some(stride.unwrap_or(0))
}

/// A batch of row-major A matrices that lie back to back (batch stride
/// m·ld) times one shared B is a single GEMM with m·batch rows: fewer,
/// larger products (a linear layer on `[B, T, C]`). Returns the m, batch
/// and A to launch with.
fn fold_batch(a: MatOperand, b: MatOperand, m: usize, batch: usize) -> (usize, usize, MatOperand) {
    if batch > 1 && b.batch_stride == 0 && !a.trans && a.batch_stride == m * a.ld {
        let a = MatOperand {
            batch_stride: 0,
            ..a
        };
        (m * batch, 1, a)
    } else {
        (m, batch, a)
    }
}

/// A layout as a kernel's [`Strided`] argument, dims collapsed.
pub(crate) fn strided(layout: &Layout) -> Result<Strided> {
    let (shape, strides) = collapse_dims(layout.shape(), &[layout.strides()]);
    Strided::new(&shape, &strides[0], layout.offset()).ok_or_else(|| too_many_dims(layout.shape()))
}

/// Two same-shape layouts collapsed together (their dims merge only where
/// both can), for broadcast binary ops.
fn collapsed_pair(l: &Layout, r: &Layout) -> Result<(Strided, Strided)> {
    let (shape, strides) = collapse_dims(l.shape(), &[l.strides(), r.strides()]);
    let a = Strided::new(&shape, &strides[0], l.offset());
    let b = Strided::new(&shape, &strides[1], r.offset());
    a.zip(b).ok_or_else(|| too_many_dims(l.shape()))
}

fn too_many_dims(shape: &[usize]) -> Error {
    Error::Unsupported {
        op: "cuda view",
        msg: format!(
            "a view of shape {shape:?} does not collapse to {MAX_RANK} dims; call contiguous() first"
        ),
    }
}

#[cfg(test)]
mod tests {
    //! The host-side layout logic of the CUDA primitives, checked on the CPU
    //! (the kernels themselves need a GPU: see tests/cuda_core.rs).
    use super::*;

    #[test]
    fn reduce_runs_match_the_cpu_sequence() {
        assert_eq!(reduce_runs(&[2, 3, 4, 5], &[]), vec![]);
        assert_eq!(reduce_runs(&[2, 3, 4, 5], &[3]), vec![(24, 5, 1)]);
        assert_eq!(reduce_runs(&[2, 3, 4, 5], &[0]), vec![(1, 2, 60)]);
        // Bias-gradient shape: [B, C, H, W] over {0, 2, 3}.
        assert_eq!(
            reduce_runs(&[2, 3, 4, 5], &[0, 2, 3]),
            vec![(6, 20, 1), (1, 2, 3)]
        );
        assert_eq!(reduce_runs(&[2, 3, 4, 5], &[0, 1, 2, 3]), vec![(1, 120, 1)]);
        assert_eq!(
            reduce_runs(&[2, 3, 4, 5], &[1, 3]),
            vec![(24, 5, 1), (2, 3, 4)]
        );
    }

    /// Applying the runs with the CPU block kernel gives the direct
    /// reduction, for every axis subset of a 4-D shape.
    #[test]
    fn reduce_runs_compute_the_reduction_over_any_axis_set() {
        use noisegrad_kernels::reduce::cpu::reduce;
        let shape = [3usize, 4, 2, 5];
        let n: usize = shape.iter().product();
        let x: Vec<f64> = (0..n).map(|v| ((v * 37) % 23) as f64).collect();
        for mask in 0u32..16 {
            let axes: Vec<usize> = (0..4).filter(|d| mask & (1 << d) != 0).collect();
            let mut cur = x.clone();
            for (outer, r, inner) in reduce_runs(&shape, &axes) {
                let mut out = vec![0f64; outer * inner];
                reduce(ReduceOp::Sum, &cur, outer, r, inner, &mut out);
                cur = out;
            }
            let kept: Vec<usize> = (0..4)
                .map(|d| if axes.contains(&d) { 1 } else { shape[d] })
                .collect();
            let mut want = vec![0f64; kept.iter().product()];
            for (flat, &v) in x.iter().enumerate() {
                let mut rest = flat;
                let mut idx = [0usize; 4];
                for d in (0..4).rev() {
                    idx[d] = rest % shape[d];
                    rest /= shape[d];
                }
                let mut o = 0;
                for d in 0..4 {
                    o = o * kept[d] + if axes.contains(&d) { 0 } else { idx[d] };
                }
                want[o] += v;
            }
            assert_eq!(cur, want, "axes {axes:?}");
        }
    }

    /// Whatever `mat_form` accepts addresses every element as the layout
    /// does, with a leading dimension cuBLAS accepts.
    #[test]
    fn mat_form_reads_exactly_the_layout() {
        let sizes = [1usize, 2, 3, 5];
        let strides = [0usize, 1, 2, 3, 5, 7];
        for &rows in &sizes {
            for &cols in &sizes {
                for &rs in &strides {
                    for &cs in &strides {
                        let Some((trans, ld)) = mat_form(rows, cols, rs, cs) else {
                            continue;
                        };
                        let stored_row = if trans { rows } else { cols };
                        assert!(ld >= stored_row.max(1), "{rows}x{cols} ({rs},{cs})");
                        for i in 0..rows {
                            for j in 0..cols {
                                let at = if trans { j * ld + i } else { i * ld + j };
                                assert_eq!(at, i * rs + j * cs, "{rows}x{cols} ({rs},{cs})");
                            }
                        }
                    }
                }
            }
        }
        // Contiguous, a `.t()` view, and a column slice need no copy.
        assert_eq!(mat_form(3, 5, 5, 1), Some((false, 5)));
        assert_eq!(mat_form(5, 3, 1, 5), Some((true, 5)));
        assert_eq!(mat_form(3, 2, 5, 1), Some((false, 5)));
        // A broadcast row is packed.
        assert_eq!(mat_form(3, 5, 0, 1), None);
    }

    #[test]
    fn batch_stride_accepts_exactly_one_stride_batches() {
        let check = |shape: &[usize], strides: &[usize]| {
            let got = batch_stride(shape, strides);
            if let Some(s) = got {
                let count: usize = shape.iter().product();
                for b in 0..count {
                    let (mut rest, mut off) = (b, 0);
                    for d in (0..shape.len()).rev() {
                        off += (rest % shape[d]) * strides[d];
                        rest /= shape[d];
                    }
                    assert_eq!(off, b * s, "{shape:?} {strides:?}");
                }
            }
            got
        };
        assert_eq!(check(&[], &[]), Some(0));
        assert_eq!(check(&[4], &[12]), Some(12));
        assert_eq!(check(&[2, 3], &[36, 12]), Some(12));
        assert_eq!(check(&[2, 1, 3], &[36, 99, 12]), Some(12));
        assert_eq!(check(&[2, 3], &[0, 0]), Some(0));
        // Partly broadcast, or a gap between batch axes: pack.
        assert_eq!(check(&[2, 3], &[0, 12]), None);
        assert_eq!(check(&[2, 3], &[12, 0]), None);
        assert_eq!(check(&[2, 3], &[48, 12]), None);
    }

    #[test]
    fn folding_a_batch_into_rows_addresses_the_same_elements() {
        let (m, k, batch) = (3usize, 4usize, 5usize);
        let a = MatOperand {
            ptr: 0,
            ld: k,
            trans: false,
            batch_stride: m * k,
        };
        let shared = MatOperand {
            ptr: 0,
            ld: 7,
            trans: false,
            batch_stride: 0,
        };
        let (m2, b2, a2) = fold_batch(a, shared, m, batch);
        assert_eq!((m2, b2, a2.batch_stride), (m * batch, 1, 0));
        for bi in 0..batch {
            for i in 0..m {
                // Row i of matrix bi is row bi·m + i of the folded one.
                assert_eq!(bi * a.batch_stride + i * a.ld, (bi * m + i) * a2.ld);
            }
        }
        // Not when B differs per matrix, A is transposed, or A has gaps.
        let per = MatOperand {
            batch_stride: 28,
            ..shared
        };
        assert_eq!(fold_batch(a, per, m, batch).1, batch);
        let at = MatOperand { trans: true, ..a };
        assert_eq!(fold_batch(at, shared, m, batch).1, batch);
        let gap = MatOperand {
            batch_stride: m * k + 1,
            ..a
        };
        assert_eq!(fold_batch(gap, shared, m, batch).1, batch);
    }
}
