//! A caching allocator for device memory, in the spirit of PyTorch's.
//!
//! `cuMemAlloc`/`cuMemFree` synchronize the device and cost tens of µs, so a
//! training step must not call them per op. Freed blocks go to a free list
//! keyed by their (rounded) size and are handed out again to the next request
//! of that size class. Because all work is queued on one stream, a block freed
//! by one op can be reused by the next op immediately: the stream runs them in
//! order. A U-Net step asks for the same sizes every time, so after the first
//! step every request is served from the cache.
//!
//! When the driver reports out-of-memory, the cache is released and the
//! request retried once; if it still fails, the error names the request and
//! what is in use.
//!
//! The pool is the same for a GPU and for the emulator: only getting memory
//! from the device and giving it back goes through the [`Backend`].

use super::backend::Backend;
use super::{CudaError, Result};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Requests are rounded up to a size class: multiples of 512 B below 1 MiB,
/// above that to a quarter of the request's power of two (≤ 25% waste, and
/// few distinct classes, so blocks are reused).
pub fn size_class(bytes: usize) -> usize {
    const SMALL: usize = 1 << 20;
    if bytes <= SMALL {
        return bytes.max(1).next_multiple_of(512);
    }
    let quantum = (bytes.next_power_of_two() / 8).max(512);
    bytes.next_multiple_of(quantum)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes of blocks handed out and not yet freed.
    pub in_use: usize,
    /// Highest `in_use` since start or [`Pool::reset_peak`].
    pub peak_in_use: usize,
    /// Bytes obtained from the driver (in use + cached).
    pub reserved: usize,
    /// Driver allocations made so far (steady state: no new ones).
    pub driver_allocs: usize,
}

#[derive(Default)]
struct State {
    free: BTreeMap<usize, Vec<u64>>,
    stats: PoolStats,
}

struct Inner {
    ordinal: usize,
    backend: Arc<dyn Backend>,
    state: Mutex<State>,
}

/// The pool of one device. Cloning shares it.
#[derive(Clone)]
pub struct Pool(Arc<Inner>);

impl Pool {
    pub(crate) fn new(ordinal: usize, backend: Arc<dyn Backend>) -> Pool {
        Pool(Arc::new(Inner {
            ordinal,
            backend,
            state: Mutex::new(State::default()),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer of `len` f32 (contents undefined).
    pub fn alloc(&self, len: usize) -> Result<DeviceBuffer> {
        if len == 0 {
            return Ok(DeviceBuffer {
                ptr: 0,
                len: 0,
                bytes: 0,
                pool: self.clone(),
            });
        }
        let bytes = size_class(len * 4);
        let cached = {
            let mut st = self.state();
            let ptr = st.free.get_mut(&bytes).and_then(Vec::pop);
            if ptr.is_some() {
                st.stats.in_use += bytes;
                st.stats.peak_in_use = st.stats.peak_in_use.max(st.stats.in_use);
            }
            ptr
        };
        let ptr = match cached {
            Some(p) => p,
            None => self.alloc_from_driver(bytes)?,
        };
        self.0.backend.handed_out(ptr, len * 4, bytes);
        Ok(DeviceBuffer {
            ptr,
            len,
            bytes,
            pool: self.clone(),
        })
    }

    fn alloc_from_driver(&self, bytes: usize) -> Result<u64> {
        let backend = &self.0.backend;
        let ptr = match backend.malloc(bytes)? {
            Some(p) => p,
            None => {
                let released = self.release_cached()?;
                backend
                    .malloc(bytes)?
                    .ok_or_else(|| self.oom(bytes, released))?
            }
        };
        let mut st = self.state();
        st.stats.in_use += bytes;
        st.stats.peak_in_use = st.stats.peak_in_use.max(st.stats.in_use);
        st.stats.reserved += bytes;
        st.stats.driver_allocs += 1;
        Ok(ptr)
    }

    fn oom(&self, requested: usize, cached: usize) -> CudaError {
        let (free, total) = self.0.backend.mem_info();
        CudaError::OutOfMemory {
            device: self.0.ordinal,
            requested,
            in_use: self.state().stats.in_use,
            cached,
            free,
            total,
        }
    }

    fn release(&self, ptr: u64, bytes: usize) {
        self.0.backend.taken_back(ptr);
        let mut st = self.state();
        st.stats.in_use -= bytes;
        st.free.entry(bytes).or_default().push(ptr);
    }

    /// Frees every cached block; returns the bytes released.
    fn release_cached(&self) -> Result<usize> {
        // Blocks in the cache may still be read by queued kernels.
        self.0.backend.synchronize()?;
        let mut st = self.state();
        let mut released = 0;
        for (bytes, ptrs) in std::mem::take(&mut st.free) {
            for p in ptrs {
                // SAFETY: `p` came from the backend's malloc(bytes) and
                // nothing uses it now.
                unsafe { self.0.backend.free(p, bytes) }?;
                released += bytes;
            }
        }
        st.stats.reserved -= released;
        Ok(released)
    }

    pub fn empty_cache(&self) -> Result<()> {
        self.release_cached().map(|_| ())
    }

    pub fn stats(&self) -> PoolStats {
        self.state().stats
    }

    /// Sets the peak to what is in use now, to measure one region.
    pub fn reset_peak(&self) {
        let mut st = self.state();
        st.stats.peak_in_use = st.stats.in_use;
    }
}

/// `len` f32 of device memory, returned to its pool on drop.
pub struct DeviceBuffer {
    ptr: u64,
    len: usize,
    bytes: usize,
    pool: Pool,
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceBuffer(cuda:{}, {} f32)",
            self.pool.0.ordinal, self.len
        )
    }
}

impl DeviceBuffer {
    /// The device address of element 0.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// The device address of element `i`.
    pub fn ptr_at(&self, i: usize) -> u64 {
        self.ptr + 4 * i as u64
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn ordinal(&self) -> usize {
        self.pool.0.ordinal
    }

    /// Queues a zero fill of the whole buffer.
    pub fn memset_zero(&self, dev: &super::CudaDevice) -> Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        dev.memset_zero(self.ptr, self.len * 4)
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.pool.release(self.ptr, self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_round_up_with_bounded_waste() {
        assert_eq!(size_class(1), 512);
        assert_eq!(size_class(512), 512);
        assert_eq!(size_class(513), 1024);
        assert_eq!(size_class(1 << 20), 1 << 20);
        for bytes in [(1 << 20) + 1, 3 << 20, 5_000_000, 33 << 20, 100_000_003] {
            let c = size_class(bytes);
            assert!(c >= bytes && c * 4 <= bytes * 5, "{bytes} -> {c}");
        }
    }
}
