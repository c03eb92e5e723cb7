//! `dsx`: manage Diosix VMs from the Root VM's shell, through `/dev/diosix` (the
//! `diosix.ko` driver in `rootvm/driver/`). See `docs/dsx.md`.
//!
//! Layers, so that all but the ioctls and the terminal run under `cargo test` on the
//! build host: [`cli`] parses, [`commands`] carries out a command through the
//! [`hv::Hypervisor`] trait and [`format`](mod@format) words the output and errors; [`dev`] is the
//! trait over the real device and [`console`] the interactive console. [`backend`]
//! serves children's virtio devices (`dsx backend`, which `dsx run --disk/--net/--rng`
//! starts), walking their queues with [`virtq`]; [`blk`] is the block device, [`net`]
//! the network card (on a TAP on this VM's bridge, one network per level of the tree:
//! [`net::Subnet`]) and [`rng`] the entropy device; [`nat`] makes this VM its
//! children's router (forwarding and nftables rules over netlink); [`fwd`] relays a
//! child's port forwards (`dsx run --net --forward`) in the same backend.

mod backend;
mod blk;
mod cli;
mod commands;
mod console;
mod dev;
mod format;
mod fwd;
mod hv;
mod nat;
mod net;
mod rng;
mod virtq;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cli::Command;
use commands::{Ctx, Failure, Names};
use format::Op;

/// Exit status for arguments dsx does not accept (1 is for refused or failed calls).
const USAGE_STATUS: u8 = 2;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            let verb = e.verb.map(|v| format!(" {v}")).unwrap_or_default();
            eprintln!("dsx{verb}: {}", e.message);
            eprintln!("Try `dsx{verb} --help`.");
            return ExitCode::from(USAGE_STATUS);
        }
    };
    if let Command::Help(verb) = cmd {
        let text = verb
            .and_then(cli::verb_help)
            .map(|h| format!("{h}\n"))
            .unwrap_or_else(cli::general_help);
        print!("{text}");
        return ExitCode::SUCCESS;
    }
    match run(&cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let _ = std::io::stdout().flush();
            eprintln!("dsx: {}", f.message);
            ExitCode::from(f.status)
        }
    }
}

fn run(cmd: &Command) -> Result<(), Failure> {
    let mut run_dir = backend::RunDir::new(backend::RUN_DIR);
    if let Command::Backend { cid, devices } = cmd {
        return backend::serve(*cid, devices, &run_dir).map_err(|message| Failure {
            message: format!("backend of CID {cid}: {message}"),
            status: 1,
        });
    }
    let mut device = dev::Device::open().map_err(commands::fail(Op::Open))?;
    let mut names = Names::load(Some(PathBuf::from(commands::NAMES_PATH)));
    if let Command::Console(child) = cmd {
        let cid = commands::resolve(&mut device, &names, child)?;
        return console::attach(&mut device, cid);
    }
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let (mut out, mut err) = (stdout.lock(), stderr.lock());
    let read_file = |p: &str| std::fs::read(p);
    let mut cx = Ctx {
        hv: &mut device,
        out: &mut out,
        err: &mut err,
        names: &mut names,
        backends: &mut run_dir,
        read_file: &read_file,
        poll_interval: Duration::from_millis(100),
        max_polls: None,
    };
    commands::execute(cmd, &mut cx)
}
