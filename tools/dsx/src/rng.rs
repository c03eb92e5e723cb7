//! virtio-rng (virtio 1.2, section 5.4): the entropy device. One queue of
//! device-writable buffers, filled from this VM's `getrandom(2)`.

use diosix_abi::{limits, DeviceSpec};

use crate::backend::VirtioDevice;
use crate::hv::DeviceDecl;
use crate::virtq::{ChildMem, Desc, QueueError};

/// The virtio device ID of an entropy source.
pub const DEVICE_ID: u32 = 4;
/// QueueNumMax of its one queue.
pub const QUEUE_MAX: u32 = 64;
/// Most bytes one request gets, whatever its buffers offer (one CHILD_MEM_WRITE's
/// worth): a request asks for *up to* its buffers' length, and the used length says
/// how much came.
pub const REQUEST_MAX: usize = limits::CHILD_MEM_MAX;

/// Where the bytes come from.
pub type Source = Box<dyn FnMut(&mut [u8]) -> std::io::Result<()>>;

/// The entropy device.
pub struct Rng {
    fill: Source,
    buf: Vec<u8>,
}

impl Rng {
    /// An entropy device fed by `getrandom(2)`.
    pub fn new() -> Rng {
        Rng::with_source(Box::new(getrandom))
    }

    /// An entropy device fed by `fill` (tests).
    pub fn with_source(fill: Source) -> Rng {
        Rng {
            fill,
            buf: Vec::new(),
        }
    }
}

/// Fills `buf` from the kernel's random pool (waiting, at boot, until it is ready).
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a live, exclusively borrowed buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_id(&self) -> u32 {
        DEVICE_ID
    }

    fn name(&self) -> &'static str {
        "rng"
    }

    fn decl(&self) -> DeviceDecl {
        DeviceDecl {
            spec: DeviceSpec {
                size: DeviceSpec::SIZE as u32,
                device_id: DEVICE_ID,
                features: 0,
                queue_count: 1,
                queue_max: QUEUE_MAX,
                ..DeviceSpec::default()
            },
            config: Vec::new(),
        }
    }

    /// Fills the chain's device-writable buffers in order, `REQUEST_MAX` bytes at
    /// most in all (device-readable ones, which a driver should not send, are
    /// skipped).
    fn serve_queue(
        &mut self,
        _queue: usize,
        chain: &[Desc],
        mem: &mut dyn ChildMem,
    ) -> Result<u32, QueueError> {
        let mut total = 0usize;
        for d in chain.iter().filter(|d| d.writable()) {
            let n = (d.len as usize).min(REQUEST_MAX - total);
            if n == 0 {
                continue;
            }
            self.buf.resize(n, 0);
            (self.fill)(&mut self.buf)
                .map_err(|e| QueueError::Device(format!("getrandom: {e}")))?;
            mem.write(d.addr, &self.buf)?;
            total += n;
        }
        Ok(total as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getrandom_fills() {
        let mut a = [0u8; 64];
        getrandom(&mut a).unwrap();
        let mut b = [0u8; 64];
        getrandom(&mut b).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn declares_one_queue_of_entropy() {
        let d = Rng::new().decl();
        assert_eq!(
            (
                d.spec.device_id,
                d.spec.queue_count,
                d.spec.queue_max,
                d.spec.features
            ),
            (4, 1, 64, 0)
        );
        assert!(d.config.is_empty());
    }
}
