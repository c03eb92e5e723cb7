//! GDB for the hypervisor and its Root VM in one debugging session (docs/debugging.md).
//!
//! - `cargo xtask run --gdb` (and `cargo xtask test --gdb CASE`) start QEMU halted (`-S`)
//!   with its GDB stub on `127.0.0.1` at a free TCP port ([`Stub`]), and record where
//!   in `target/gdb/session` ([`announce`]);
//! - `cargo xtask gdb` ([`cmd_gdb`]) writes a GDB script with the symbols of the image
//!   QEMU runs ([`Symbols`]) and attaches `gdb-multiarch` with it;
//! - the `gdb-linux-smp2` test case ([`run_case`]) drives the same script in batch mode.
//!
//! Where the symbols go. QEMU's GDB stub shows one thread per hart and reads memory
//! through the selected hart's current translation (for a VS-mode hart, its VS-stage
//! and then the hypervisor's G-stage table), and it stops at a breakpoint address
//! whatever mode the hart is in. So one flat address space holds:
//! - the hypervisor at its link addresses (M-mode, no translation: HPAs);
//! - the Root VM's `vmlinux` at its link addresses (`0xffffffff8...`): Linux with its
//!   MMU on, from `start_kernel` on;
//! - the same `vmlinux` again, moved to where the hypervisor loads the kernel in guest
//!   physical memory: Linux before its MMU is on (`_start`, `setup_vm`).
//!
//! Guest-physical and host-physical addresses overlap (guest RAM starts at GPA
//! 0x8000_0000, as the host's does). No hypervisor code lies under the Linux kernel's
//! guest-physical range, only uninitialised areas (its heap), so the copy of the
//! hypervisor ELF GDB reads has those sections no longer marked as loaded
//! ([`hypervisor_symbols`]): otherwise GDB would name a Linux address by the heap.
use crate::qemu::{self, QemuOptions};
use crate::{workspace_root, Result};
use diosix_core::addr::{Gpa, Range};
use diosix_core::loader::{self, ImageFormat};
use diosix_core::payload::{self, Payload};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The GDB that debugs RISC-V from any host (Debian's `gdb-multiarch`, which
/// `cargo xtask setup` installs).
pub const GDB: &str = "gdb-multiarch";

/// The GDB stub's port when it is free (QEMU's `-s` uses it); else the next free one.
const PREFERRED_PORT: u16 = 1234;

/// Where a VM's RAM starts in guest physical memory under the H extension
/// (`GUEST_RAM_BASE` in `hypervisor/src/vm.rs`; the Root VM's Linux is loaded 2 MiB
/// above it). In PMP mode (harts without H) RAM sits at its host address instead.
const GUEST_RAM_BASE: u64 = 0x8000_0000;

/// A generous guest RAM size for planning where the kernel goes: only the start of RAM
/// decides its place.
const PLAN_RAM_BYTES: u64 = 1 << 30;

/// How long `cargo xtask test --gdb` lets a case run: it waits for the debugger.
pub const DEBUG_SESSION_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// QEMU's GDB stub for one run: TCP on the loopback address only, at a free port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stub {
    /// The TCP port on `127.0.0.1`.
    pub port: u16,
}

impl Stub {
    /// A stub on [`PREFERRED_PORT`], or the next free port above it.
    pub fn new() -> Result<Self> {
        Ok(Self {
            port: qemu::free_port(PREFERRED_PORT)?,
        })
    }

    /// QEMU's arguments: halted at reset (`-S`) until GDB continues it, the stub on
    /// `127.0.0.1` only (not every interface, as `-s` would).
    pub fn qemu_args(&self) -> Vec<String> {
        vec![
            "-S".into(),
            "-gdb".into(),
            format!("tcp:127.0.0.1:{}", self.port),
        ]
    }

    /// What GDB's `target remote` takes.
    pub fn remote(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// The directory of the scripts and symbol files xtask writes for GDB.
fn gdb_dir() -> PathBuf {
    workspace_root().join("target").join("gdb")
}

/// The last `run --gdb` or `test --gdb`: the stub's address and the image QEMU runs.
fn session_file() -> PathBuf {
    gdb_dir().join("session")
}

/// A run's entry in `target/gdb/session`, removed when dropped (once the run's QEMU
/// has ended) unless a later run has replaced it, so `cargo xtask gdb` never attaches
/// with the symbols of another image.
pub struct Session {
    text: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        if std::fs::read_to_string(session_file()).is_ok_and(|t| t == self.text) {
            let _ = std::fs::remove_file(session_file());
        }
    }
}

/// Records the stub and image of a run about to start (for `cargo xtask gdb`) and
/// prints how to attach. Keep the [`Session`] until QEMU has ended.
pub fn announce(stub: &Stub, image: &Path) -> Result<Session> {
    let dir = gdb_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let image = std::path::absolute(image).map_err(|e| format!("{}: {e}", image.display()))?;
    let text = format!("remote {}\nimage {}\n", stub.remote(), image.display());
    std::fs::write(session_file(), &text)
        .map_err(|e| format!("writing {}: {e}", session_file().display()))?;
    println!(
        "xtask: --gdb: QEMU starts halted, its GDB stub on {}; attach from another \
         terminal in this checkout with\n\
         xtask:     cargo xtask gdb\n\
         xtask: (with the symbols of what QEMU runs; `continue` starts the machine; \
         docs/debugging.md)",
        stub.remote()
    );
    Ok(Session { text })
}

/// Reads what [`announce`] recorded: (remote, image).
fn read_session() -> Option<(String, PathBuf)> {
    let text = std::fs::read_to_string(session_file()).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map(str::to_string)
    };
    Some((field("remote")?, PathBuf::from(field("image")?)))
}

/// A little-endian field of `N` bytes at `at`, if `bytes` has it.
fn le<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn u16_at(b: &[u8], at: usize) -> Result<u16> {
    le(b, at)
        .map(u16::from_le_bytes)
        .ok_or_else(|| "truncated ELF file".to_string())
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    le(b, at)
        .map(u32::from_le_bytes)
        .ok_or_else(|| "truncated ELF file".to_string())
}

fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    le(b, at)
        .map(u64::from_le_bytes)
        .ok_or_else(|| "truncated ELF file".to_string())
}

/// ELF `e_type` of a position-independent executable.
const ET_DYN: u16 = 3;
const PT_LOAD: u32 = 1;
const SHT_NOBITS: u32 = 8;
const SHF_ALLOC: u64 = 2;

/// One `PT_LOAD` program header of an ELF64 file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LoadSegment {
    offset: u64,
    vaddr: u64,
    paddr: u64,
    filesz: u64,
}

fn is_elf64_le(b: &[u8]) -> bool {
    b.len() >= 64 && b.starts_with(b"\x7fELF") && b[4] == 2 && b[5] == 1
}

/// The `PT_LOAD` segments of a little-endian ELF64 file.
fn load_segments(elf: &[u8]) -> Result<Vec<LoadSegment>> {
    if !is_elf64_le(elf) {
        return Err("not a little-endian ELF64 file".into());
    }
    let phoff = u64_at(elf, 0x20)? as usize;
    let phentsize = u16_at(elf, 0x36)? as usize;
    let mut segments = Vec::new();
    for i in 0..u16_at(elf, 0x38)? as usize {
        let ph = phoff + i * phentsize;
        if u32_at(elf, ph)? == PT_LOAD {
            segments.push(LoadSegment {
                offset: u64_at(elf, ph + 0x08)?,
                vaddr: u64_at(elf, ph + 0x10)?,
                paddr: u64_at(elf, ph + 0x18)?,
                filesz: u64_at(elf, ph + 0x20)?,
            });
        }
    }
    Ok(segments)
}

/// The Root VM payload `cargo xtask build` appended to a hypervisor image: the bytes of
/// the `PT_LOAD` segment that starts with the payload magic.
fn payload_bytes(image: &[u8]) -> Result<Option<&[u8]>> {
    if !is_elf64_le(image) {
        return Ok(None);
    }
    for s in load_segments(image)? {
        let start = s.offset as usize;
        let bytes = image
            .get(start..start.saturating_add(s.filesz as usize))
            .ok_or("a PT_LOAD segment lies past the end of the image")?;
        if bytes.starts_with(&payload::MAGIC) {
            return Ok(Some(bytes));
        }
    }
    Ok(None)
}

/// One symbol file for GDB's `add-symbol-file FILE -o OFFSET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolFile {
    /// The ELF file with the symbols.
    pub path: PathBuf,
    /// Added to each of its addresses (wrapping, as GDB's are).
    pub offset: u64,
    /// What this copy is for, as a comment in the script.
    pub why: String,
}

/// Every symbol file of one image, and what is missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Symbols {
    /// The hypervisor ELF GDB loads with `file` (none for an OpenSBI run).
    pub hypervisor: Option<PathBuf>,
    /// The Root VM kernel's symbols.
    pub guest: Vec<SymbolFile>,
    /// Why a guest has no symbols, to print.
    pub notes: Vec<String>,
}

/// Where the loader puts a kernel in a VM's RAM.
struct Placement {
    /// The kernel's format.
    format: ImageFormat,
    /// Its lowest guest physical address.
    gpa: u64,
    /// Every guest physical range it occupies, `[start, end)`.
    ranges: Vec<(u64, u64)>,
}

/// Where the loader puts `kernel` in a VM's RAM starting at [`GUEST_RAM_BASE`].
fn kernel_gpa(kernel: &[u8]) -> Result<Placement> {
    let ram = Range::new(Gpa::new(GUEST_RAM_BASE), PLAN_RAM_BYTES).expect("a fixed range");
    let plan = loader::plan(kernel, ram).map_err(|e| format!("the Root VM kernel: {e}"))?;
    let first = plan
        .segments
        .first()
        .ok_or("the Root VM kernel loads nothing")?;
    let ranges = plan
        .segments
        .iter()
        .map(|s| (s.gpa.raw(), s.gpa.raw() + s.mem_size))
        .collect();
    Ok(Placement {
        format: plan.format,
        gpa: first.gpa.raw(),
        ranges,
    })
}

/// The `vmlinux` built with this `Image` (byte for byte) in the Root VM cache
/// (`<cache>/linux-<key>/vmlinux`, next to `arch/riscv/boot/Image`).
fn vmlinux_for(image: &[u8]) -> Option<PathBuf> {
    let dirs = std::fs::read_dir(crate::rootvm::cache_dir()).ok()?;
    dirs.flatten()
        .map(|e| e.path())
        .filter(|d| {
            d.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-") && !n.contains(".tmp."))
        })
        .find(|d| {
            let built = d.join("arch/riscv/boot/Image");
            std::fs::metadata(&built).is_ok_and(|m| m.len() == image.len() as u64)
                && std::fs::read(&built).is_ok_and(|b| b == image)
                && d.join("vmlinux").is_file()
        })
        .map(|d| d.join("vmlinux"))
}

/// The symbol files of a guest kernel loaded as `kernel` (a Linux `Image` or an ELF):
/// written next to `out_stem` when the symbols are inside the image itself.
fn guest_symbols(kernel: &[u8], out_stem: &Path, symbols: &mut Symbols) -> Result<Vec<(u64, u64)>> {
    let Placement {
        format,
        gpa,
        ranges,
    } = kernel_gpa(kernel)?;
    let (file, link_base, copy_at_link) = match format {
        ImageFormat::LinuxImage => {
            let Some(vmlinux) = vmlinux_for(kernel) else {
                symbols.notes.push(format!(
                    "no vmlinux for the Root VM's kernel in {} (built elsewhere?): \
                     hypervisor symbols only",
                    crate::rootvm::cache_dir().display()
                ));
                return Ok(ranges);
            };
            let elf = std::fs::read(&vmlinux).map_err(|e| format!("{}: {e}", vmlinux.display()))?;
            // The Image is vmlinux from its lowest loaded address on.
            let base = load_segments(&elf)?.iter().map(|s| s.vaddr).min();
            (vmlinux, base.ok_or("vmlinux loads nothing")?, true)
        }
        ImageFormat::Elf => {
            // Embedded whole, symbols (if it has any) and all.
            let path = out_stem.with_extension("rootvm.elf");
            std::fs::write(&path, kernel)
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            let segments = load_segments(kernel)?;
            let lowest = segments
                .iter()
                .min_by_key(|s| s.paddr)
                .ok_or("the Root VM ELF loads nothing")?;
            if u16_at(kernel, 0x10)? == ET_DYN {
                // Moved as one to the start of RAM: only the placed copy means anything.
                let base = segments.iter().map(|s| s.vaddr).min().unwrap_or(0);
                (path, base, false)
            } else {
                (path, lowest.vaddr, lowest.vaddr != lowest.paddr)
            }
        }
    };
    if copy_at_link {
        symbols.guest.push(SymbolFile {
            path: file.clone(),
            offset: 0,
            why: "at its link (virtual) addresses: the kernel with its MMU on".into(),
        });
    }
    symbols.guest.push(SymbolFile {
        path: file,
        offset: gpa.wrapping_sub(link_base),
        why: format!(
            "at the guest physical addresses it is loaded at (from GPA {gpa:#x}){}",
            if copy_at_link {
                ": the kernel before its MMU is on"
            } else {
                ""
            }
        ),
    });
    Ok(ranges)
}

/// The hypervisor ELF as GDB gets it ([`hypervisor_symbols`]).
struct HypervisorSymbols {
    /// The ELF file to write.
    elf: Vec<u8>,
    /// Sections no longer marked as loaded.
    unmapped: Vec<String>,
    /// Sections with contents (code, data) under the guest kernel's addresses: then
    /// nothing is changed, and the guest's symbols are better left out.
    clashing: Vec<String>,
}

/// A copy of the hypervisor ELF `elf` for GDB, its `NOBITS` sections that overlap
/// `guest_ranges` (guest physical addresses the Root VM's kernel occupies) marked as
/// not loaded, so GDB names those addresses by the kernel's symbols. Only
/// uninitialised areas (heap, stacks) may overlap so: no hypervisor code runs there.
fn hypervisor_symbols(elf: &[u8], guest_ranges: &[(u64, u64)]) -> Result<HypervisorSymbols> {
    let mut out = HypervisorSymbols {
        elf: elf.to_vec(),
        unmapped: Vec::new(),
        clashing: Vec::new(),
    };
    let shoff = u64_at(elf, 0x28)? as usize;
    let shentsize = u16_at(elf, 0x3a)? as usize;
    let shnum = u16_at(elf, 0x3c)? as usize;
    let names = shoff + u16_at(elf, 0x3e)? as usize * shentsize;
    let names_at = u64_at(elf, names + 0x18)? as usize;
    let mut unmap = Vec::new();
    for i in 0..shnum {
        let sh = shoff + i * shentsize;
        let (kind, flags) = (u32_at(elf, sh + 4)?, u64_at(elf, sh + 8)?);
        let (addr, size) = (u64_at(elf, sh + 0x10)?, u64_at(elf, sh + 0x20)?);
        let overlaps = guest_ranges
            .iter()
            .any(|&(start, end)| addr < end && start < addr.saturating_add(size));
        if flags & SHF_ALLOC == 0 || !overlaps {
            continue;
        }
        let name = names_at + u32_at(elf, sh)? as usize;
        let len = elf
            .get(name..)
            .and_then(|n| n.iter().position(|&b| b == 0))
            .ok_or("bad section name table")?;
        let name = String::from_utf8_lossy(&elf[name..name + len]).into_owned();
        if kind == SHT_NOBITS {
            unmap.push((sh, flags));
            out.unmapped.push(name);
        } else {
            out.clashing.push(name);
        }
    }
    if out.clashing.is_empty() {
        for (sh, flags) in unmap {
            out.elf[sh + 8..sh + 16].copy_from_slice(&(flags & !SHF_ALLOC).to_le_bytes());
        }
    } else {
        out.unmapped.clear();
    }
    Ok(out)
}

/// The symbol files for `image`: a Diosix image (hypervisor ELF with the Root VM
/// payload), or a kernel booted without Diosix (`run --opensbi`). Files are written
/// under `target/gdb/`, named after `name`.
pub fn symbols(image: &Path, name: &str) -> Result<Symbols> {
    let bytes = std::fs::read(image).map_err(|e| format!("reading {}: {e}", image.display()))?;
    let dir = gdb_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let stem = dir.join(name);
    let mut symbols = Symbols::default();
    match payload_bytes(&bytes)? {
        Some(p) => {
            let payload = Payload::parse(p).map_err(|e| format!("{}: {e:?}", image.display()))?;
            let ranges = guest_symbols(payload.kernel, &stem, &mut symbols)?;
            let hv = hypervisor_symbols(&bytes, &ranges)?;
            if !hv.unmapped.is_empty() {
                symbols.notes.push(format!(
                    "hypervisor sections {} share guest-physical addresses with the Root \
                     VM's kernel: left out of GDB's address map",
                    hv.unmapped.join(", ")
                ));
            }
            if !hv.clashing.is_empty() {
                // A test guest at the start of guest RAM lies where the hypervisor's own
                // code is in host memory: one flat address space cannot name both.
                let load: Vec<String> = symbols
                    .guest
                    .drain(..)
                    .map(|f| format!("add-symbol-file {} -o {:#x}", f.path.display(), f.offset))
                    .collect();
                symbols.notes.push(format!(
                    "the Root VM's kernel lies at guest-physical addresses where the \
                     hypervisor's {} are in host memory: its symbols are not loaded (to \
                     load them anyway: {})",
                    hv.clashing.join(", "),
                    load.join("; ")
                ));
            }
            let path = stem.with_extension("hv.elf");
            std::fs::write(&path, hv.elf)
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            symbols.hypervisor = Some(path);
        }
        // A kernel on its own (OpenSBI loads it as the hypervisor would).
        None => {
            guest_symbols(&bytes, &stem, &mut symbols)?;
        }
    }
    Ok(symbols)
}

/// `path` as one GDB command argument.
fn gdb_path(path: &Path) -> String {
    let p = path.display().to_string();
    if p.contains(char::is_whitespace) {
        format!("\"{p}\"")
    } else {
        p
    }
}

/// The GDB commands that read hypervisor state: physical memory on, the per-hart
/// table, physical memory off. Rust expressions (the hypervisor's own types), printed
/// from convenience variables in C (GDB's Rust parser takes no argument lists).
const HELPER_COMMANDS: &str = r#"
define diosix-physical-memory
  pipe maint packet Qqemu.PhyMemMode:1 | cat >/dev/null
  maint flush dcache
end
document diosix-physical-memory
Reads and writes go to physical memory (host addresses: the hypervisor's
variables) whatever the selected hart's mode, until diosix-current-memory.
end

define diosix-current-memory
  pipe maint packet Qqemu.PhyMemMode:0 | cat >/dev/null
  maint flush dcache
end
document diosix-current-memory
Reads and writes go through the selected hart's translation again (GDB's
default): a VS-mode hart's guest virtual addresses, an M-mode hart's host ones.
end

define diosix-harts
  diosix-physical-memory
  set language rust
  set $diosix_slots = sizeof(diosix::hart::SHARED) / sizeof(diosix::hart::SHARED[0])
  set $diosix_slot = 0
  while $diosix_slot < $diosix_slots
    set language rust
    set $diosix_online = diosix::hart::SHARED[$diosix_slot].online.v.value
    if $diosix_online != 0
      set $diosix_hart = diosix::hart::SHARED[$diosix_slot].hart_id.v.value
      set $diosix_vcpu = *(&diosix::hart::LOCALS[$diosix_slot].0.current as *const u64)
      if $diosix_vcpu != 0
        set $diosix_vmid = diosix::hart::LOCALS[$diosix_slot].0.current.0.vm.ptr.pointer.data.vmid
        set $diosix_index = diosix::hart::LOCALS[$diosix_slot].0.current.0.shared.ptr.pointer.data.index
      end
      set language auto
      printf "slot %d: hart %d (gdb thread %d): ", $diosix_slot, $diosix_hart, $diosix_hart + 1
      if $diosix_vcpu != 0
        printf "VMID %d, vCPU %d\n", $diosix_vmid, $diosix_index
      else
        printf "no vCPU\n"
      end
    end
    set $diosix_slot = $diosix_slot + 1
  end
  set language auto
  diosix-current-memory
end
document diosix-harts
Which vCPU each hart runs, from the hypervisor's per-hart state (hart::LOCALS):
slot, hart ID, GDB thread (QEMU's thread N is hart N-1), the VM's VMID (as the
hypervisor's log names VMs) and the vCPU's index in its VM.
end
"#;

/// The GDB script that loads `symbols` and, given `remote`, attaches to QEMU there.
pub fn script(symbols: &Symbols, remote: Option<&str>) -> String {
    let mut s = String::from(
        "# Written by `cargo xtask gdb` (xtask/src/gdb.rs); see docs/debugging.md.\n\
         set confirm off\n",
    );
    if let Some(hv) = &symbols.hypervisor {
        let _ = writeln!(s, "# The hypervisor (M-mode, host physical addresses).");
        let _ = writeln!(s, "file {}", gdb_path(hv));
    } else {
        let _ = writeln!(s, "set architecture riscv:rv64");
    }
    for f in &symbols.guest {
        let _ = writeln!(s, "# The Root VM's kernel {}.", f.why);
        let _ = match f.offset {
            0 => writeln!(s, "add-symbol-file {}", gdb_path(&f.path)),
            o => writeln!(s, "add-symbol-file {} -o {o:#x}", gdb_path(&f.path)),
        };
    }
    // The hypervisor's sources, named relative to the checkout.
    let _ = writeln!(s, "directory {}", gdb_path(&workspace_root()));
    // Code is read from the files: a hart in M-mode reads host memory where the
    // kernel's guest-physical copy is, so GDB would place a breakpoint after a
    // prologue it read from the hypervisor's heap. (Linux's run-time code patches do
    // not show; `set trust-readonly-sections off` reads a VS-mode hart's live code.)
    s.push_str("set trust-readonly-sections on\n");
    if symbols.hypervisor.is_some() {
        s.push_str(HELPER_COMMANDS);
    }
    if let Some(r) = remote {
        let _ = writeln!(s, "target remote {r}");
    }
    s.push_str("set confirm on\n");
    s
}

/// `cargo xtask gdb --help`.
const GDB_USAGE: &str = "\
usage: cargo xtask gdb [--image FILE] [--remote HOST:PORT] [-- GDB-ARGS...]
Attaches gdb-multiarch to the QEMU that `cargo xtask run --gdb` (or `cargo xtask test
--gdb CASE`) started, with the symbols of the hypervisor and of the Root VM's kernel
(its vmlinux from the Root VM cache, at its virtual and its guest physical addresses).
The script it runs is written to target/gdb/diosix.gdb. See docs/debugging.md.
  --image FILE        the image QEMU runs (default: the one the last --gdb run named)
  --remote HOST:PORT  QEMU's GDB stub (default: the last --gdb run's)
  -- GDB-ARGS         passed on to gdb-multiarch (e.g. -batch -ex 'info threads')";

/// `cargo xtask gdb`: see [`GDB_USAGE`].
pub fn cmd_gdb(args: &[String]) -> Result<()> {
    let (mut image, mut remote, mut gdb_args) = (None, None, Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value\n{GDB_USAGE}"))
        };
        match a.as_str() {
            "--help" | "-h" => {
                println!("{GDB_USAGE}");
                return Ok(());
            }
            "--image" => image = Some(PathBuf::from(val()?)),
            "--remote" => remote = Some(val()?),
            "--" => gdb_args.extend(it.by_ref().cloned()),
            o => return Err(format!("unknown option `{o}`\n{GDB_USAGE}")),
        }
    }
    let session = read_session();
    let remote = remote.or_else(|| session.as_ref().map(|(r, _)| r.clone()));
    let image = image
        .or_else(|| session.map(|(_, i)| i))
        .unwrap_or_else(|| workspace_root().join("target").join("diosix.elf"));
    let Some(remote) = remote else {
        return Err(
            "no QEMU to attach to: start one with `cargo xtask run --gdb` (or give \
             --remote HOST:PORT)"
                .into(),
        );
    };
    crate::setup::ensure_all()?;
    let symbols = symbols(&image, "diosix")?;
    for n in &symbols.notes {
        println!("xtask: gdb: {n}");
    }
    let path = gdb_dir().join("diosix.gdb");
    std::fs::write(&path, script(&symbols, Some(&remote)))
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    println!(
        "xtask: gdb: {} on {remote}, symbols of {} (script {})",
        GDB,
        image.display(),
        path.display()
    );
    let status = crate::process::status(
        Command::new(GDB)
            .current_dir(workspace_root())
            .arg("-q")
            .arg("-x")
            .arg(&path)
            .args(&gdb_args),
    )?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{GDB} exited with {status}"))
    }
}

/// The test's GDB commands, run after the symbol script has attached: both breakpoints
/// set, then one `continue`; each breakpoint's commands report what the test checks,
/// disable it and continue until both have been hit (in whichever order they are).
/// `kernel_map` (the kernel's `struct kernel_mapping`, no debug info in the Root VM's
/// kernel) has `phys_addr` at byte 24 in Linux 6.12: a value the guest wrote through its
/// own page tables, read back through two-stage translation.
const TEST_COMMANDS: &str = r#"
set pagination off
set confirm off
set $diosix_hits = 0
break diosix_trap_handler
commands
  printf "[gdb-test] trap handler on thread %d\n", $_thread
  bt
  printf "[gdb-test] trap handler priv %d\n", $priv
  disable 1
  set $diosix_hits = $diosix_hits + 1
  if $diosix_hits < 2
    continue
  end
end
break start_kernel
commands
  printf "[gdb-test] start_kernel on thread %d\n", $_thread
  bt
  printf "[gdb-test] start_kernel priv %d\n", $priv
  # C casts: the kernel has no debug info, so GDB's automatic language would stay
  # whatever the last frame with some had (the hypervisor's Rust).
  set language c
  x/s (char *)&linux_banner
  printf "[gdb-test] kernel_map.phys_addr %#lx\n", {unsigned long}((unsigned long)&kernel_map + 24)
  set language auto
  diosix-harts
  disable 2
  set $diosix_hits = $diosix_hits + 1
  if $diosix_hits < 2
    continue
  end
end
continue
printf "[gdb-test] both hit\n"
info threads
kill
"#;

/// The text from `marker` to the next `[gdb-test]` line (or the end).
fn section<'a>(out: &'a str, marker: &str) -> Option<&'a str> {
    let at = out.find(marker)?;
    let rest = &out[at + marker.len()..];
    Some(&rest[..rest.find("[gdb-test]").unwrap_or(rest.len())])
}

/// The word after the first `marker` in `out`.
fn word_after<'a>(out: &'a str, marker: &str) -> Option<&'a str> {
    let at = out.find(marker)? + marker.len();
    out[at..].split_whitespace().next()
}

/// The thread number after `marker` (`... on thread N`).
fn thread_after(out: &str, marker: &str) -> Option<u32> {
    word_after(out, marker)?.parse().ok()
}

/// What the test's GDB output must show; the reasons it does not.
fn judge(out: &str) -> Vec<String> {
    let mut why = Vec::new();
    let mut need = |ok: bool, what: &str| {
        if !ok {
            why.push(what.to_string());
        }
    };
    let trap = section(out, "[gdb-test] trap handler on thread").unwrap_or("");
    need(
        trap.contains("diosix::trap::diosix_trap_handler ("),
        "no `diosix::trap::diosix_trap_handler` frame in the trap handler's backtrace",
    );
    // The trap entry is the outermost frame: its call-frame information ends the
    // backtrace there, without an unwinding error.
    need(
        trap.trim_end().ends_with("in diosix_trap_entry ()"),
        "the trap handler's backtrace does not end at `diosix_trap_entry`",
    );
    need(
        word_after(out, "[gdb-test] trap handler priv") == Some("3"),
        "the trap handler's hart is not in M-mode (priv 3)",
    );
    let start = section(out, "[gdb-test] start_kernel on thread").unwrap_or("");
    need(
        start.contains("in start_kernel ()") && start.contains("in _start_kernel ()"),
        "no `start_kernel` <- `_start_kernel` backtrace",
    );
    need(
        word_after(out, "[gdb-test] start_kernel priv") == Some("5"),
        "the hart at start_kernel is not in VS-mode (priv 5: S with V=1)",
    );
    need(
        out.contains("<linux_banner>:\t\"Linux version 6."),
        "linux_banner not read through the guest's translation",
    );
    need(
        out.contains("[gdb-test] kernel_map.phys_addr 0x80200000"),
        "kernel_map.phys_addr is not the kernel's load GPA 0x80200000",
    );
    let vcpu0 = thread_after(out, "[gdb-test] start_kernel on thread")
        .map(|t| format!("(gdb thread {t}): VMID 1, vCPU 0"));
    need(
        vcpu0.is_some_and(|l| out.contains(&l)),
        "diosix-harts does not show the Root VM's (VMID 1) vCPU 0 on start_kernel's hart",
    );
    need(
        out.contains("[gdb-test] both hit"),
        "not both breakpoints hit",
    );
    why
}

/// Runs `cmd` with its output in `log` for at most `timeout` (then kills it); returns
/// the output.
fn run_logged_with_timeout(cmd: &mut Command, log: &Path, timeout: Duration) -> Result<String> {
    let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = file
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run {GDB}: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                // Stopping the process we started, by its handle.
                let _ = child.kill();
                let _ = child.wait();
                let out = std::fs::read_to_string(log).unwrap_or_default();
                return Err(format!(
                    "{GDB} timed out after {} s (log {}); last output:\n{}",
                    timeout.as_secs(),
                    log.display(),
                    qemu::tail(&out, 15)
                ));
            }
        }
    }
    std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))
}

/// The `gdb-*` test case: boots `image` (the Linux Root VM image) halted with the GDB
/// stub, runs GDB in batch mode with the symbol script and [`TEST_COMMANDS`], and checks
/// its output ([`judge`]). Returns a line with what was seen.
pub fn run_case(
    name: &str,
    image: &Path,
    smp: u32,
    mem_mib: u32,
    timeout: Duration,
) -> Result<String> {
    let stub = Stub::new()?;
    let symbols = symbols(image, name)?;
    let dir = gdb_dir();
    let script_path = dir.join(format!("{name}.gdb"));
    let mut text = script(&symbols, Some(&stub.remote()));
    text.push_str(TEST_COMMANDS);
    std::fs::write(&script_path, text)
        .map_err(|e| format!("writing {}: {e}", script_path.display()))?;
    let mut q = QemuOptions::new(name, image.to_path_buf());
    q.smp = smp;
    q.mem_mib = mem_mib;
    q.timeout = timeout;
    q.extra.extend(stub.qemu_args());
    // QEMU waits halted for GDB; `kill` at the end of the commands ends it.
    let qemu = std::thread::spawn(move || qemu::run(&q));
    let logs = workspace_root().join("target").join("test-logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let log = logs.join(format!("{name}.gdb.log"));
    // GDB retries the connection while QEMU starts listening (`tcp auto-retry`).
    let gdb = run_logged_with_timeout(
        Command::new(GDB)
            .current_dir(workspace_root())
            .args(["-q", "-nx", "-batch", "-x"])
            .arg(&script_path),
        &log,
        timeout,
    );
    let console = qemu
        .join()
        .map_err(|_| "the QEMU thread panicked".to_string())?;
    let out = gdb?;
    let mut why = judge(&out);
    match console {
        Ok(c) if c.output.contains("panicked") => {
            why.push(format!("the hypervisor panicked (log {})", c.log.display()))
        }
        Ok(_) => {}
        Err(e) => why.push(format!("QEMU: {e}")),
    }
    if !why.is_empty() {
        return Err(format!(
            "{} (gdb log {})\n{}",
            why.join("; "),
            log.display(),
            qemu::tail(&out, 25)
        ));
    }
    Ok(format!(
        "{name}: diosix_trap_handler hit on thread {}, start_kernel on thread {} (VS-mode, \
         vCPU 0 of VMID 1), both with backtraces (gdb log {})",
        thread_after(&out, "[gdb-test] trap handler on thread").unwrap_or(0),
        thread_after(&out, "[gdb-test] start_kernel on thread").unwrap_or(0),
        log.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with `phnum` program headers right after it.
    fn elf_with_segments(e_type: u16, segments: &[(u64, u64, u64, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56 * segments.len()];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x10..0x12].copy_from_slice(&e_type.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        for (i, &(offset, vaddr, paddr, filesz)) in segments.iter().enumerate() {
            let ph = 64 + 56 * i;
            b[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            b[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
            b[ph + 0x10..ph + 0x18].copy_from_slice(&vaddr.to_le_bytes());
            b[ph + 0x18..ph + 0x20].copy_from_slice(&paddr.to_le_bytes());
            b[ph + 0x20..ph + 0x28].copy_from_slice(&filesz.to_le_bytes());
        }
        b
    }

    #[test]
    fn finds_the_payload_segment() {
        let mut image = elf_with_segments(2, &[(0, 0x8000_0000, 0x8000_0000, 64), (200, 1, 1, 16)]);
        image.resize(216, 0);
        assert_eq!(payload_bytes(&image).unwrap(), None);
        image[200..208].copy_from_slice(&payload::MAGIC);
        assert_eq!(payload_bytes(&image).unwrap().map(<[u8]>::len), Some(16));
        assert_eq!(payload_bytes(b"not an ELF").unwrap(), None);
    }

    #[test]
    fn clears_alloc_only_on_overlapping_nobits() {
        // Sections: null, .text (PROGBITS at 0x8000_0000), .heap (NOBITS over the
        // kernel's GPAs), .bss (NOBITS below them), .shstrtab.
        let names = b"\0.text\0.heap\0.bss\0.shstrtab\0";
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        let names_at = b.len();
        b.extend_from_slice(names);
        let shoff = b.len();
        let sections: [(u32, u32, u64, u64, u64, u64); 5] = [
            (0, 0, 0, 0, 0, 0),
            (1, 1, SHF_ALLOC, 0x8000_0000, 0, 0x30_0000),
            (7, SHT_NOBITS, SHF_ALLOC | 1, 0x8010_0000, 0, 0x100_0000),
            (13, SHT_NOBITS, SHF_ALLOC | 1, 0x8005_0000, 0, 0x1000),
            (18, 3, 0, 0, names_at as u64, names.len() as u64),
        ];
        for (name, kind, flags, addr, offset, size) in sections {
            let mut sh = vec![0u8; 64];
            sh[..4].copy_from_slice(&name.to_le_bytes());
            sh[4..8].copy_from_slice(&kind.to_le_bytes());
            sh[8..16].copy_from_slice(&flags.to_le_bytes());
            sh[0x10..0x18].copy_from_slice(&addr.to_le_bytes());
            sh[0x18..0x20].copy_from_slice(&offset.to_le_bytes());
            sh[0x20..0x28].copy_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&sh);
        }
        b[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        b[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        b[0x3c..0x3e].copy_from_slice(&5u16.to_le_bytes());
        b[0x3e..0x40].copy_from_slice(&4u16.to_le_bytes());
        let hv = hypervisor_symbols(&b, &[(0x8030_0000, 0x8060_0000)]).unwrap();
        assert_eq!(
            (hv.unmapped, hv.clashing.len()),
            (vec![".heap".to_string()], 0)
        );
        let flags = |i: usize| u64_at(&hv.elf, shoff + i * 64 + 8).unwrap();
        assert_eq!(flags(2), 1, ".heap keeps its other flags");
        assert_eq!(flags(1), SHF_ALLOC, ".text lies below the kernel: kept");
        assert_eq!(flags(3), SHF_ALLOC | 1, ".bss lies below the kernel: kept");
        // A guest over the hypervisor's code: nothing changes, the clash is reported.
        let hv = hypervisor_symbols(&b, &[(0x8000_0000, 0x8060_0000)]).unwrap();
        assert_eq!(hv.clashing, [".text"]);
        assert!(hv.unmapped.is_empty() && hv.elf == b);
    }

    #[test]
    fn linux_image_goes_2_mib_into_ram() {
        // A Linux `Image` header: text_offset 2 MiB, image size 4 MiB.
        let mut image = vec![0u8; 0x1000];
        image[0x08..0x10].copy_from_slice(&0x20_0000u64.to_le_bytes());
        image[0x10..0x18].copy_from_slice(&0x40_0000u64.to_le_bytes());
        image[0x30..0x38].copy_from_slice(&loader::IMAGE_MAGIC);
        image[0x38..0x3c].copy_from_slice(&loader::IMAGE_MAGIC2);
        let p = kernel_gpa(&image).unwrap();
        assert_eq!((p.format, p.gpa), (ImageFormat::LinuxImage, 0x8020_0000));
        assert_eq!(p.ranges, [(0x8020_0000, 0x8060_0000)]);
        // vmlinux links its first byte at 0xffffffff80000000: the offset GDB adds.
        assert_eq!(p.gpa.wrapping_sub(0xffff_ffff_8000_0000), 0x1_0020_0000);
    }

    #[test]
    fn script_loads_both_copies_and_attaches() {
        let symbols = Symbols {
            hypervisor: Some("/t/diosix.hv.elf".into()),
            guest: vec![
                SymbolFile {
                    path: "/c/vmlinux".into(),
                    offset: 0,
                    why: "virtual".into(),
                },
                SymbolFile {
                    path: "/c/vmlinux".into(),
                    offset: 0x1_0020_0000,
                    why: "physical".into(),
                },
            ],
            notes: vec![],
        };
        let s = script(&symbols, Some("127.0.0.1:1234"));
        assert!(s.contains("file /t/diosix.hv.elf\n"));
        assert!(s.contains("add-symbol-file /c/vmlinux\n"));
        assert!(s.contains("add-symbol-file /c/vmlinux -o 0x100200000\n"));
        assert!(s.contains("define diosix-harts"));
        assert!(s.find("define diosix-harts") < s.find("target remote 127.0.0.1:1234\n"));
        let opensbi = script(
            &Symbols {
                hypervisor: None,
                ..symbols
            },
            None,
        );
        assert!(opensbi.contains("set architecture riscv:rv64"));
        assert!(!opensbi.contains("diosix-harts") && !opensbi.contains("target remote"));
    }

    #[test]
    fn stub_listens_on_loopback_only() {
        let stub = Stub { port: 4321 };
        assert_eq!(stub.qemu_args(), ["-S", "-gdb", "tcp:127.0.0.1:4321"]);
        assert_eq!(stub.remote(), "127.0.0.1:4321");
    }

    #[test]
    fn judges_gdb_output() {
        let good = "\
[gdb-test] trap handler on thread 2
#5  diosix::trap::diosix_trap_handler (frame=0x80059ad8) at hypervisor/src/trap.rs:60
#6  0x0000000080000110 in diosix_trap_entry ()
[gdb-test] trap handler priv 3
[gdb-test] start_kernel on thread 1
#0  0xffffffff80232b38 in start_kernel ()
#1  0xffffffff800001a0 in _start_kernel ()
Backtrace stopped: frame did not save the PC
[gdb-test] start_kernel priv 5
0xffffffff8029b570 <linux_banner>:\t\"Linux version 6.12.117\"
[gdb-test] kernel_map.phys_addr 0x80200000
slot 0: hart 0 (gdb thread 1): VMID 1, vCPU 0
slot 1: hart 1 (gdb thread 2): no vCPU
[gdb-test] both hit
";
        assert_eq!(judge(good), Vec::<String>::new());
        let wrong_hart = good.replace("start_kernel on thread 1", "start_kernel on thread 2");
        assert_eq!(judge(&wrong_hart).len(), 1);
        let no_trap = good.replace("diosix::trap::diosix_trap_handler", "other");
        assert_eq!(judge(&no_trap).len(), 1);
        assert!(judge("").len() > 5);
    }
}
