//! The Linux Root VM with the host's devices (issue: hardware trust): a virtio-blk disk
//! that keeps what was written across a fresh QEMU run, and a virtio-net interface that
//! gets its address by DHCP and serves a page the host fetches through a forwarded
//! loopback port.
//!
//! Each case makes a fresh disk (`cargo xtask disk new`) in `target/test-images/`,
//! boots with it (and `--net`), then, for the persistence check, boots again with the
//! same disk file and compares what it reads back with what the first boot wrote.

use crate::qemu::{self, Devices, QemuOptions, QemuOutput};
use crate::tests::{leak, Expect, Step, PROMPT, ROOT_PROMPT};
use crate::Result;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// What a device case attaches, and its second boot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeviceCase {
    /// A fresh ext4 disk of this many MiB.
    pub(crate) disk_mib: u64,
    /// User networking; the host fetches `/` through the forwarded port while the
    /// first boot's session runs, and the case fails unless that page arrives.
    pub(crate) net: bool,
    /// A virtio-rng device; the first session reads `/dev/hwrng`.
    pub(crate) rng: bool,
    /// The guest port the host's fetch reaches (0: 80, the Root VM's own `httpd`) and
    /// the text the page must hold (`None`: the Root VM's page).
    pub(crate) fetch: (u16, Option<&'static str>),
    /// Boot again with the same disk: (session, expected output).
    pub(crate) second_boot: Option<(&'static [Step], &'static [Expect])>,
    /// A marker (`NAME-value`) both boots must print with the same value.
    pub(crate) same_marker: Option<&'static str>,
    /// "The outside world": a web server on the host's loopback serving this page (and
    /// the least number of fetches it must see), its address as the Root VM reaches
    /// it through QEMU's user networking (`10.0.2.2:PORT`) in the file
    /// [`OUTSIDE_FILE`] on the disk (which the Root VM mounts at `/var/lib/diosix`).
    pub(crate) outside: Option<(&'static str, usize)>,
}

/// Where a case with [`DeviceCase::outside`] finds the host's web server's address.
pub(crate) const OUTSIDE_FILE: &str = "outside";

/// A web server on the host's loopback (an ephemeral port) that answers every request
/// with `page`, and counts them, until the returned flag is set.
fn serve_outside(page: &'static str) -> Result<(u16, Arc<AtomicUsize>, Arc<AtomicBool>)> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("outside: {e}"))?;
    let port = l.local_addr().map_err(|e| format!("outside: {e}"))?.port();
    l.set_nonblocking(true)
        .map_err(|e| format!("outside: {e}"))?;
    let (hits, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (h, st) = (hits.clone(), stop.clone());
    std::thread::spawn(move || {
        while !st.load(Ordering::Acquire) {
            let Ok((mut c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let _ = c.set_nonblocking(false);
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            // The request (its first read is enough to answer a GET).
            let mut buf = [0u8; 2048];
            if matches!(c.read(&mut buf), Ok(n) if n > 0) {
                let body = format!("{page}\n");
                let _ = write!(
                    c,
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                h.fetch_add(1, Ordering::AcqRel);
            }
        }
    });
    Ok((port, hits, stop))
}

/// Boots with the given options and judges the output (against the expectations
/// given, or the case's own).
pub(crate) type BootAndJudge<'a> =
    dyn Fn(&QemuOptions, Option<&'static [Expect]>) -> Result<QemuOutput> + 'a;

/// What the host's fetch through the forwarded port must return.
const PAGE_TEXT: &str = "diosix root vm";

/// A token unique to this run, written by the first boot and read back by the second.
fn token() -> &'static str {
    static TOKEN: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        leak(format!("tok{nanos:x}"))
    })
}

/// The `linux-devices` case's two sessions: the first boot checks the disk is mounted,
/// writes the token and 8 MiB of random data (printing its checksum), waits while the
/// host fetches the page, checks the RTC and the interrupt counts, and powers off
/// (unmounting the disk); the second reads both back.
pub(crate) fn first_session() -> &'static [Step] {
    let t = token();
    vec![
        ("login:", "root\r"),
        (PROMPT, crate::tests::UPTIME_CMD),
        (
            ROOT_PROMPT,
            "echo MOUNTED-$(grep -c ' /var/lib/diosix ext4 ' /proc/mounts)\r",
        ),
        (
            ROOT_PROMPT,
            leak(format!(
                "echo {t} > /var/lib/diosix/token && \
                 dd if=/dev/urandom of=/var/lib/diosix/big bs=1M count=8 2>/dev/null && sync && \
                 echo SUM-$(md5sum < /var/lib/diosix/big | cut -c1-32)\r"
            )),
        ),
        (
            ROOT_PROMPT,
            "i=0; until ip -4 addr show eth0 | grep -q 10.0.2.15 || [ $i -ge 30 ]; do sleep 1; i=$((i+1)); done; \
             echo ADDR-$(ip -4 addr show eth0 | grep -o '10\\.0\\.2\\.15/24')\r",
        ),
        // The host fetches the page meanwhile (it retries until it arrives).
        (ROOT_PROMPT, "sleep 8; echo SLEPT-1\r"),
        (
            ROOT_PROMPT,
            "echo RTC-$(cat /sys/class/rtc/rtc0/name | cut -d' ' -f1) \
             YEAR-$(date +%Y | cut -c1-2) \
             BLKIRQ-$(awk '/virtio0/ {print ($2+$3 > 0)}' /proc/interrupts)\r",
        ),
        (
            ROOT_PROMPT,
            "echo HWRNG-$(cat /sys/class/misc/hw_random/rng_current) \
             RNGBYTES-$(head -c 4096 /dev/hwrng | wc -c) \
             NONZERO-$(head -c 4096 /dev/hwrng | tr -d '\\000' | wc -c | awk '{print ($1 > 3900)}')\r",
        ),
        (ROOT_PROMPT, "poweroff\r"),
    ]
    .leak()
}

/// The second boot: the same disk, read back.
pub(crate) fn second_session() -> &'static [Step] {
    vec![
        ("login:", "root\r"),
        (PROMPT, crate::tests::UPTIME_CMD),
        (
            ROOT_PROMPT,
            "echo READ-$(cat /var/lib/diosix/token) SUM-$(md5sum < /var/lib/diosix/big | cut -c1-32)\r",
        ),
        (ROOT_PROMPT, "poweroff\r"),
    ]
    .leak()
}

/// What the first boot must print.
pub(crate) fn first_expect() -> &'static [Expect] {
    vec![
        Expect::Text("riscv-plic: plic@c000000"),
        Expect::Text("virtio_blk virtio0"),
        Expect::Text("diosix: /dev/vda mounted at /var/lib/diosix"),
        Expect::Text("MOUNTED-1"),
        Expect::Text("ADDR-10.0.2.15/24"),
        Expect::Text("SLEPT-1"),
        Expect::Text("RTC-goldfish_rtc YEAR-20 BLKIRQ-1"),
        Expect::Text("HWRNG-virtio_rng.0 RNGBYTES-4096 NONZERO-1"),
        Expect::Text("asked for Shutdown: the Root VM has ended"),
    ]
    .leak()
}

/// What the second boot must print.
pub(crate) fn second_expect() -> &'static [Expect] {
    vec![
        Expect::Text(leak(format!("READ-{}", token()))),
        Expect::Text("asked for Shutdown: the Root VM has ended"),
    ]
    .leak()
}

/// The `linux-fork-io` session: the Root VM (RAM pinned for its disk's DMA) reads a
/// 16 MiB file from its disk over and over, dropping its page cache each time, and
/// forks meanwhile. The clone (which holds no device, and whose reads of it find
/// nothing there) fills its RAM and checks a file in its tmpfs is intact; the parent checks every disk read matched and its own tmpfs
/// file too. A device writing into the parent's pages during and after the FORK must
/// reach neither the clone's memory nor anything of the parent's but its own buffers.
pub(crate) fn fork_io_session() -> &'static [Step] {
    vec![
        ("login:", "root\r"),
        (PROMPT, crate::tests::UPTIME_CMD),
        (
            ROOT_PROMPT,
            "dd if=/dev/urandom of=/var/lib/diosix/f bs=1M count=16 2>/dev/null; \
             dd if=/dev/urandom of=/tmp/t bs=1M count=16 2>/dev/null; sync; \
             M1=$(md5sum < /var/lib/diosix/f | cut -c1-32); M2=$(md5sum < /tmp/t | cut -c1-32); \
             echo SUMS-$M1-$M2\r",
        ),
        (
            ROOT_PROMPT,
            "(n=0; bad=0; while [ ! -e /tmp/stop ]; do echo 3 > /proc/sys/vm/drop_caches; \
             if [ \"$(md5sum < /var/lib/diosix/f | cut -c1-32)\" = \"$M1\" ]; then n=$((n+1)); \
             else bad=$((bad+1)); fi; done; \
             if [ $n -gt 2 ] && [ $bad -eq 0 ]; then echo READS-OK > /tmp/reads; \
             else echo READS-BAD-$n-$bad > /tmp/reads; fi) >/dev/null 2>&1 &\r",
        ),
        (
            ROOT_PROMPT,
            "sleep 2; dsx fork --untrusted --no-snapshot; echo FORKRC-$?\r",
        ),
        ("FORKRC-", ""),
        (ROOT_PROMPT, "dsx console 2\r"),
        ("this is the new child VM", "\r"),
        (
            PROMPT,
            // A read that bypasses the page cache: a new request, so the clone touches
            // the disk it does not hold even if the reads it inherited are stuck.
            "(dd if=/dev/vda of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null &); \
             for i in 1 2 3 4 5 6; do dd if=/dev/urandom of=/tmp/c$i bs=1M count=8 2>/dev/null; done; \
             echo CLONE-SAME-$([ \"$(md5sum < /tmp/t | cut -c1-32)\" = \"$M2\" ] && echo yes || echo no)\r",
        ),
        ("CLONE-SAME-", ""),
        (PROMPT, "\x1d"),
        ("detached from CID", ""),
        (
            ROOT_PROMPT,
            "sleep 3; touch /tmp/stop; while [ ! -e /tmp/reads ]; do sleep 1; done; cat /tmp/reads; \
             echo PARENT-T-$([ \"$(md5sum < /tmp/t | cut -c1-32)\" = \"$M2\" ] && echo yes || echo no) \
             PARENT-F-$([ \"$(md5sum < /var/lib/diosix/f | cut -c1-32)\" = \"$M1\" ] && echo yes || echo no)\r",
        ),
        ("PARENT-F-", ""),
        (ROOT_PROMPT, "dsx kill 2; poweroff\r"),
    ]
    .leak()
}

/// What `linux-fork-io` must print.
pub(crate) const FORK_IO_EXPECT: &[Expect] = &[
    Expect::Text("RAM pinned at GPA = HPA"),
    Expect::Text("FORKRC-0"),
    Expect::Text("this is the new child VM"),
    Expect::Text("a device its FORK parent holds: reads as zero, writes ignored"),
    Expect::Text("CLONE-SAME-yes"),
    Expect::Text("READS-OK"),
    Expect::Text("PARENT-T-yes PARENT-F-yes"),
    Expect::Text("asked for Shutdown: the Root VM has ended"),
];

/// Runs the device part of a case around `run` (which boots with the options it is
/// given and judges the output): makes the disk, attaches it and the network, fetches
/// the page from the host during the first boot, then boots a second time if asked.
/// Returns a note for the pass line.
pub(crate) fn run_with_devices(
    name: &str,
    d: &DeviceCase,
    q: &mut QemuOptions,
    run: &BootAndJudge<'_>,
) -> Result<String> {
    let images = crate::workspace_root().join("target").join("test-images");
    std::fs::create_dir_all(&images).map_err(|e| format!("{}: {e}", images.display()))?;
    let disk = images.join(format!("{name}.img"));
    let outside = d.outside.map(|(page, _)| serve_outside(page)).transpose()?;
    let files = images.join(format!("{name}.files"));
    if let Some((port, _, _)) = &outside {
        std::fs::create_dir_all(&files).map_err(|e| format!("{}: {e}", files.display()))?;
        let f = files.join(OUTSIDE_FILE);
        std::fs::write(&f, format!("10.0.2.2:{port}\n"))
            .map_err(|e| format!("{}: {e}", f.display()))?;
    }
    crate::disk::new_disk(
        &disk,
        d.disk_mib << 20,
        outside.is_some().then_some(files.as_path()),
        true,
    )?;
    let port = if d.net {
        Some(qemu::free_port(qemu::DEFAULT_NET_PORT)?)
    } else {
        None
    };
    q.devices = Devices {
        disks: vec![disk.clone()],
        net_port: port,
        net_guest_port: d.fetch.0,
        rng: d.rng,
    };
    let page_text = d.fetch.1.unwrap_or(PAGE_TEXT);
    let fetched: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let done = Arc::new(AtomicBool::new(false));
    let fetcher = port.map(|p| {
        let (fetched, done) = (fetched.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                if let Some(body) = http_get(p).filter(|b| b.contains(page_text)) {
                    *fetched.lock().unwrap() = Some(body);
                    return;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    });
    let first = run(q, None);
    done.store(true, Ordering::Release);
    if let Some((_, _, stop)) = &outside {
        stop.store(true, Ordering::Release);
    }
    if let Some(f) = fetcher {
        let _ = f.join();
    }
    let first = first?;
    let mut note = format!("disk {} MiB", d.disk_mib);
    if let Some(p) = port {
        if fetched.lock().unwrap().is_none() {
            return Err(format!(
                "the host never fetched the page (`{page_text}`) through 127.0.0.1:{p} (log {})",
                first.log.display()
            ));
        }
        note.push_str(&format!(", page fetched through 127.0.0.1:{p}"));
    }
    if let (Some((port, hits, _)), Some((_, least))) = (&outside, d.outside) {
        let n = hits.load(Ordering::Acquire);
        if n < least {
            return Err(format!(
                "the host's web server (127.0.0.1:{port}) answered {n} requests, expected at \
                 least {least} (log {})",
                first.log.display()
            ));
        }
        note.push_str(&format!(", {n} fetches from the host's 127.0.0.1:{port}"));
        let _ = std::fs::remove_dir_all(&files);
    }
    if let Some((session, expect)) = d.second_boot {
        let mut again = q.clone();
        again.name = format!("{name}-again");
        again.devices.net_port = None;
        again.interact = session
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let second = run(&again, Some(expect))?;
        if let Some(m) = d.same_marker {
            let (a, b) = (marker(&first.output, m), marker(&second.output, m));
            if a.is_none() || a != b {
                return Err(format!(
                    "`{m}` differs across boots: {a:?} then {b:?} (logs {} and {})",
                    first.log.display(),
                    second.log.display()
                ));
            }
        }
        note.push_str(", read back after a fresh boot");
    }
    let _ = std::fs::remove_file(&disk);
    Ok(note)
}

/// The value of the last `NAME-value` marker in `out` (not the command's echo).
fn marker(out: &str, name: &str) -> Option<String> {
    let pat = format!("{name}-");
    out.match_indices(pat.as_str())
        .filter_map(|(at, _)| {
            let rest = &out[at + pat.len()..];
            let end = rest
                .find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(rest.len());
            let v = &rest[..end];
            (!v.is_empty()).then(|| v.to_string())
        })
        .last()
}

/// `GET /` from `127.0.0.1:port`; the response (headers and body), if any arrives.
fn http_get(port: u16) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(2))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    let _ = s.take(64 * 1024).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.starts_with("HTTP/").then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_skip_the_echo() {
        let out = "echo SUM-$(md5sum)\nSUM-0123abcd\n";
        assert_eq!(marker(out, "SUM").as_deref(), Some("0123abcd"));
        assert_eq!(marker("nothing", "SUM"), None);
    }
}
