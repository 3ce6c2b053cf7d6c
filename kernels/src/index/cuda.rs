//! Launchers for `index.cu`: index_select along an axis and its adjoint,
//! index_add into zeros, on contiguous `[outer, dim, inner]` tensors.
//!
//! Indices travel as a u32 buffer ([`CudaDevice::upload_u32`]). index_add
//! is deterministic: instead of atomics, the host sorts the positions by id
//! ([`index_csr`]) and each output element sums its own sources in order.

use crate::cuda::abi::Arg;
use crate::cuda::{CudaDevice, CudaError, DeviceBuffer, Result, grid_1d};

const MODULE: &str = "index";

fn too_large(what: &str, v: usize) -> CudaError {
    CudaError::Driver {
        op: "index",
        msg: format!("{what} = {v} does not fit the kernels' 32-bit indices"),
    }
}

fn check_ids(ids: &[usize], dim: usize) -> Result<()> {
    match ids.iter().find(|&&i| i >= dim) {
        Some(&bad) => Err(CudaError::Driver {
            op: "index",
            msg: format!("index {bad} out of range for an axis of size {dim}"),
        }),
        None => Ok(()),
    }
}

/// `y[o, j, i] = x[o, ids[j], i]`: `x` is the contiguous `[outer, dim,
/// inner]` tensor at device address `x`; a new `[outer, ids.len(), inner]`
/// buffer. Every id must be `< dim`.
pub fn index_select(
    dev: &CudaDevice,
    x: u64,
    (outer, dim, inner): (usize, usize, usize),
    ids: &[usize],
) -> Result<DeviceBuffer> {
    check_ids(ids, dim)?;
    let n = outer * ids.len() * inner;
    let y = dev.alloc(n)?;
    if n == 0 {
        return Ok(y);
    }
    let ids32 = ids
        .iter()
        .map(|&i| u32::try_from(i).map_err(|_| too_large("index", i)))
        .collect::<Result<Vec<u32>>>()?;
    let ids_buf = dev.upload_u32(&ids32)?;
    dev.launch(
        MODULE,
        "index_select",
        grid_1d(dev, n),
        &[
            Arg::Ptr(x),
            Arg::Ptr(ids_buf.ptr()),
            Arg::Ptr(y.ptr()),
            Arg::I64(ids.len() as i64),
            Arg::I64(dim as i64),
            Arg::I64(inner as i64),
            Arg::I64(n as i64),
        ],
    )?;
    Ok(y)
}

/// The positions `j` grouped by `ids[j]` (a counting sort, stable): returns
/// `[starts (dim + 1 words) | js (ids.len() words)]`, where the `j` with
/// `ids[j] == d` are `js[starts[d]..starts[d + 1]]` in increasing order.
/// `None` when an id is `>= dim` or a count does not fit u32.
pub fn index_csr(ids: &[usize], dim: usize) -> Option<Vec<u32>> {
    if ids.len() > u32::MAX as usize || dim >= u32::MAX as usize {
        return None;
    }
    let mut starts = vec![0u32; dim + 1];
    for &id in ids {
        if id >= dim {
            return None;
        }
        starts[id + 1] += 1;
    }
    for d in 0..dim {
        starts[d + 1] += starts[d];
    }
    let mut next = starts.clone();
    let mut js = vec![0u32; ids.len()];
    for (j, &id) in ids.iter().enumerate() {
        js[next[id] as usize] = j as u32;
        next[id] += 1;
    }
    starts.extend(js);
    Some(starts)
}

/// `y[o, d, i] = Σ_{j: ids[j] = d} src[o, j, i]`: the contiguous
/// `[outer, ids.len(), inner]` tensor at device address `src` added into a
/// new zero `[outer, dim, inner]` buffer. Repeated ids accumulate in
/// increasing `j`, as on the CPU.
pub fn index_add_zeros(
    dev: &CudaDevice,
    src: u64,
    (outer, dim, inner): (usize, usize, usize),
    ids: &[usize],
) -> Result<DeviceBuffer> {
    check_ids(ids, dim)?;
    let n = outer * dim * inner;
    let y = dev.alloc(n)?;
    if n == 0 {
        return Ok(y);
    }
    let csr = index_csr(ids, dim).ok_or_else(|| too_large("index count", ids.len().max(dim)))?;
    let csr_buf = dev.upload_u32(&csr)?;
    dev.launch(
        MODULE,
        "index_add_csr",
        grid_1d(dev, n),
        &[
            Arg::Ptr(src),
            Arg::Ptr(csr_buf.ptr()),
            Arg::Ptr(csr_buf.ptr_at(dim + 1)),
            Arg::Ptr(y.ptr()),
            Arg::I64(ids.len() as i64),
            Arg::I64(dim as i64),
            Arg::I64(inner as i64),
            Arg::I64(n as i64),
        ],
    )?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::index_csr;

    /// `index_add_csr` as its doc comment states it, run on the host.
    fn add_with_csr(
        csr: &[u32],
        src: &[f32],
        (outer, dim, inner): (usize, usize, usize),
        nids: usize,
    ) -> Vec<f32> {
        let (starts, js) = csr.split_at(dim + 1);
        let mut y = vec![0f32; outer * dim * inner];
        for (t, out) in y.iter_mut().enumerate() {
            let (q, i) = (t / inner, t % inner);
            let (o, d) = (q / dim, q % dim);
            let mut acc = 0f32;
            for u in starts[d]..starts[d + 1] {
                acc += src[(o * nids + js[u as usize] as usize) * inner + i];
            }
            *out = acc;
        }
        y
    }

    #[test]
    fn csr_groups_positions_by_id_in_order_and_matches_the_cpu_index_add() {
        let ids = [3usize, 0, 3, 3, 1, 0];
        let csr = index_csr(&ids, 5).unwrap();
        assert_eq!(&csr[..6], &[0, 2, 3, 3, 6, 6]);
        assert_eq!(&csr[6..], &[1, 5, 4, 0, 2, 3]);
        let shape = (2, 5, 3);
        let src: Vec<f32> = (0..2 * ids.len() * 3)
            .map(|v| (v as f32 * 0.37).sin() * 1e3)
            .collect();
        let mut want = vec![0f32; 2 * 5 * 3];
        crate::index::cpu::index_add(&mut want, 2, 5, 3, &ids, &src);
        // Bit for bit: same additions in the same order.
        assert_eq!(add_with_csr(&csr, &src, shape, ids.len()), want);
    }

    #[test]
    fn csr_refuses_out_of_range_ids() {
        assert!(index_csr(&[0, 2], 2).is_none());
        assert_eq!(index_csr(&[], 2).unwrap(), vec![0, 0, 0]);
    }
}
