//! The Root VM's programs, each built from its verified source tarball with the cross
//! compiler: Linux (`tinyconfig` + `rootvm/linux.config`, checked after `olddefconfig`),
//! static busybox (`rootvm/busybox.config`) and static Lua. Each is kept in the cache
//! under a key over its source's hash, its configuration and the compiler, and its
//! make output goes to a log under `<cache>/logs/`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::cache::{cache_dir, cache_key, commit, fresh_tmp};
use super::sources::{extract, fetch_source, Source};
use super::util::{fmt_duration, need_tools, read_text, write_file};
use super::{step, BUILD_EPOCH, BUILD_TZ, CROSS, FORMAT_VERSION, STEPS};
use crate::{process, Result};

/// Make targets for the kernel: `modules` too, so the tree has `Module.symvers` and
/// `modpost` for building out-of-tree modules against it later.
const LINUX_TARGETS: &[&str] = &["Image", "modules"];

/// Lua's own makefile target without readline or dlopen (neither exists in a static
/// binary), and the overrides that make it cross-compile and link statically.
const LUA_MAKE_ARGS: &[&str] = &[
    "posix",
    "CC=riscv64-linux-gnu-gcc -std=gnu99",
    "AR=riscv64-linux-gnu-ar rcu",
    "RANLIB=riscv64-linux-gnu-ranlib",
    "MYLDFLAGS=-static",
];

/// Builds Linux (or finds it cached) and returns the built source tree.
pub(super) fn build_linux(src: &Source, gcc_version: &str, repo: &Path) -> Result<PathBuf> {
    let what = format!("linux {}", src.upstream_version());
    let fragment = read_text(&repo.join("linux.config"))?;
    let tz = format!("TZ={BUILD_TZ}");
    let key = cache_key(&[
        FORMAT_VERSION,
        "linux",
        &src.sha256,
        &fragment,
        gcc_version,
        &LINUX_TARGETS.join(" "),
        &tz,
    ]);
    let out = cache_dir().join(format!("linux-{key}"));
    if out.join("arch/riscv/boot/Image").is_file() {
        println!("[rootvm] {what}: cached (step 2/{STEPS})");
        return Ok(out);
    }
    step(2, &format!("building {what}"));
    let started = Instant::now();
    need_tools(
        &format!("building {what}"),
        &["make", "gcc", "bc", "bison", "flex", "perl", "tar", "xz"],
    )?;
    let tarball = fetch_source(src)?;
    let tmp = fresh_tmp(&out)?;
    println!("[rootvm]   extracting {}", src.file);
    extract(&tarball, &tmp)?;

    let make = |args: &[&str]| {
        let mut cmd = Command::new("make");
        cmd.arg("-C")
            .arg(&tmp)
            .arg("ARCH=riscv")
            .arg(format!("CROSS_COMPILE={CROSS}"))
            .args(args)
            // Fixed build identity, so the same inputs give the same `uname -v`
            // (`#1 SMP 1970-01-01`, `diosix@diosix`) on any machine, at any time. The
            // `#1` is what a fresh tree counts (KBUILD_BUILD_VERSION is left unset: it
            // would change the banner the first link pass writes). Nothing in this
            // configuration reads SOURCE_DATE_EPOCH; it is set so that nothing can
            // read the clock instead.
            .env("KBUILD_BUILD_USER", "diosix")
            .env("KBUILD_BUILD_HOST", "diosix")
            .env("KBUILD_BUILD_TIMESTAMP", "1970-01-01")
            .env("SOURCE_DATE_EPOCH", BUILD_EPOCH)
            // The built-in initramfs's cpio takes its mtimes from
            // KBUILD_BUILD_TIMESTAMP read in the local time zone: west of UTC that
            // is a later time (other bytes), east of it before 1970, which
            // gen_init_cpio refuses. `cargo xtask repro` found it.
            .env("TZ", BUILD_TZ)
            .env("LC_ALL", "C");
        cmd
    };
    println!("[rootvm]   configuring: tinyconfig + rootvm/linux.config");
    run_logged(
        &format!("{what}: make tinyconfig"),
        &mut make(&["tinyconfig"]),
        "linux-config",
        None,
    )?;
    // Appending the fragment and running olddefconfig is what merge_config.sh does; doing
    // it directly avoids depending on that script's output format.
    let config_path = tmp.join(".config");
    let mut config = read_text(&config_path)?;
    config.push('\n');
    config.push_str(&fragment);
    write_file(&config_path, config.as_bytes())?;
    run_logged(
        &format!("{what}: make olddefconfig"),
        &mut make(&["olddefconfig"]),
        "linux-config",
        None,
    )?;
    check_config(
        &read_text(&config_path)?,
        &fragment,
        "rootvm/linux.config",
        &what,
    )?;

    let jobs = format!("-j{}", jobs());
    let mut args = vec![jobs.as_str()];
    args.extend_from_slice(LINUX_TARGETS);
    run_logged(
        &format!("{what}: make {}", LINUX_TARGETS.join(" ")),
        &mut make(&args),
        "linux-build",
        Some(("linux", 960)),
    )?;
    commit(&tmp, &out)?;
    println!(
        "[rootvm] {what} built in {}",
        fmt_duration(started.elapsed())
    );
    Ok(out)
}

/// What the busybox step produces: the binary and the list of its applets' paths.
pub(super) struct Busybox {
    pub(super) binary: PathBuf,
    pub(super) links: PathBuf,
}

/// Builds static busybox (or finds it cached).
pub(super) fn build_busybox(src: &Source, gcc_version: &str, repo: &Path) -> Result<Busybox> {
    let what = format!("busybox {}", src.upstream_version());
    let config = read_text(&repo.join("busybox.config"))?;
    let epoch = format!("SOURCE_DATE_EPOCH={BUILD_EPOCH} TZ={BUILD_TZ}");
    let key = cache_key(&[
        FORMAT_VERSION,
        "busybox",
        &src.sha256,
        &config,
        gcc_version,
        &epoch,
    ]);
    let out = cache_dir().join(format!("busybox-{key}"));
    let result = Busybox {
        binary: out.join("busybox"),
        links: out.join("busybox.links"),
    };
    if result.binary.is_file() && result.links.is_file() {
        println!("[rootvm] {what}: cached (step 3/{STEPS})");
        return Ok(result);
    }
    step(3, &format!("building {what} (static)"));
    let started = Instant::now();
    need_tools(
        &format!("building {what}"),
        &["make", "gcc", "tar", "bzip2"],
    )?;
    let tarball = fetch_source(src)?;
    let tmp = fresh_tmp(&out)?;
    let tree = tmp.join("src");
    extract(&tarball, &tree)?;
    // busybox.config is a complete .config, so busybox's implicit oldconfig asks nothing.
    write_file(&tree.join(".config"), config.as_bytes())?;
    let make = |target: &str| {
        let mut cmd = Command::new("make");
        cmd.arg("-C")
            .arg(&tree)
            .arg(format!("-j{}", jobs()))
            .arg(format!("CROSS_COMPILE={CROSS}"))
            .arg(target)
            // Busybox's kconfig puts the build's date in its banner (`busybox
            // --help`, every applet's usage): the fixed one, not today's. It means
            // it in UTC, but a ctime() call overwrites the gmtime() result with
            // local time before it is printed: hence TZ too (`repro --full` found it).
            .env("SOURCE_DATE_EPOCH", BUILD_EPOCH)
            .env("TZ", BUILD_TZ)
            .env("LC_ALL", "C");
        cmd
    };
    run_logged(
        &format!("{what}: make busybox"),
        &mut make("busybox"),
        "busybox-build",
        Some(("busybox", 640)),
    )?;
    // Separately: busybox.links needs headers the first make generates, and busybox's
    // makefile does not order the two targets in one parallel run.
    run_logged(
        &format!("{what}: make busybox.links"),
        &mut make("busybox.links"),
        "busybox-build",
        None,
    )?;
    check_config(
        &read_text(&tree.join(".config"))?,
        &config,
        "rootvm/busybox.config",
        &what,
    )?;
    for name in ["busybox", "busybox.links"] {
        fs::rename(tree.join(name), tmp.join(name))
            .map_err(|e| format!("{what}: cannot move {name} out of the build tree: {e}"))?;
    }
    // Only the two outputs are kept; the object files are not worth the space.
    fs::remove_dir_all(&tree).map_err(|e| format!("cannot remove {}: {e}", tree.display()))?;
    commit(&tmp, &out)?;
    println!(
        "[rootvm] {what} built in {}",
        fmt_duration(started.elapsed())
    );
    Ok(result)
}

/// Builds static Lua (or finds it cached) and returns the stripped `lua` binary.
pub(super) fn build_lua(src: &Source, gcc_version: &str) -> Result<PathBuf> {
    let what = format!("lua {}", src.upstream_version());
    let key = cache_key(&[
        FORMAT_VERSION,
        "lua",
        &src.sha256,
        gcc_version,
        &LUA_MAKE_ARGS.join("\n"),
    ]);
    let out = cache_dir().join(format!("lua-{key}"));
    let binary = out.join("lua");
    if binary.is_file() {
        println!("[rootvm] {what}: cached (step 4/{STEPS})");
        return Ok(binary);
    }
    step(4, &format!("building {what} (static)"));
    let started = Instant::now();
    need_tools(&format!("building {what}"), &["make", "tar", "gzip"])?;
    let tarball = fetch_source(src)?;
    let tmp = fresh_tmp(&out)?;
    let tree = tmp.join("src");
    extract(&tarball, &tree)?;
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(tree.join("src"))
        .arg(format!("-j{}", jobs()))
        .args(LUA_MAKE_ARGS)
        // Lua embeds no date or path; set like the others so none is ever read.
        .env("SOURCE_DATE_EPOCH", BUILD_EPOCH)
        .env("TZ", BUILD_TZ)
        .env("LC_ALL", "C");
    run_logged(
        &format!("{what}: make"),
        &mut cmd,
        "lua-build",
        Some(("lua", 40)),
    )?;
    let mut strip = Command::new(format!("{CROSS}strip"));
    strip
        .arg("-o")
        .arg(tmp.join("lua"))
        .arg(tree.join("src/lua"));
    run_logged(&format!("{what}: strip"), &mut strip, "lua-build", None)?;
    fs::remove_dir_all(&tree).map_err(|e| format!("cannot remove {}: {e}", tree.display()))?;
    commit(&tmp, &out)?;
    println!(
        "[rootvm] {what} built in {}",
        fmt_duration(started.elapsed())
    );
    Ok(binary)
}

/// Checks that every `CONFIG_X=...` and `# CONFIG_X is not set` line of `fragment` holds
/// in `config`: Kconfig silently drops options whose dependencies are not met.
fn check_config(config: &str, fragment: &str, fragment_name: &str, what: &str) -> Result<()> {
    let actual: BTreeMap<&str, &str> = config
        .lines()
        .filter_map(|l| {
            if let Some(rest) = l
                .strip_prefix("# ")
                .and_then(|l| l.strip_suffix(" is not set"))
            {
                Some((rest, "n"))
            } else if l.starts_with("CONFIG_") {
                l.split_once('=')
            } else {
                None
            }
        })
        .collect();
    let mut dropped = Vec::new();
    for line in fragment.lines().map(str::trim) {
        let (name, want) = if let Some(rest) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            (rest, "n")
        } else if line.starts_with("CONFIG_") {
            match line.split_once('=') {
                Some(nv) => nv,
                None => continue,
            }
        } else {
            continue;
        };
        let got = actual.get(name).copied().unwrap_or("n");
        if got != want {
            dropped.push(format!("  {line}   (final .config: {name}={got})"));
        }
    }
    if dropped.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{what}: {} option(s) of {fragment_name} did not survive into the final .config \
         (a dependency is not enabled, or the option does not exist in this version); \
         enable the dependencies in {fragment_name} or drop the lines:\n{}",
        dropped.len(),
        dropped.join("\n")
    ))
}

/// Parallel jobs for make: `$DIOSIX_JOBS`, else the number of CPUs.
fn jobs() -> usize {
    std::env::var("DIOSIX_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .filter(|&j| j > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Runs a long build command with its output going to `<cache>/logs/<log>.log`
/// (see [`process::run_logged`]).
///
/// With `progress = Some((name, expected))`, counts the compile/link lines make prints
/// and reports how far it is; `expected` is the first-run estimate, replaced by the real
/// count of the last successful build (kept in `<cache>/logs/progress/<name>`).
fn run_logged(
    what: &str,
    cmd: &mut Command,
    log: &str,
    progress: Option<(&str, usize)>,
) -> Result<()> {
    let logs = cache_dir().join("logs");
    let progress = progress.map(|(name, expected)| process::Progress {
        label: format!("[rootvm]   {name}"),
        counts: is_build_line,
        expected,
        count_file: logs.join("progress").join(name),
    });
    process::run_logged(what, cmd, &logs.join(format!("{log}.log")), progress)
}

/// Whether a line of make output reports one compiled or linked object: kbuild prints
/// `  CC      path` (also busybox); Lua's makefile echoes the compiler command itself.
fn is_build_line(line: &str) -> bool {
    let first = line.split_whitespace().next().unwrap_or("");
    matches!(
        first,
        "CC" | "AS" | "LD" | "AR" | "HOSTCC" | "HOSTLD" | "OBJCOPY"
    ) || first.starts_with(CROSS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_config_reports_dropped_options() {
        let config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_N=8\n";
        assert!(check_config(
            config,
            "CONFIG_A=y\nCONFIG_N=8\n# CONFIG_B is not set\n",
            "f",
            "t"
        )
        .is_ok());
        let err =
            check_config(config, "CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=y\n", "f", "t").unwrap_err();
        assert!(
            err.contains("CONFIG_B=y") && err.contains("CONFIG_C=y") && !err.contains("CONFIG_A=y")
        );
    }
}
