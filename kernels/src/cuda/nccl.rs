//! NCCL collectives on device buffers (feature `nccl`): one communicator
//! per process, one process per GPU, as PyTorch's `ProcessGroupNCCL`.
//!
//! cudarc loads libnccl at run time (`dynamic-loading`), so building this
//! needs neither NCCL nor CUDA; [`is_available`] says whether the library
//! is there. Collectives are queued on the device's one stream (the one
//! every kernel uses), so they run after the backward pass that produced
//! the gradients and before the optimizer that reads them, with no events
//! and no host wait. The raw `result` API is used rather than cudarc's
//! `Comm`, because buffers here are raw pool pointers, not `CudaSlice`s.
//!
//! The CUDA emulator has no stream and no NCCL: a communicator on it is
//! refused with an error saying so.

use super::device::CudaDevice;
use super::{CudaError, Result};
use cudarc::nccl::result;
use cudarc::nccl::sys;
use std::sync::Arc;

/// Bytes of an NCCL unique id (`ncclUniqueId`), what rank 0 hands the others.
pub const ID_BYTES: usize = 128;

/// Whether libnccl can be loaded (cudarc panics on first use otherwise).
pub fn is_available() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { sys::is_culib_present() }
}

fn nccl_err(op: &'static str) -> impl Fn(result::NcclError) -> CudaError {
    move |e| CudaError::Nccl {
        op,
        msg: format!("{:?}", e.0),
    }
}

/// The library, or an error naming it.
fn check_available() -> Result<()> {
    match is_available() {
        true => Ok(()),
        false => Err(CudaError::NotAvailable(
            "libnccl (NVIDIA's collective library) was not found: install NCCL, and \
             put a folder holding `libnccl.so` on LD_LIBRARY_PATH (cudarc does not look for \
             `libnccl.so.2`, the only name the nvidia-nccl wheels ship: link it as libnccl.so)"
                .into(),
        )),
    }
}

/// Whether NCCL can run on `dev` (a GPU, not the emulator); cheap, so a
/// caller can refuse before any rank makes or waits for an id.
pub fn check_device(dev: &CudaDevice) -> Result<()> {
    stream_of(dev).map(|_| ())
}

/// A fresh unique id (on rank 0; the others receive it).
pub fn unique_id() -> Result<[u8; ID_BYTES]> {
    check_available()?;
    let id = result::get_uniqueid().map_err(nccl_err("get unique id"))?;
    Ok(id.internal.map(|c| c as u8))
}

/// The element type of a collective.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    F64,
}

impl Elem {
    fn nccl(self) -> sys::ncclDataType_t {
        match self {
            Elem::F32 => sys::ncclDataType_t::ncclFloat32,
            Elem::F64 => sys::ncclDataType_t::ncclFloat64,
        }
    }
}

/// How an all-reduce combines the ranks' values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    /// The sum divided by the world size (NCCL ≥ 2.10's `ncclAvg`).
    Avg,
}

/// A device range: its address and its number of elements.
#[derive(Clone, Copy, Debug)]
pub struct Range {
    pub ptr: u64,
    pub len: usize,
}

/// This process's member of an NCCL communicator, on one GPU.
pub struct NcclComm {
    comm: sys::ncclComm_t,
    dev: Arc<CudaDevice>,
    rank: usize,
    world_size: usize,
}

impl NcclComm {
    /// Joins the communicator named by `id` as `rank` of `world_size`, on
    /// `dev`. Blocks until every rank has joined (NCCL's own bootstrap over
    /// TCP, from the address inside the id).
    pub fn init(
        dev: Arc<CudaDevice>,
        rank: usize,
        world_size: usize,
        id: [u8; ID_BYTES],
    ) -> Result<NcclComm> {
        check_available()?;
        stream_of(&dev)?;
        let id = sys::ncclUniqueId {
            internal: id.map(|b| b as std::ffi::c_char),
        };
        let mut comm = std::mem::MaybeUninit::uninit();
        // SAFETY: `comm` is written by NCCL before it is read; the device's
        // context is current (stream_of bound it), so NCCL picks its GPU.
        let comm = unsafe {
            result::comm_init_rank(comm.as_mut_ptr(), world_size as i32, id, rank as i32)
                .map_err(nccl_err("init communicator"))?;
            comm.assume_init()
        };
        Ok(NcclComm {
            comm,
            dev,
            rank,
            world_size,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.dev
    }

    /// Queues an in-place all-reduce of every range (f32), as one NCCL
    /// group so that the library fuses them. Returns without waiting.
    ///
    /// # Safety
    /// Every range lies inside a live buffer of this device, and stays
    /// live until the stream has run the collective (pool buffers are
    /// reused in stream order, so a buffer freed afterwards is safe).
    pub unsafe fn all_reduce_in_place(&self, ranges: &[Range], op: Reduce) -> Result<()> {
        let stream = stream_of(&self.dev)?;
        let op = match op {
            Reduce::Sum => sys::ncclRedOp_t::ncclSum,
            Reduce::Avg => sys::ncclRedOp_t::ncclAvg,
        };
        self.grouped(ranges, |r| {
            // SAFETY: as the caller promises for `r`.
            unsafe {
                result::all_reduce(
                    r.ptr as _,
                    r.ptr as _,
                    r.len,
                    Elem::F32.nccl(),
                    op,
                    self.comm,
                    stream as _,
                )
            }
            .map(|_| ())
            .map_err(nccl_err("all-reduce"))
        })
    }

    /// Queues an in-place broadcast of every range (f32) from `root`.
    ///
    /// # Safety
    /// As [`NcclComm::all_reduce_in_place`].
    pub unsafe fn broadcast_in_place(&self, ranges: &[Range], root: usize) -> Result<()> {
        let stream = stream_of(&self.dev)?;
        self.grouped(ranges, |r| {
            // SAFETY: as the caller promises for `r`.
            unsafe {
                result::broadcast(
                    r.ptr as _,
                    r.ptr as _,
                    r.len,
                    Elem::F32.nccl(),
                    root as i32,
                    self.comm,
                    stream as _,
                )
            }
            .map(|_| ())
            .map_err(nccl_err("broadcast"))
        })
    }

    /// Sums host f64 values over the ranks (through a device buffer; waits
    /// for the result, and so for all queued work).
    pub fn all_reduce_host_f64(&self, values: &mut [f64]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let stream = stream_of(&self.dev)?;
        // A DeviceBuffer counts 4-byte words: an f64 takes two.
        let buf = self.dev.alloc(values.len() * 2)?;
        // SAFETY: f64 values seen as their bytes, and back.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(values.as_mut_ptr() as *mut u8, values.len() * 8)
        };
        self.dev.backend().upload(bytes, buf.ptr())?;
        // SAFETY: `buf` holds `values.len()` f64 and lives past the download,
        // which waits for the collective.
        unsafe {
            result::all_reduce(
                buf.ptr() as _,
                buf.ptr() as _,
                values.len(),
                Elem::F64.nccl(),
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                stream as _,
            )
        }
        .map_err(nccl_err("all-reduce (host values)"))?;
        self.dev.backend().download(buf.ptr(), bytes)
    }

    /// Runs `each` on every range between ncclGroupStart and ncclGroupEnd
    /// (the group is closed even when one call fails).
    fn grouped(&self, ranges: &[Range], each: impl Fn(&Range) -> Result<()>) -> Result<()> {
        let ranges: Vec<&Range> = ranges.iter().filter(|r| r.len > 0).collect();
        if ranges.is_empty() {
            return Ok(());
        }
        result::group_start().map_err(nccl_err("group start"))?;
        let queued = ranges.iter().try_for_each(|r| each(r));
        let ended = result::group_end().map_err(nccl_err("group end"));
        queued.and(ended.map(|_| ()))
    }

    /// Aborts the communicator (pending collectives on other ranks fail
    /// instead of waiting forever); used when this process stops on an error.
    pub fn abort(&self) {
        // SAFETY: the handle is valid; nothing uses it afterwards (the
        // process exits).
        let _ = unsafe { result::comm_abort(self.comm) };
    }
}

impl Drop for NcclComm {
    /// Waits for queued collectives, then frees the communicator.
    fn drop(&mut self) {
        let _ = self.dev.synchronize();
        // SAFETY: the handle is valid and no longer used.
        let _ = unsafe { result::comm_destroy(self.comm) };
    }
}

/// The device's stream (its context made current), or an error for the
/// emulator.
fn stream_of(dev: &CudaDevice) -> Result<cudarc::driver::sys::CUstream> {
    dev.backend().nccl_stream()?.ok_or_else(|| {
        CudaError::NotAvailable(format!(
            "NCCL needs a GPU, and cuda:{} is the {} (the CUDA emulator cannot run NCCL)",
            dev.ordinal(),
            dev.name()
        ))
    })
}
