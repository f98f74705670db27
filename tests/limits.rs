//! Limits and masking: everything a stage can make the host store or show
//! is masked (in every common encoding of a secret) and bounded, and a
//! stage's memory limit is a total.
//!
//! Each test fails if its hole is reopened: a secret form left visible, a
//! value split by the line cut, a component that spreads its memory over
//! many memories, a report flood that fills `runs.db`, an escape sequence
//! that reaches the terminal.
use std::path::Path;
use std::process::Command;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use host::run::{RunRecord, Status};
use pipeline_tests::cli::{shown, text};
use pipeline_tests::harness::Harness;
use pipeline_tests::plugins::{host_bin, plugin, root};

/// A secret with every character class an encoder treats differently:
/// `/`, `+`, `?`, a space, `&`, `=`, quotes, a backslash, non-ASCII, `~`.
/// 23 bytes: its base64 is padded and holds `+` (`-` URL-safe), and it
/// sits differently in base64 groups after 0, 1 or 2 bytes of prefix.
const SECRET: &str = "Tok3n/+? &=\"q\"\\é~42xyz";

/// Percent-encoding: `keep` lists the bytes left alone besides
/// alphanumerics; `plus` writes a space as `+`.
fn percent(s: &str, keep: &[u8], upper: bool, plus: bool) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || keep.contains(&b) {
                (b as char).to_string()
            } else if b == b' ' && plus {
                "+".to_string()
            } else if upper {
                format!("%{b:02X}")
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

/// The base64 characters of `prefix + SECRET + suffix` that depend on the
/// secret's bits alone (what must never be visible).
fn base64_core(prefix: &[u8], suffix: &[u8], url_safe: bool) -> (String, String) {
    let mut data = prefix.to_vec();
    data.extend_from_slice(SECRET.as_bytes());
    data.extend_from_slice(suffix);
    let full = if url_safe {
        URL_SAFE.encode(&data)
    } else {
        STANDARD.encode(&data)
    };
    let (p, n) = (prefix.len(), SECRET.len());
    let core = full[(8 * p).div_ceil(6)..8 * (p + n) / 6].to_string();
    (full, core)
}

/// Every form of [`SECRET`] a stage writes, as (what the stage writes, the
/// part of it that must not be visible anywhere).
fn secret_forms() -> Vec<(String, String)> {
    let s = SECRET;
    let b = s.as_bytes();
    let mut forms: Vec<(String, String)> = vec![
        (s.to_string(), s.to_string()),
        (STANDARD.encode(b), STANDARD.encode(b)),
        (STANDARD_NO_PAD.encode(b), STANDARD_NO_PAD.encode(b)),
        (URL_SAFE.encode(b), URL_SAFE.encode(b)),
        (URL_SAFE_NO_PAD.encode(b), URL_SAFE_NO_PAD.encode(b)),
        (hex::encode(b), hex::encode(b)),
        (hex::encode_upper(b), hex::encode_upper(b)),
    ];
    // base64 of the value inside something longer: HTTP basic auth, a
    // trailing newline (`echo … | base64`), 1 and 2 bytes of prefix.
    for (prefix, suffix, url) in [
        (&b"user:"[..], &b""[..], false),
        (b"", b"\n", false),
        (b"A", b"\n", false),
        (b"AB", b"CD", false),
        (b"A", b"xyz", true),
        (b"AB", b"", true),
    ] {
        forms.push(base64_core(prefix, suffix, url));
    }
    // hex inside a longer hex dump.
    let mut dump = b"pre:".to_vec();
    dump.extend_from_slice(b);
    dump.extend_from_slice(b":post");
    forms.push((hex::encode(&dump), hex::encode(b)));
    // URL-encoded: form style (`+` for spaces), RFC 3986, Python's quote,
    // upper- and lower-case hex.
    for (keep, plus) in [
        (&b"*-._"[..], true),
        (b"-._~", false),
        (b"-._~/", false),
        (b"-_.!~*'()", false),
    ] {
        for upper in [true, false] {
            let p = percent(s, keep, upper, plus);
            forms.push((p.clone(), p));
        }
    }
    // JSON-escaped: minimal, and ASCII-only (`\u00e9`).
    let json = serde_json::to_string(s).unwrap();
    let json = json[1..json.len() - 1].to_string();
    let ascii = json.replace('é', "\\u00e9");
    forms.push((json.clone(), json));
    forms.push((ascii.clone(), ascii));
    // The forms must differ, or the test checks less than it says.
    assert_ne!(STANDARD.encode(b), URL_SAFE.encode(b));
    assert!(STANDARD.encode(b).ends_with('='));
    forms
}

/// Every string of a run record: object keys and string values.
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(o) => {
            for (k, v) in o {
                out.push(k.clone());
                strings(v, out);
            }
        }
        _ => {}
    }
}

fn record_strings(run: &RunRecord) -> Vec<String> {
    let mut out = Vec::new();
    strings(&serde_json::to_value(run).unwrap(), &mut out);
    out
}

/// The first piece (8 characters, or all of a shorter form) of `secret`
/// found in any of `texts`.
fn leaked<'a>(texts: &'a [String], secret: &str) -> Option<(&'a str, String)> {
    let chars: Vec<char> = secret.chars().collect();
    let w = chars.len().min(8);
    for piece in chars.windows(w).map(|c| c.iter().collect::<String>()) {
        if let Some(t) = texts.iter().find(|t| t.contains(&piece)) {
            return Some((t, piece));
        }
    }
    None
}

/// A TOML string (JSON's escapes are TOML's).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", quoted.join(", "))
}

fn assert_no_leak(run: &RunRecord, forms: &[(String, String)]) {
    let texts = record_strings(run);
    for (written, secret) in forms {
        if let Some((text, piece)) = leaked(&texts, secret) {
            panic!("`{piece}` of `{written}` is visible in the record: {text:.300}");
        }
    }
}

/// Every common encoding of a secret the run holds is masked in the log
/// (the `log` import, stdout, stderr), the summary, output keys and
/// values, every annotation field, a failed report's error and a stage
/// error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_encoding_of_a_secret_is_masked_everywhere() {
    let mut h = Harness::new().unwrap();
    h.env.insert("API_TOKEN".into(), SECRET.into());
    let forms = secret_forms();
    let written: Vec<String> = forms.iter().map(|(w, _)| w.clone()).collect();
    let texts = toml_list(&written);
    let run = h
        .run(&format!(
            r#"
[pipeline]
name = "masking"
[plugins]
hostile = "{{plugin:hostile}}"
[secrets]
api-token = {{ env = "API_TOKEN" }}
[[stage]]
name = "leak"
plugin = "hostile"
with = {{ attack = "leak", texts = {texts} }}
grants = {{ secrets-read = ["api-token"] }}
[[stage]]
name = "leak-failed"
plugin = "hostile"
with = {{ attack = "leak", fail = true, texts = {texts} }}
grants = {{ secrets-read = ["api-token"] }}
[[stage]]
name = "leak-error"
plugin = "hostile"
with = {{ attack = "leak-error", texts = {texts} }}
grants = {{ secrets-read = ["api-token"] }}
"#
        ))
        .await;
    for s in &run.stages {
        eprintln!(
            "{}: {:?} {:.200} {:.200?}",
            s.name, s.status, s.summary, s.error
        );
    }
    assert_no_leak(&run, &forms);

    // Every path was taken, and masked.
    let leak = run.stage("leak").unwrap();
    assert_eq!(leak.status, Status::Success, "{:?}", leak.error);
    assert_eq!(leak.outputs.len(), forms.len());
    assert_eq!(leak.annotations.len(), forms.len());
    for (k, v) in &leak.outputs {
        assert!(k.contains("***") && v.contains("***"), "{k} = {v}");
    }
    for a in &leak.annotations {
        let file = a.file.as_deref().unwrap_or_default();
        for field in [&a.title, &a.message, file] {
            assert!(
                field.contains("***"),
                "annotation field not masked: {field}"
            );
        }
    }
    assert!(leak.summary.contains("***"));
    for stream in ["info", "warn", "stdout", "stderr"] {
        assert!(
            leak.log
                .iter()
                .any(|l| l.stream == stream && l.text.contains("***")),
            "no masked {stream} line"
        );
    }
    let failed = run.stage("leak-failed").unwrap();
    assert_eq!(failed.status, Status::Failure);
    assert!(failed.error.as_deref().unwrap().contains("***"));
    let errored = run.stage("leak-error").unwrap();
    assert_eq!(errored.status, Status::Failure);
    assert!(errored.error.as_deref().unwrap().contains("***"));
}

/// A secret the host's 16 KiB line cut splits is masked on both sides of
/// the cut: through the `log` import and through stdout/stderr, which the
/// guest writes in 4 KiB pieces (offsets around 16 KiB and around the
/// piece boundaries after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_split_by_the_line_cut_is_masked() {
    let mut h = Harness::new().unwrap();
    h.env.insert("API_TOKEN".into(), SECRET.into());
    let cut = 16 * 1024;
    let mut offsets = Vec::new();
    for boundary in [cut, cut + 4096, cut + 8192] {
        for back in [1, 5, 12, SECRET.len() - 1] {
            offsets.push(boundary - back);
        }
    }
    let before_cut = offsets.iter().filter(|o| **o < cut).count();
    let offsets: Vec<String> = offsets.iter().map(|o| o.to_string()).collect();
    let at = offsets.join(", ");
    let b64 = STANDARD.encode(SECRET);
    let run = h
        .run(&format!(
            r#"
[pipeline]
name = "line-cut"
[plugins]
hostile = "{{plugin:hostile}}"
[secrets]
api-token = {{ env = "API_TOKEN" }}
[[stage]]
name = "raw"
plugin = "hostile"
with = {{ attack = "long-lines", text = {raw}, at = [{at}], len = 40000 }}
grants = {{ secrets-read = ["api-token"] }}
[[stage]]
name = "base64"
plugin = "hostile"
with = {{ attack = "long-lines", text = "{b64}", at = [{at}], len = 40000 }}
grants = {{ secrets-read = ["api-token"] }}
"#,
            raw = toml_str(SECRET),
        ))
        .await;
    let forms = vec![(SECRET.to_string(), SECRET.to_string()), (b64.clone(), b64)];
    assert_no_leak(&run, &forms);
    for name in ["raw", "base64"] {
        let s = run.stage(name).unwrap();
        assert_eq!(s.status, Status::Success, "{name}: {:?}", s.error);
        for stream in ["info", "stdout", "stderr"] {
            let lines: Vec<_> = s.log.iter().filter(|l| l.stream == stream).collect();
            let cut_lines = lines
                .iter()
                .filter(|l| l.text.ends_with("[line cut]"))
                .count();
            assert_eq!(
                cut_lines,
                offsets.len(),
                "{name} {stream}: one cut line per long line"
            );
            for l in &lines {
                assert!(
                    l.text.len() < cut + 64,
                    "{name} {stream}: a line of {} bytes",
                    l.text.len()
                );
            }
            // A secret that begins before the cut is masked there (one
            // that begins after it is cut away).
            let masked = lines.iter().filter(|l| l.text.contains("***")).count();
            assert_eq!(masked, before_cut, "{name} {stream}: masked lines");
        }
        // The rest of a cut line is dropped, not shown as a line of its own.
        assert!(s.log.iter().any(|l| l.text == "after the long lines"));
        assert!(
            !s.log.iter().any(|l| l.text.starts_with('y')),
            "{name}: a cut line went on"
        );
    }
}

/// A component with 31 extra linear memories, each grown under the
/// stage's limit (about 2 GB in all), fails at its memory limit, naming
/// it; a benign stage of the same run passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_with_many_memories_fails_at_its_memory_limit() {
    let h = Harness::new().unwrap();
    let wat = root().join("tests/fixtures/many-memories.wat");
    let wasm = wat::parse_file(&wat).expect("many-memories.wat");
    let component = h.path().join("many-memories.wasm");
    std::fs::write(&component, wasm).unwrap();
    let run = h
        .run(&format!(
            r#"
[pipeline]
name = "memories"
[plugins]
many = "{}"
hostile = "{{plugin:hostile}}"
[[stage]]
name = "many-memories"
plugin = "many"
memory = "64MiB"
[[stage]]
name = "benign"
plugin = "hostile"
memory = "64MiB"
with = {{ attack = "ok" }}
"#,
            component.display()
        ))
        .await;
    let s = run.stage("many-memories").unwrap();
    let text = format!("{} {}", s.summary, s.error.clone().unwrap_or_default());
    assert_eq!(s.status, Status::Failure, "{text}");
    assert!(!text.contains("ESCAPED"), "{text}");
    assert!(text.contains("memory limit of 64 MiB"), "{text}");
    let b = run.stage("benign").unwrap();
    assert_eq!(b.status, Status::Success, "{:?}", b.error);
}

/// `host run` in `dir/work`, the state in `dir/state`.
fn host_run(dir: &Path, pipeline: &str) -> std::process::Output {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let file = work.join("pipeline.toml");
    std::fs::write(&file, pipeline).unwrap();
    Command::new(host_bin())
        .current_dir(&work)
        .env("HOST_STATE_DIR", dir.join("state"))
        .env("NO_COLOR", "1")
        .args(["run", "--branch", "main", file.to_str().unwrap()])
        .output()
        .expect("running host")
}

/// 200,000 annotations (and 5,000 outputs) fail their stages with the
/// limit and the count named, nothing of them is kept, and `runs.db`
/// stays small; a benign stage of the same run passes.
#[test]
fn report_floods_fail_naming_the_limit_and_keep_runs_db_small() {
    let dir = tempfile::tempdir().unwrap();
    let out = host_run(
        dir.path(),
        &format!(
            r#"
[pipeline]
name = "flood"
[plugins]
hostile = "{}"
[[stage]]
name = "annotations"
plugin = "hostile"
memory = "512MiB"
with = {{ attack = "report-flood", count = 200000, size = 400 }}
[[stage]]
name = "outputs"
plugin = "hostile"
with = {{ attack = "report-flood", what = "outputs", count = 5000, size = 100 }}
[[stage]]
name = "benign"
plugin = "hostile"
with = {{ attack = "ok" }}
"#,
            plugin("hostile").display()
        ),
    );
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let run = pipeline_tests::cli::last_run(&dir.path().join("state"));
    let stage = |n: &str| pipeline_tests::cli::stage(&run, n).clone();
    let a = stage("annotations");
    assert_eq!(a["status"], "failure");
    let err = a["error"].as_str().unwrap();
    assert!(
        err.contains("200000 annotations") && err.contains("limit is 1000"),
        "{err}"
    );
    assert_eq!(a["annotations"].as_array().map_or(0, Vec::len), 0);
    let o = stage("outputs");
    assert_eq!(o["status"], "failure");
    let err = o["error"].as_str().unwrap();
    assert!(
        err.contains("5000 outputs") && err.contains("limit is 1000"),
        "{err}"
    );
    assert_eq!(o["outputs"].as_object().map_or(0, |m| m.len()), 0);
    assert_eq!(stage("benign")["status"], "success");
    // The console says which limit, too.
    assert!(
        text(&out.stderr).contains("200000 annotations"),
        "{}",
        shown(&out)
    );
    let db = std::fs::metadata(dir.path().join("state/runs.db"))
        .unwrap()
        .len();
    eprintln!("runs.db: {db} bytes");
    assert!(db < 1024 * 1024, "runs.db is {db} bytes after the flood");
}

/// Control characters and escape sequences a stage writes (log lines,
/// summary, error) reach the operator's terminal neutralized.
#[test]
fn escape_sequences_from_a_stage_reach_the_terminal_neutralized() {
    let dir = tempfile::tempdir().unwrap();
    let nasty = toml_list(&[
        "\u{1b}[2J\u{1b}[31mRED".to_string(),
        "\u{1b}]0;pwned\u{7}title".to_string(),
        "over\rwrite\u{8}\u{9b}31mC1\u{202e}bidi".to_string(),
    ]);
    let out = host_run(
        dir.path(),
        &format!(
            r#"
[pipeline]
name = "escapes"
[plugins]
hostile = "{}"
[[stage]]
name = "ansi"
plugin = "hostile"
with = {{ attack = "leak", texts = {nasty} }}
[[stage]]
name = "ansi-failed"
plugin = "hostile"
with = {{ attack = "leak", fail = true, texts = {nasty} }}
[[stage]]
name = "ansi-error"
plugin = "hostile"
with = {{ attack = "leak-error", texts = {nasty} }}
"#,
            plugin("hostile").display()
        ),
    );
    let err = text(&out.stderr);
    for bad in ['\u{1b}', '\u{7}', '\r', '\u{8}', '\u{9b}', '\u{202e}'] {
        assert!(
            !err.contains(bad),
            "{bad:?} reached the terminal:\n{}",
            shown(&out)
        );
    }
    // Shown, not acted on: log lines, the summary and the error.
    assert!(err.contains("\\x1b[2J\\x1b[31mRED"), "{err}");
    assert!(err.contains("\\x1b]0;pwned\\x07title"), "{err}");
    assert!(
        err.contains("over\\x0dwrite\\x08\\u{9b}31mC1\\u{202e}bidi"),
        "{err}"
    );
    assert!(err.contains("leak: \\x1b[2J"), "summary: {err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("ansi-error") && l.contains("\\x1b")),
        "error: {err}"
    );
}
