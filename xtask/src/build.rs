//! Builds the hypervisor image with its embedded Root VM payload.
use crate::Result;
use std::path::PathBuf;

/// Which guest becomes the Root VM.
#[derive(Clone, Debug)]
pub enum RootVm {
    /// The Linux Root VM built from source (kernel + initramfs).
    Linux,
    /// Any guest image: an ELF, or a raw image with the RISC-V Linux `Image` header.
    File(PathBuf),
}

/// What goes into one hypervisor image.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// The Root VM.
    pub root_vm: RootVm,
    /// Root VM vCPU count; `None` = one per host hart.
    pub vcpus: Option<u32>,
    /// Root VM RAM in MiB; `None` = the default.
    pub ram_mib: Option<u32>,
    /// Kernel command line (for Linux guests).
    pub cmdline: Option<String>,
    /// Where to write the image.
    pub out: PathBuf,
}

/// Builds a hypervisor image and returns its path.
pub fn build_image(_opts: &ImageOptions) -> Result<PathBuf> {
    Err("not yet".into())
}

/// `cargo xtask build`: returns the path of the image written.
pub fn cmd_build(_args: &[String]) -> Result<PathBuf> {
    Err("not yet".into())
}

/// `cargo xtask run`.
pub fn cmd_run(_args: &[String]) -> Result<()> {
    Err("not yet".into())
}
