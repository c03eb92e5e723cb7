//! The fuzzing loop of one target: pick an input (a seed, a freshly generated one, or a
//! corpus entry mutated 1-8 times), run it under `catch_unwind` with heap accounting,
//! keep it if it reached new coverage or a new outcome, and record every finding.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::alloc;
use crate::cov::Coverage;
use crate::mutate::{mutate_once, Field};
use crate::rng::Rng;
use crate::targets::Target;

/// Heap use above this (live bytes at the peak of one input) is a finding.
pub const ALLOC_LIMIT: usize = 64 << 20;
/// One input running longer than this is reported (not a failure: it is a cost, not a
/// crash, and it is noted with its input so it can be looked at).
pub const SLOW: Duration = Duration::from_millis(250);
/// Inputs larger than this are run but not kept in the corpus (it keeps mutation fast).
const CORPUS_MAX_INPUT: usize = 256 * 1024;
/// Corpus entries kept per target.
const CORPUS_CAP: usize = 4096;
/// Attempts spent shrinking one finding.
const MINIMIZE_BUDGET: usize = 3000;

/// What a panic left behind.
#[derive(Clone, Debug)]
pub struct PanicInfo {
    /// The panic message.
    pub message: String,
    /// `file:line:col`.
    pub location: String,
    /// A backtrace, captured the first time a location panics. Resolved to text only
    /// when printed, outside the input's heap accounting (symbolizing loads debug
    /// information: tens of MiB that stay cached).
    pub backtrace: Option<std::sync::Arc<std::backtrace::Backtrace>>,
}

thread_local! {
    static LAST_PANIC: RefCell<Option<PanicInfo>> = const { RefCell::new(None) };
    static BACKTRACED: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
    static IN_HARNESS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Replaces the panic hook with one that records the panic for the engine instead of
/// printing it.
pub fn install_panic_hook() {
    let default = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if !IN_HARNESS.with(|h| h.get()) {
            // A bug of the fuzzer itself (generator, mutator): report it normally.
            return default(info);
        }
        let message = if let Some(s) = info.payload().downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "(non-string panic payload)".to_string()
        };
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_else(|| "?".into());
        // The hook's own allocations are not the input's.
        let saved = alloc::snapshot();
        let first = BACKTRACED.with(|b| b.borrow_mut().insert(location.clone()));
        let backtrace =
            first.then(|| std::sync::Arc::new(std::backtrace::Backtrace::force_capture()));
        alloc::restore(saved);
        LAST_PANIC.with(|p| {
            *p.borrow_mut() = Some(PanicInfo {
                message,
                location,
                backtrace,
            })
        });
    }));
}

/// The result of running one input.
#[derive(Debug)]
pub struct Run {
    /// The harness's outcome label, or the panic.
    pub outcome: Result<u64, PanicInfo>,
    /// Heap use.
    pub usage: alloc::Usage,
    /// Wall time.
    pub time: Duration,
}

/// Runs `input` through `target` once, catching panics and measuring the heap.
pub fn run_one(target: &dyn Target, input: &[u8]) -> Run {
    let base = alloc::track(input);
    let start = Instant::now();
    IN_HARNESS.with(|h| h.set(true));
    let r = panic::catch_unwind(AssertUnwindSafe(|| target.run(input)));
    IN_HARNESS.with(|h| h.set(false));
    let time = start.elapsed();
    let usage = alloc::finish(base);
    let outcome = r.map_err(|_| {
        LAST_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| PanicInfo {
                message: "(panic not recorded)".into(),
                location: "?".into(),
                backtrace: None,
            })
    });
    Run {
        outcome,
        usage,
        time,
    }
}

/// What kind of finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A panic (including a failed contract check or an arithmetic overflow).
    Panic,
    /// More than [`ALLOC_LIMIT`] live heap for one input.
    Alloc,
    /// Slower than [`SLOW`] (reported, not a failure).
    Slow,
}

/// One recorded finding.
#[derive(Clone, Debug)]
pub struct Finding {
    /// What.
    pub kind: Kind,
    /// A one-line description.
    pub summary: String,
    /// The (minimized, for panics) input, as saved.
    pub file: PathBuf,
    /// How many inputs hit the same thing.
    pub hits: u64,
    /// Set when this is a known, tracked finding (it does not fail the run).
    pub known: Option<&'static crate::targets::Known>,
}

/// Per-target figures.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Inputs run.
    pub inputs: u64,
    /// Wall time.
    pub seconds: f64,
    /// Inputs that panicked.
    pub panics: u64,
    /// Largest single allocation any input made.
    pub largest_alloc: usize,
    /// Highest live-heap peak of any input.
    pub peak_heap: usize,
    /// Input size of that peak.
    pub peak_input_len: usize,
    /// Slowest input.
    pub slowest: Duration,
    /// Corpus size at the end.
    pub corpus: usize,
    /// Counters ever hit (0 without coverage).
    pub covered: usize,
    /// Counters in the binary (0 without coverage).
    pub counters: usize,
    /// Distinct outcome labels seen.
    pub outcomes: usize,
    /// Findings, one per distinct panic location / kind.
    pub findings: Vec<Finding>,
}

/// Options of one run.
pub struct Options<'a> {
    /// Inputs to run.
    pub iterations: u64,
    /// PRNG seed.
    pub seed: u64,
    /// Where findings go.
    pub out: &'a Path,
}

fn hash(b: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &c in b {
        h = (h ^ u64::from(c)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// True when `input` still panics at `location`.
fn still_panics(target: &dyn Target, input: &[u8], location: &str) -> bool {
    matches!(run_one(target, input).outcome, Err(p) if p.location == location)
}

/// Shrinks `input` while it keeps panicking at the same place: cut the tail, drop
/// chunks, zero bytes.
pub fn minimize(target: &dyn Target, input: &[u8], location: &str) -> Vec<u8> {
    let mut best = input.to_vec();
    let mut budget = MINIMIZE_BUDGET;
    let try_it = |cand: Vec<u8>, best: &mut Vec<u8>, budget: &mut usize| -> bool {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        if still_panics(target, &cand, location) {
            *best = cand;
            true
        } else {
            false
        }
    };
    // Tail cuts, halving.
    let mut cut = best.len() / 2;
    while cut > 0 && budget > 0 {
        let cand = best[..best.len() - cut].to_vec();
        if !try_it(cand, &mut best, &mut budget) {
            cut /= 2;
        }
    }
    // Chunk removal, large to small.
    let mut size = (best.len() / 2).max(1);
    while size >= 1 && budget > 0 {
        let mut at = 0;
        while at + size <= best.len() && budget > 0 {
            let mut cand = best.clone();
            cand.drain(at..at + size);
            if !try_it(cand, &mut best, &mut budget) {
                at += size;
            }
        }
        size /= 2;
    }
    // Zero what is not needed (easier to read in a hex dump).
    for i in 0..best.len() {
        if budget == 0 {
            break;
        }
        if best[i] != 0 {
            let mut cand = best.clone();
            cand[i] = 0;
            try_it(cand, &mut best, &mut budget);
        }
    }
    best
}

fn save(out: &Path, target: &str, kind: &str, input: &[u8], text: &str) -> PathBuf {
    let _ = std::fs::create_dir_all(out);
    let stem = format!("{target}-{kind}-{:016x}", hash(input));
    let bin = out.join(format!("{stem}.bin"));
    let _ = std::fs::write(&bin, input);
    let _ = std::fs::write(out.join(format!("{stem}.txt")), text);
    bin
}

/// Fuzzes one target.
pub fn fuzz(target: &dyn Target, opts: &Options<'_>, cov: &mut Coverage) -> Stats {
    let mut rng = Rng::new(opts.seed ^ hash(target.name().as_bytes()));
    let _ = alloc::ABORT_FILE.set(opts.out.join("alloc-over-hard-cap.bin"));
    let mut stats = Stats {
        counters: cov.len(),
        ..Stats::default()
    };
    let mut seen_cov: Vec<u8> = Vec::new();
    let mut seen_outcomes: HashSet<u64> = HashSet::new();
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let mut findings: HashMap<(Kind, String), Finding> = HashMap::new();
    let mut fields: Vec<Field> = Vec::new();
    let seeds = target.seeds();
    let warmup = 64u64;
    let start = Instant::now();

    for i in 0..opts.iterations {
        // Choose the input.
        let input = if (i as usize) < seeds.len() {
            seeds[i as usize].clone()
        } else if i < warmup + seeds.len() as u64 || corpus.is_empty() || rng.one_in(16) {
            target.generate(&mut rng)
        } else {
            let mut b = rng.pick(&corpus).clone();
            let other = rng.pick(&corpus).clone();
            let depth = 1 << rng.below(4);
            for _ in 0..depth {
                fields.clear();
                target.fields(&b, &mut fields);
                mutate_once(
                    &mut rng,
                    &mut b,
                    &fields,
                    target.big_endian(),
                    &other,
                    target.max_len(),
                );
            }
            if rng.coin() {
                target.fixup(&mut b, &mut rng);
            }
            b
        };

        cov.reset();
        let run = run_one(target, &input);
        let new_cov = cov.merge(&mut seen_cov);
        stats.inputs += 1;
        stats.largest_alloc = stats.largest_alloc.max(run.usage.largest);
        if run.usage.peak > stats.peak_heap {
            stats.peak_heap = run.usage.peak;
            stats.peak_input_len = input.len();
        }
        stats.slowest = stats.slowest.max(run.time);

        let new_outcome = match &run.outcome {
            Ok(label) => seen_outcomes.insert(*label),
            Err(p) => seen_outcomes.insert(hash(p.location.as_bytes())),
        };
        if (new_cov > 0 || new_outcome) && input.len() <= CORPUS_MAX_INPUT {
            if corpus.len() < CORPUS_CAP {
                corpus.push(input.clone());
            } else {
                let at = rng.below(corpus.len());
                corpus[at] = input.clone();
            }
        }

        if let Err(p) = &run.outcome {
            stats.panics += 1;
            let key = (Kind::Panic, p.location.clone());
            if let Some(f) = findings.get_mut(&key) {
                f.hits += 1;
            } else {
                let small = minimize(target, &input, &p.location);
                // The minimized input's own message (its values differ from the
                // original's).
                let message = match run_one(target, &small).outcome {
                    Err(q) => q.message,
                    Ok(_) => p.message.clone(),
                };
                let text = format!(
                    "target: {}\nkind: panic\nmessage: {}\nlocation: {}\ninput: {} bytes (minimized from {})\nreplay: cargo xtask fuzz --replay <this .bin> --target {}\n\n{}",
                    target.name(),
                    message,
                    p.location,
                    small.len(),
                    input.len(),
                    target.name(),
                    p.backtrace
                        .as_ref()
                        .map_or("(no backtrace)".to_string(), |b| b.to_string())
                );
                let file = save(opts.out, target.name(), "panic", &small, &text);
                let summary = format!("panic at {}: {}", p.location, p.message);
                let known = crate::targets::known(target.name(), &p.message);
                eprintln!(
                    "  [{}] {} {summary}\n    saved {}",
                    target.name(),
                    if known.is_some() {
                        "KNOWN FINDING (tracked, not failing):"
                    } else {
                        "FINDING"
                    },
                    file.display()
                );
                findings.insert(
                    key,
                    Finding {
                        kind: Kind::Panic,
                        summary,
                        file,
                        hits: 1,
                        known,
                    },
                );
            }
        }
        for (kind, hit, what) in [
            (
                Kind::Alloc,
                run.usage.peak > ALLOC_LIMIT,
                format!(
                    "{} MiB live heap (largest block {} MiB) for a {}-byte input",
                    run.usage.peak >> 20,
                    run.usage.largest >> 20,
                    input.len()
                ),
            ),
            (
                Kind::Slow,
                // Timed again so a moment of host load is not reported.
                run.time > SLOW && run_one(target, &input).time > SLOW,
                format!("{:?} for a {}-byte input", run.time, input.len()),
            ),
        ] {
            if !hit {
                continue;
            }
            let key = (kind, String::new());
            if let Some(f) = findings.get_mut(&key) {
                f.hits += 1;
                continue;
            }
            let name = if kind == Kind::Alloc { "alloc" } else { "slow" };
            let text = format!(
                "target: {}\nkind: {name}\n{what}\nreplay: cargo xtask fuzz --replay <this .bin> --target {}\n",
                target.name(),
                target.name()
            );
            let file = save(opts.out, target.name(), name, &input, &text);
            eprintln!(
                "  [{}] {} {what}\n    saved {}",
                target.name(),
                if kind == Kind::Alloc {
                    "FINDING"
                } else {
                    "note: slow input:"
                },
                file.display()
            );
            findings.insert(
                key,
                Finding {
                    kind,
                    summary: what,
                    file,
                    hits: 1,
                    known: None,
                },
            );
        }
    }
    stats.seconds = start.elapsed().as_secs_f64();
    stats.corpus = corpus.len();
    stats.covered = Coverage::covered(&seen_cov);
    stats.outcomes = seen_outcomes.len();
    let mut f: Vec<Finding> = findings.into_values().collect();
    f.sort_by(|a, b| a.summary.cmp(&b.summary));
    stats.findings = f;
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Panics when the input holds 0x42 after a 0x41, allocates 65 MiB on a leading 0xAA.
    struct Buggy;
    impl Target for Buggy {
        fn name(&self) -> &'static str {
            "buggy"
        }
        fn about(&self) -> &'static str {
            "test"
        }
        fn seeds(&self) -> Vec<Vec<u8>> {
            vec![vec![0xaa, 0, 0], b"xxxxA".to_vec()]
        }
        fn generate(&self, rng: &mut Rng) -> Vec<u8> {
            let n = rng.small(6);
            let mut b = rng.bytes(n);
            if rng.one_in(4) {
                b.extend_from_slice(b"AB");
            }
            b
        }
        fn run(&self, input: &[u8]) -> u64 {
            if input.first() == Some(&0xaa) {
                let v = vec![1u8; 65 << 20];
                return u64::from(v[12345]);
            }
            if input.windows(2).any(|w| w == b"AB") {
                panic!("found AB");
            }
            input.len() as u64
        }
    }

    #[test]
    fn panics_and_big_allocations_are_found_minimized_and_saved() {
        install_panic_hook();
        let out = std::env::temp_dir().join(format!("diosix-fuzz-test-{}", std::process::id()));
        let opts = Options {
            iterations: 2000,
            seed: 3,
            out: &out,
        };
        let s = fuzz(&Buggy, &opts, &mut Coverage::new());
        assert_eq!(s.inputs, 2000);
        assert!(s.panics > 0);
        assert!(s.peak_heap >= 65 << 20);
        let panic = s.findings.iter().find(|f| f.kind == Kind::Panic).unwrap();
        assert!(panic.summary.contains("found AB"), "{}", panic.summary);
        assert_eq!(std::fs::read(&panic.file).unwrap(), b"AB", "minimized");
        assert!(s.findings.iter().any(|f| f.kind == Kind::Alloc));
        // Replaying the saved input panics at the same place.
        let r = run_one(&Buggy, &std::fs::read(&panic.file).unwrap());
        assert!(r.outcome.unwrap_err().message.contains("found AB"));
        let _ = std::fs::remove_dir_all(&out);
    }
}
