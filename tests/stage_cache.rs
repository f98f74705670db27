//! `cache = { inputs = [...] }`: `host run` twice on the same inputs
//! replays the stage instead of running it; a changed input, `--no-cache`
//! or an artifact the store lacks runs it again, saying why.
use std::path::PathBuf;

use pipeline_tests::cli::{host, last_run, shown, stage, text};
use pipeline_tests::plugins::plugin;

struct Setup {
    _dir: tempfile::TempDir,
    state: PathBuf,
    ws: PathBuf,
    file: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (state, ws) = (dir.path().join("state"), dir.path().join("ws"));
    std::fs::create_dir_all(ws.join("src")).unwrap();
    std::fs::create_dir_all(ws.join("dist")).unwrap();
    std::fs::write(ws.join("src/main.rs"), "fn main() {}").unwrap();
    std::fs::write(ws.join("README.md"), "not an input").unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        format!(
            r#"[pipeline]
name = "cached"
[plugins]
hostile = "{}"
[[stage]]
name = "build"
plugin = "hostile"
with = {{ attack = "write-workspace", path = "dist/out.txt", content = "built" }}
grants = {{ workspace = "rw" }}
artifacts = ["dist/out.txt"]
cache = {{ inputs = ["src/**"] }}
[[stage]]
name = "check"
plugin = "hostile"
needs = ["build"]
with = {{ attack = "read-workspace", path = "dist/out.txt" }}
grants = {{ workspace = "ro" }}
cache = {{ inputs = ["src/**"] }}
"#,
            plugin("hostile").display()
        ),
    )
    .unwrap();
    Setup {
        _dir: dir,
        state,
        ws,
        file,
    }
}

/// `host run` on the setup's pipeline; its stderr (the console) and record.
fn run(s: &Setup, extra: &[&str]) -> (String, serde_json::Value) {
    let mut args = vec![
        "run",
        s.file.to_str().unwrap(),
        "--workspace",
        s.ws.to_str().unwrap(),
    ];
    args.extend(extra);
    let out = host(&s.state, &args);
    assert!(out.status.success(), "{}", shown(&out));
    (text(&out.stderr), last_run(&s.state))
}

fn log_of(rec: &serde_json::Value, name: &str) -> String {
    stage(rec, name)["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            format!(
                "{}: {}\n",
                l["stream"].as_str().unwrap(),
                l["text"].as_str().unwrap()
            )
        })
        .collect()
}

fn started(console: &str, name: &str) -> bool {
    console
        .lines()
        .any(|l| l.starts_with(name) && l.contains("▶ started"))
}

#[test]
fn a_second_run_on_the_same_inputs_replays_the_stage_and_its_artifact() {
    let s = setup();
    let (console, first) = run(&s, &[]);
    assert!(started(&console, "build"), "{console}");
    assert!(stage(&first, "build").get("cached_from").is_none());
    assert!(log_of(&first, "build").contains("host: cache miss: no earlier run"));
    let outputs = stage(&first, "check")["outputs"].clone();
    assert_eq!(outputs["content"], "built");

    // The artifact is gone from the workspace: a hit restores it from the
    // encrypted store.
    std::fs::remove_file(s.ws.join("dist/out.txt")).unwrap();
    let (console, second) = run(&s, &[]);
    for name in ["build", "check"] {
        assert!(!started(&console, name), "{name} ran:\n{console}");
        assert!(
            console
                .lines()
                .any(|l| l.starts_with(name) && l.contains("cached from run 1")),
            "{console}"
        );
        let st = stage(&second, name);
        assert_eq!(st["cached_from"]["build_number"], 1, "{st}");
        assert_eq!(st["cached_from"]["run_id"], first["id"]);
        assert_eq!(st["attempts"], 0);
        assert_eq!(st["status"], "success");
        assert_eq!(log_of(&second, name), "host: cached from run 1\n");
    }
    assert_eq!(stage(&second, "check")["outputs"], outputs);
    assert_eq!(
        stage(&second, "build")["artifacts"],
        stage(&first, "build")["artifacts"]
    );
    assert_eq!(
        std::fs::read_to_string(s.ws.join("dist/out.txt")).unwrap(),
        "built"
    );
    let shown_run = host(&s.state, &["runs", "show", second["id"].as_str().unwrap()]);
    let shown_run = text(&shown_run.stdout);
    assert_eq!(
        shown_run.matches("cached from run 1").count(),
        2,
        "{shown_run}"
    );

    // A changed input: a miss naming it, and the stage runs.
    std::fs::write(s.ws.join("src/main.rs"), "fn main() { println!() }").unwrap();
    let (console, third) = run(&s, &[]);
    assert!(started(&console, "build"), "{console}");
    assert!(stage(&third, "build").get("cached_from").is_none());
    let log = log_of(&third, "build");
    assert!(
        log.contains("host: cache miss: input `src/main.rs` changed"),
        "{log}"
    );

    // `--no-cache`: it runs, and says so.
    let (console, fourth) = run(&s, &["--no-cache"]);
    assert!(started(&console, "build"), "{console}");
    assert!(log_of(&fourth, "build").contains("cache: not looked up (--no-cache)"));
    assert!(stage(&fourth, "build").get("cached_from").is_none());

    // The store lost the artifacts of the entry (kept by the fourth run):
    // a miss that says why, never a hit without them.
    let run4 = fourth["id"].as_str().unwrap();
    std::fs::remove_dir_all(s.state.join("artifacts").join(run4).join("build")).unwrap();
    let (console, fifth) = run(&s, &[]);
    assert!(started(&console, "build"), "{console}");
    let log = log_of(&fifth, "build");
    assert!(
        log.contains(
            "cache miss: artifact `dist/out.txt` of stage `build`: not in the artifact store"
        ),
        "{log}"
    );

    // A blob changed at rest (kept by the fifth run): a miss, never other
    // bytes replayed.
    let blobs = s
        .state
        .join("artifacts")
        .join(fifth["id"].as_str().unwrap())
        .join("build");
    let blob = std::fs::read_dir(&blobs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    std::fs::write(s.ws.join("dist/out.txt"), "swapped").unwrap();
    let (console, sixth) = run(&s, &[]);
    assert!(started(&console, "build"), "{console}");
    let log = log_of(&sixth, "build");
    assert!(log.contains("the stored blob does not decrypt"), "{log}");
    assert_eq!(
        std::fs::read_to_string(s.ws.join("dist/out.txt")).unwrap(),
        "built"
    );
}

#[test]
fn a_stage_that_reaches_outside_is_not_cached_without_opting_in() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    let toml = |extra: &str| {
        format!(
            "[pipeline]\nname = \"n\"\n[plugins]\nhostile = \"{}\"\n[[stage]]\nname = \"notify\"\nplugin = \"hostile\"\nwith = {{ attack = \"ok\" }}\ngrants = {{ http = [\"https://hooks.example.com/*\"] }}\ncache = {{ inputs = [\"src/**\"]{extra} }}\n",
            plugin("hostile").display()
        )
    };
    std::fs::write(&file, toml("")).unwrap();
    let out = host(
        &dir.path().join("state"),
        &[
            "run",
            file.to_str().unwrap(),
            "--workspace",
            dir.path().to_str().unwrap(),
        ],
    );
    assert!(!out.status.success(), "{}", shown(&out));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:10:9: `cache`: this stage deploys, pushes or notifies",
            file.display()
        )),
        "{err}"
    );
    std::fs::write(&file, toml(", outside = true")).unwrap();
    let out = host(
        &dir.path().join("state"),
        &["check", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", shown(&out));
}
