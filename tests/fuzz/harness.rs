//! What the fuzz tests share (`tests/fuzz.rs` for the host's parsers,
//! `plugins/*/tests/fuzz.rs` for the report parsers, each including this
//! file with `#[path]`): how many cases to run, the seed corpus, mutations
//! of it, and a guard that runs one case in its own thread with a
//! wall-clock limit and a memory limit.
//!
//! `FUZZ_CASES` sets the number of generated cases per property (default
//! [`DEFAULT_CASES`], which keeps `cargo test` quick); `just fuzz` runs the
//! same properties with many more, in release.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

/// Cases per property when `FUZZ_CASES` is not set.
pub const DEFAULT_CASES: u32 = 64;

/// Cases per property: `FUZZ_CASES`, else [`DEFAULT_CASES`].
pub fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_CASES)
}

/// A proptest configuration running `cases() / divisor` cases (at least
/// one): costly properties (archives on disk) run fewer. Failures are kept
/// in `regressions` (relative to the package), to be committed.
pub fn config(divisor: u32, regressions: &'static str) -> Config {
    Config {
        cases: (cases() / divisor.max(1)).max(1),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        // Shrinking a hang re-runs it: bound the time spent.
        max_shrink_time: 120_000,
        ..Config::default()
    }
}

/// The seed corpus: `tests/fuzz/corpus/<dir>/*`, sorted by name.
pub fn corpus(dir: &str) -> Vec<(String, Vec<u8>)> {
    let root = corpus_root().join(dir);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no seed", root.display());
    files
}

/// The seeds of `dir` as text.
pub fn corpus_text(dir: &str) -> Vec<(String, String)> {
    corpus(dir)
        .into_iter()
        .map(|(n, b)| (n, String::from_utf8(b).expect("seeds are UTF-8")))
        .collect()
}

/// `tests/fuzz/corpus` of the checkout this test was built from.
pub fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("tests/fuzz/corpus"))
        .find(|p| p.is_dir())
        .expect("tests/fuzz/corpus above the package")
}

// --- the guard ---------------------------------------------------------------

/// Counts the bytes each thread has live, and the most it had.
pub struct Counting;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

fn count(delta: i64) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now)
            }
        });
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as i64));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

/// Limits of one case.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub time: Duration,
    /// Most bytes live at once in the case's thread.
    pub memory: usize,
}

impl Budget {
    /// For parsing `input_len` bytes: a few seconds (debug builds are slow
    /// and the machine is shared; a hang is forever), and memory linear in
    /// the input with a generous factor plus a floor. (Compiling a glob
    /// pattern into a regex takes ~70 bytes per byte of pattern, within
    /// the regex crate's size limit: linear, and allowed.)
    pub fn for_input(input_len: usize) -> Budget {
        Budget {
            time: Duration::from_secs(10),
            memory: 256 * input_len + (16 << 20),
        }
    }
}

/// Runs `f` in its own thread and returns its result; panics (failing the
/// case) when it takes longer than the budget or had more bytes live at
/// once than allowed. A panic in `f` is passed on as it is.
pub fn guarded<R: Send + 'static>(
    what: &str,
    budget: Budget,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let handle = std::thread::Builder::new()
        .name(format!("fuzz-case:{what}"))
        .spawn(move || {
            LIVE.with(|l| l.set(0));
            PEAK.with(|p| p.set(0));
            let r = f();
            let peak = PEAK.with(|p| p.get());
            let _ = tx.send(());
            (r, peak)
        })
        .expect("spawn a case thread");
    match rx.recv_timeout(budget.time) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {}
        Err(mpsc::RecvTimeoutError::Timeout) => panic!(
            "{what}: still running after {:?} (a hang); the case is left running",
            budget.time
        ),
    }
    let (r, peak) = match handle.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    assert!(
        peak <= budget.memory as i64,
        "{what}: {peak} bytes live at once, over the {} byte budget ({:?})",
        budget.memory,
        started.elapsed()
    );
    r
}

// --- mutations ------------------------------------------------------------------

/// What a mutation may insert, per format.
#[derive(Clone, Copy)]
pub struct Dict {
    /// Tokens of the format (`<`, `]]>`, `[[stage]]`, `"`...).
    pub tokens: &'static [&'static str],
    /// Opening and closing tokens that nest (`[`/`]`, `<a>`/`</a>`).
    pub nest: &'static [(&'static str, &'static str)],
}

/// Numbers that overflow, underflow or are not numbers.
pub const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "-0",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "99999999999999999999999999999999999999999",
    "1e999",
    "-1e-999",
    "1.7976931348623157e309",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "0x7fffffff",
    "1_000",
];

#[derive(Clone, Debug)]
pub enum Mutation {
    /// Keep the first `n` (modulo the length) bytes.
    Truncate(usize),
    /// Flip bit `bit` of byte `at`.
    Flip(usize, u8),
    /// Insert bytes at `at`.
    Insert(usize, Vec<u8>),
    /// Remove `len` bytes at `at`.
    Delete(usize, usize),
    /// Repeat the `len` bytes at `at` `times` times.
    Repeat(usize, usize, usize),
}

impl Mutation {
    pub fn apply(&self, data: &mut Vec<u8>) {
        let n = data.len();
        let at = |i: usize| if n == 0 { 0 } else { i % (n + 1) };
        match self {
            Mutation::Truncate(i) => data.truncate(at(*i)),
            Mutation::Flip(i, bit) if n > 0 => data[i % n] ^= 1 << (bit % 8),
            Mutation::Flip(..) => {}
            Mutation::Insert(i, bytes) => {
                let i = at(*i);
                data.splice(i..i, bytes.iter().copied());
            }
            Mutation::Delete(i, len) => {
                let i = at(*i);
                let end = (i + len).min(n);
                data.drain(i..end);
            }
            Mutation::Repeat(i, len, times) => {
                let i = at(*i);
                let end = (i + len).min(n);
                let piece = data[i..end].to_vec();
                let more: Vec<u8> = piece.repeat(*times);
                data.splice(end..end, more);
            }
        }
    }
}

/// Something to insert: random bytes, a token, a number, a long run of a
/// token, or deep nesting.
pub fn insertion(dict: Dict) -> BoxedStrategy<Vec<u8>> {
    let tokens = dict.tokens;
    let nest = dict.nest;
    let mut options: Vec<BoxedStrategy<Vec<u8>>> = vec![
        prop::collection::vec(any::<u8>(), 0..16).boxed(),
        prop::sample::select(NUMBERS)
            .prop_map(|s| s.as_bytes().to_vec())
            .boxed(),
        // A long line.
        (
            prop::sample::select(&["A", "é", " ", "\t", "\\", "\"", "0"][..]),
            1usize..60_000,
        )
            .prop_map(|(t, n)| t.repeat(n).into_bytes())
            .boxed(),
        // Odd characters.
        prop::sample::select(
            &[
                "\0",
                "\r",
                "\r\n",
                "\u{feff}",
                "\u{fffd}",
                "\u{202e}",
                "\u{10ffff}",
                "\u{7f}",
            ][..],
        )
        .prop_map(|s| s.as_bytes().to_vec())
        .boxed(),
    ];
    if !tokens.is_empty() {
        options.push(
            prop::sample::select(tokens)
                .prop_map(|s| s.as_bytes().to_vec())
                .boxed(),
        );
        options.push(
            (prop::sample::select(tokens), 2usize..2_000)
                .prop_map(|(t, n)| t.repeat(n).into_bytes())
                .boxed(),
        );
    }
    if !nest.is_empty() {
        // Deep nesting, closed or not.
        options.push(
            (prop::sample::select(nest), 1usize..20_000, any::<bool>())
                .prop_map(|((open, close), n, closed)| {
                    let mut s = open.repeat(n);
                    if closed {
                        s.push_str(&close.repeat(n));
                    }
                    s.into_bytes()
                })
                .boxed(),
        );
    }
    prop::strategy::Union::new(options).boxed()
}

pub fn mutation(dict: Dict) -> BoxedStrategy<Mutation> {
    prop_oneof![
        2 => any::<usize>().prop_map(Mutation::Truncate),
        3 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        4 => (any::<usize>(), insertion(dict)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<usize>(), 1usize..32, 1usize..200)
            .prop_map(|(i, n, t)| Mutation::Repeat(i, n, t)),
    ]
    .boxed()
}

/// A seed from `seeds` with one to four mutations applied.
pub fn mutant(seeds: Vec<Vec<u8>>, dict: Dict) -> BoxedStrategy<Vec<u8>> {
    (
        prop::sample::select(seeds),
        prop::collection::vec(mutation(dict), 1..5),
    )
        .prop_map(|(mut data, ms)| {
            for m in &ms {
                m.apply(&mut data);
            }
            data
        })
        .boxed()
}

/// Arbitrary bytes, mostly short, sometimes up to 64 KiB.
pub fn bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..256),
        1 => prop::collection::vec(any::<u8>(), 0..65_536),
    ]
    .boxed()
}

/// `bytes` as text (invalid UTF-8 replaced, as the readers do).
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The prefixes of `text` to try as truncations: every one (on a char
/// boundary) when `every`, else about 200 spread over it.
pub fn prefixes(text: &str, every: bool) -> Vec<usize> {
    let step = if every { 1 } else { (text.len() / 200).max(1) };
    (0..text.len())
        .step_by(step)
        .filter(|i| text.is_char_boundary(*i))
        .collect()
}
