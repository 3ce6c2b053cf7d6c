//! What keeps a command from crashing, hanging or clobbering: the memory a
//! batch needs checked against the machine before it is allocated, an
//! exclusive lock on a run folder, and a quiet end on a closed pipe.

use super::io_err;
use noisegrad::diffusion::unet::UNetConfig;
use noisegrad::engine::error::human_bytes;
use noisegrad::engine::{Error, Result};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Used when /proc/meminfo cannot be read: 1 TiB, above any machine this
/// runs on, so only absurd sizes are refused.
const FALLBACK_MEMORY: u128 = 1 << 40;

/// The most memory this machine could ever give one process: MemTotal +
/// SwapTotal from /proc/meminfo (not MemAvailable, which page cache makes
/// look small), or [`FALLBACK_MEMORY`].
pub fn memory_limit() -> (u128, &'static str) {
    let field = |text: &str, key: &str| -> Option<u128> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        Some(line.split_whitespace().nth(1)?.parse::<u128>().ok()? * 1024)
    };
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    match (field(&text, "MemTotal:"), field(&text, "SwapTotal:")) {
        (Some(mem), swap) => (mem + swap.unwrap_or(0), "memory + swap"),
        (None, _) => (FALLBACK_MEMORY, "assumed memory"),
    }
}

/// Refuses a batch of `n` images of `c`×`size`×`size` that cannot fit on
/// this machine, naming `flag`. The count is a lower bound on what the
/// batch needs: the f32 images and the network's first feature map
/// (`width` channels at full resolution), which every forward pass holds.
pub fn check_batch_fits(flag: &str, n: usize, c: usize, size: usize, width: usize) -> Result<()> {
    let need = n as u128 * (c + width) as u128 * (size as u128).pow(2) * 4;
    let (limit, what) = memory_limit();
    if need > limit {
        return Err(Error::Config(format!(
            "{flag} {n} cannot fit: {n} images of {c}×{size}×{size} need at least {} (the batch \
             and its first feature map) but this machine has {} ({what})",
            human_bytes(need),
            human_bytes(limit),
        )));
    }
    Ok(())
}

/// [`check_batch_fits`] for a U-Net's input and first layer.
pub fn check_unet_batch_fits(flag: &str, n: usize, m: &UNetConfig) -> Result<()> {
    check_batch_fits(flag, n, m.in_channels, m.image_size, m.ch)
}

/// An exclusive `flock` on `<out>/.lock`, held until the process exits, so
/// two trainers cannot share a run folder (they would race on the
/// checkpoint's temporary file and interleave their logs). The file keeps
/// the holder's PID for the message the second one prints. The kernel
/// drops the lock when its holder exits, however it exits, so a lock file
/// left by a dead process never blocks.
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    pub fn acquire(out: &Path) -> Result<RunLock> {
        let path = out.join(".lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        // SAFETY: flock on a descriptor this function owns; no memory is shared.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::WouldBlock {
                return Err(io_err(&path, format!("cannot lock the run folder: {err}")));
            }
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(Error::Config(format!(
                "--out {}: another noisegrad run (PID {}) is using this folder; wait for it to \
                 finish, stop it, or choose another --out",
                out.display(),
                pid.trim()
            )));
        }
        let write_pid = |f: &mut std::fs::File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            writeln!(f, "{}", std::process::id())?;
            f.flush()
        };
        write_pid(&mut file).map_err(|e| io_err(&path, e))?;
        Ok(RunLock { _file: file })
    }
}

/// Restores SIGPIPE's default action (Rust ignores it, so a write to a
/// closed pipe becomes an error that `println!` turns into a panic): with
/// it, `noisegrad info … | head -1` ends quietly when `head` exits, as
/// other command-line tools do.
pub fn default_sigpipe() {
    // SAFETY: sets the disposition of one signal to the default, before
    // any other thread exists; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
