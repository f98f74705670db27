//! Tests for `host::pipeline`: every diagnostic is checked for its exact
//! line:col and a fragment of its message.

use std::path::Path;
use std::time::Duration;

use super::*;

/// Nine lines of valid preamble; the text appended starts on line 10.
const HEAD: &str = "[pipeline]
name = \"demo\"

[plugins]
tag = \"tag.wasm\"

[secrets]
hook = { env = \"HOOK\" }

";

fn diags(text: &str) -> Vec<Diagnostic> {
    match parse(Path::new("ci/pipeline.toml"), text) {
        Ok(p) => panic!("expected errors, got {p:#?}"),
        Err(e) => e.diagnostics,
    }
}

#[track_caller]
fn assert_diag(text: &str, line: usize, col: usize, fragment: &str) {
    let ds = diags(text);
    assert!(
        ds.iter().any(|d| d.location.line == line
            && d.location.col == col
            && d.message.contains(fragment)),
        "no diagnostic at {line}:{col} containing {fragment:?}; got:\n{}",
        PipelineError {
            diagnostics: ds.clone()
        }
    );
}

fn ok(text: &str) -> Pipeline {
    parse(Path::new("ci/pipeline.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

const COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";
const CORE: &[u8] = b"\0asm\x01\x00\x00\x00";

const FULL: &str = r##"[pipeline]
name = "fintech-app"
default-branch = "trunk"
timeout = "20m"

[plugins]
tag = "plugins/tag.wasm"
slack-notify = "plugins/slack-notify.wasm"

[secrets]
slack-webhook = { env = "SLACK_WEBHOOK" }
registry-auth = { file = "secrets/registry.json" }

[[stage]]
name = "tag"
plugin = "tag"
grants = { env = ["GIT_SHA"], secrets-read = ["registry-auth"] }
memory = "64MiB"

[[stage]]
name = "build"
plugin = "tag"
needs = ["tag"]
when = { branch = ["trunk", "release/*"], event = ["push"] }
with = { image = "local/app:latest", command = ["./run"], min-coverage = 80, ratio = 0.5, at = 1979-05-27T07:32:00Z, nested = { a = true } }
grants = { workspace = "rw", docker = { build = ["local/app:*"], run = ["local/app-test:*"], ports = [8080, "9000-9100"] }, scan = true }
timeout = "5m"
retries = 2
environment = "staging"

[[stage]]
name = "notify"
plugin = "slack-notify"
needs = ["build", "tag"]
when = { always = true }
with = { webhook = "${secret:slack-webhook}", channel = "#deploys" }
grants = { http = ["https://hooks.slack.com/*"], secrets = ["slack-webhook"] }

[environments.staging]
branch = ["trunk"]

[environments.production]
tag = ["v*"]
approval = true
approval-timeout = "30m"
"##;

fn write_full(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    std::fs::write(dir.join("plugins/tag.wasm"), COMPONENT).unwrap();
    std::fs::write(dir.join("plugins/slack-notify.wasm"), COMPONENT).unwrap();
    let file = dir.join("pipeline.toml");
    std::fs::write(&file, FULL).unwrap();
    file
}

// ---- a valid file -------------------------------------------------------

#[test]
fn full_example_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write_full(tmp.path());
    let p = load(&file).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(p.file, file);
    assert_eq!(p.dir, tmp.path());
    assert_eq!(p.name, "fintech-app");
    assert_eq!(p.default_branch, "trunk");

    let tag = &p.plugins["tag"];
    assert_eq!(tag.source, PluginSource::Path("plugins/tag.wasm".into()));
    assert_eq!(tag.path, tmp.path().join("plugins/tag.wasm"));
    assert_eq!((tag.location.line, tag.location.col), (7, 7));
    assert_eq!(p.location_of_plugin("slack-notify").unwrap().line, 8);

    assert_eq!(
        p.secrets["slack-webhook"],
        SecretSource::Env("SLACK_WEBHOOK".into())
    );
    assert_eq!(
        p.secrets["registry-auth"],
        SecretSource::File(tmp.path().join("secrets/registry.json"))
    );

    assert_eq!(p.stages.len(), 3);
    let t = p.stage("tag").unwrap();
    assert_eq!(t.timeout, Duration::from_secs(20 * 60), "pipeline default");
    assert_eq!(t.memory, 64 << 20);
    assert_eq!(t.retries, 0);
    assert_eq!(t.with, serde_json::json!({}));
    assert_eq!(t.grants.env, ["GIT_SHA"]);
    assert_eq!(t.grants.secrets_read, ["registry-auth"]);
    assert_eq!(t.grants.workspace, None);
    assert_eq!((t.location.line, t.location.col), (15, 8));

    let b = p.stage("build").unwrap();
    assert_eq!(b.plugin, "tag");
    assert_eq!(b.needs, ["tag"]);
    assert_eq!(b.when.branch, ["trunk", "release/*"]);
    assert_eq!(b.when.event, ["push"]);
    assert!(!b.when.always);
    assert_eq!(
        b.with,
        serde_json::json!({
            "image": "local/app:latest", "command": ["./run"], "min-coverage": 80,
            "ratio": 0.5, "at": "1979-05-27T07:32:00Z", "nested": { "a": true }
        })
    );
    assert_eq!(b.grants.workspace, Some(WorkspaceAccess::ReadWrite));
    assert_eq!(b.grants.docker.build, ["local/app:*"]);
    assert_eq!(b.grants.docker.run, ["local/app-test:*"]);
    assert_eq!(
        b.grants.docker.ports,
        [
            PortRange {
                start: 8080,
                end: 8080
            },
            PortRange {
                start: 9000,
                end: 9100
            }
        ]
    );
    assert!(b.grants.docker.ports[1].contains(9050));
    assert_eq!(b.grants.docker.ports[1].to_string(), "9000-9100");
    assert!(b.grants.scan);
    assert_eq!(b.timeout, Duration::from_secs(300));
    assert_eq!(b.memory, DEFAULT_MEMORY);
    assert_eq!(b.retries, 2);
    assert_eq!(b.environment.as_deref(), Some("staging"));
    assert_eq!(p.environments.len(), 2);
    let trigger = |branch: Option<&str>, tag: Option<&str>| Trigger {
        branch: branch.map(str::to_string),
        tag: tag.map(str::to_string),
        event: "push".into(),
    };
    let prod = p.environment("production").unwrap();
    assert!(prod.approval);
    assert_eq!(prod.approval_timeout, Duration::from_secs(30 * 60));
    assert_eq!(
        p.environment_for(&trigger(Some("trunk"), None))
            .map(|e| e.name.as_str()),
        Some("staging")
    );
    assert_eq!(
        p.environment_for(&trigger(None, Some("v1.2.0")))
            .map(|e| e.name.as_str()),
        Some("production")
    );
    assert!(p
        .environment_for(&trigger(Some("feature/x"), None))
        .is_none());

    let n = p.stage("notify").unwrap();
    assert!(n.when.always);
    assert_eq!(n.grants.http, ["https://hooks.slack.com/*"]);
    assert_eq!(n.grants.secrets, ["slack-webhook"]);
    assert_eq!(p.plugin_of(n).unwrap().name, "slack-notify");

    let order: Vec<&str> = p.topo_order().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(order, ["tag", "build", "notify"]);
    assert_eq!(p.dependents("tag"), ["build", "notify"]);
    assert_eq!(p.dependents("notify"), Vec::<&str>::new());
    assert_eq!(p.transitive_dependents("tag"), ["build", "notify"]);
}

#[test]
fn defaults_apply() {
    let p = ok(&format!(
        "{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\n"
    ));
    assert_eq!(p.default_branch, "main");
    assert_eq!(p.dir, Path::new("ci"));
    let a = &p.stages[0];
    assert_eq!(a.timeout, DEFAULT_TIMEOUT);
    assert_eq!(a.memory, DEFAULT_MEMORY);
    assert_eq!(a.retries, 0);
    assert_eq!(a.grants, Grants::default());
    assert_eq!(a.when, When::default());
    assert!(a.with.is_object());
    // A bare file name resolves against ".".
    let p = parse(
        Path::new("p.toml"),
        &format!("{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\n"),
    )
    .unwrap();
    assert_eq!(p.plugins["tag"].path, Path::new("./tag.wasm"));
}

// ---- syntax and unknown keys --------------------------------------------

#[test]
fn toml_syntax_error() {
    assert_diag("[pipeline]\nname = = \"x\"\n", 2, 8, "");
    assert_diag("[pipeline\n", 1, 10, "");
    // Column counts characters, not bytes.
    assert_diag("[pipeline]\nname = \"é\" x\n", 2, 12, "");
}

#[test]
fn unknown_keys() {
    assert_diag(
        "[pipeline]\nname = \"x\"\nbogus = 1\n",
        3,
        1,
        "unknown field `bogus`, expected one of `name`, `default-branch`, `labels`, `timeout`, `memory`",
    );
    assert_diag(
        "[pipeline]\nname = \"x\"\n[foo]\n",
        3,
        2,
        "unknown table `foo`, expected one of `pipeline`, `plugins`, `trust`, `secrets`, `environments`, `stage`, `git`, `ssh`",
    );
    let stage = |extra: &str| format!("{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\n{extra}\n");
    assert_diag(
        &stage("plugn = \"x\""),
        13,
        1,
        "unknown field `plugn`, expected one of `name`, `plugin`, `needs`",
    );
    assert_diag(
        &stage("when = { branch = [\"main\"], nope = true }"),
        13,
        29,
        "unknown field `nope`, expected one of `branch`, `tag`, `event`, `always`",
    );
    assert_diag(&stage("grants = { workspce = \"ro\" }"), 13, 12, "unknown field `workspce`, expected one of `workspace`, `env`, `secrets`, `secrets-read`, `http`, `docker`, `scan`, `git`, `ssh`");
    assert_diag(&stage("grants = { docker = { pull = [] } }"), 13, 23, "unknown field `pull`, expected one of `build`, `run`, `tag`, `push`, `containers`, `ports`");
    assert_diag(
        &stage("grants = { workspace = \"rx\" }"),
        13,
        24,
        "unknown variant `rx`, expected `ro` or `rw`",
    );
    assert_diag(
        "[pipeline]\nname = \"x\"\n[secrets]\nhook = { env = \"A\", vault = \"b\" }\n",
        4,
        21,
        "unknown field `vault`, expected `env` or `file`",
    );
}

#[test]
fn wrong_shapes() {
    assert_diag(
        "[pipeline]\nname = \"x\"\n[stage]\nname = \"a\"\n",
        3,
        1,
        "write `[[stage]]`",
    );
    assert_diag(
        &format!("{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\nneeds = \"b\"\n"),
        13,
        9,
        "expected a sequence",
    );
    assert_diag(
        &format!("{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\nretries = \"2\"\n"),
        13,
        11,
        "invalid type",
    );
    assert_diag(
        "[pipeline]\nname = \"x\"\n[plugins]\ntag = 3\n",
        4,
        7,
        "plugin `tag`: found an integer; expected \"plugins/x.wasm\"",
    );
}

// ---- semantic checks ------------------------------------------------------

#[test]
fn missing_pipeline_name_and_table() {
    assert_diag(
        "[pipeline]\ndefault-branch = \"main\"\n[plugins]\ntag = \"t.wasm\"\n[[stage]]\nname = \"a\"\nplugin = \"tag\"\n",
        1,
        1,
        "missing `name` in [pipeline]",
    );
    assert_diag(
        "[plugins]\ntag = \"t.wasm\"\n[[stage]]\nname = \"a\"\nplugin = \"tag\"\n",
        1,
        1,
        "missing [pipeline] table",
    );
    assert_diag("[pipeline]\nname = \"\"\n", 2, 8, "must not be empty");
}

#[test]
fn zero_stages() {
    // Reported at the end of the file, where the first stage would go.
    assert_diag(HEAD, 10, 1, "no stages; expected at least one `[[stage]]`");
}

#[test]
fn duplicate_stage_names() {
    let text = format!(
        "{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\n\n[[stage]]\nname = \"a\"\nplugin = \"tag\"\n"
    );
    assert_diag(
        &text,
        15,
        8,
        "duplicate stage name `a`; it is first defined at line 11",
    );
    assert_eq!(diags(&text).len(), 1);
}

#[test]
fn invalid_stage_names() {
    for (name, col) in [
        ("\"\"", 8),
        ("\"Build\"", 8),
        ("\"-a\"", 8),
        ("\"a b\"", 8),
        ("\"a.b\"", 8),
    ] {
        assert_diag(
            &format!("{HEAD}[[stage]]\nname = {name}\nplugin = \"tag\"\n"),
            11,
            col,
            "expected lower-case letters, digits, `-` and `_`",
        );
    }
    ok(&format!(
        "{HEAD}[[stage]]\nname = \"0build_x-y\"\nplugin = \"tag\"\n"
    ));
    // A stage without a name is reported at its table.
    assert_diag(
        &format!("{HEAD}[[stage]]\nplugin = \"tag\"\n"),
        10,
        1,
        "stage is missing `name`",
    );
    assert_diag(
        &format!("{HEAD}[[stage]]\nname = \"a\"\n"),
        10,
        1,
        "stage `a` is missing `plugin`",
    );
}

#[test]
fn unknown_plugin() {
    assert_diag(
        &format!("{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tagg\"\n"),
        12,
        10,
        "unknown plugin `tagg`; declared plugins: `tag`",
    );
}

#[test]
fn plugin_reference_forms() {
    let digest = "a".repeat(64);
    let text = format!(
        "[pipeline]\nname = \"x\"\n[plugins]\ntrivy = \"oci://127.0.0.1:5000/plugins/trivy:0.1\"\nweb = {{ url = \"https://example.com/x.wasm\", sha256 = \"sha256:{digest}\" }}\nlocal = {{ path = \"x.wasm\" }}\n[[stage]]\nname = \"a\"\nplugin = \"trivy\"\n"
    );
    let p = parse(Path::new("p.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        p.plugins["trivy"].source,
        PluginSource::Oci("127.0.0.1:5000/plugins/trivy:0.1".into())
    );
    assert_eq!(
        p.plugins["web"].source,
        PluginSource::Url("https://example.com/x.wasm".into())
    );
    assert_eq!(p.plugins["web"].sha256.as_deref(), Some(digest.as_str()));
    assert_eq!(p.plugins["local"].path, Path::new("./x.wasm"));
}

#[test]
fn plugin_reference_errors() {
    let text = "[pipeline]\nname = \"x\"\n[plugins]\nweb = \"https://example.com/x.wasm\"\nweird = \"ftp://x\"\nplain = \"http://example.com/x.wasm\"\nbad = { url = \"https://e.com/x.wasm\", sha256 = \"12\" }\nboth = { path = \"a.wasm\", oci = \"r/x:1\" }\nupper = \"oci://127.0.0.1:5000/Plugins/x:1\"\n[[stage]]\nname = \"a\"\nplugin = \"web\"\n";
    assert_diag(text, 4, 7, "a URL needs its digest");
    assert_diag(text, 5, 9, "unknown plugin reference scheme `ftp://`");
    assert_diag(text, 6, 9, "plain http is only allowed on loopback");
    assert_diag(text, 7, 7, "`sha256`: ");
    assert_diag(text, 8, 8, "give only one of `path`, `oci`, `url`");
    assert_diag(text, 9, 9, "oci://127.0.0.1:5000/Plugins/x:1");
    assert_diag(
        "[pipeline]\nname = \"x\"\n[plugins]\n\"bad name\" = \"t.wasm\"\n[[stage]]\nname = \"a\"\nplugin = \"bad name\"\n",
        4,
        1,
        "invalid plugin name \"bad name\"",
    );
}

#[test]
fn trust_keys_are_checked() {
    let text = format!("{HEAD}[trust]\nsigned-by = [\"ed25519:nope\"]\n[[stage]]\nname = \"a\"\nplugin = \"tag\"\n");
    assert_diag(&text, 11, 14, "`trust.signed-by`");
}

#[test]
fn needs_unknown_self_and_duplicate() {
    let text = format!(
        "{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\nneeds = [\"a\", \"zz\"]\n\n[[stage]]\nname = \"b\"\nplugin = \"tag\"\nneeds = [\"a\", \"a\"]\n"
    );
    assert_diag(&text, 13, 10, "stage `a` needs itself");
    assert_diag(
        &text,
        13,
        15,
        "`needs` names unknown stage `zz`; stages: `a`, `b`",
    );
    assert_diag(&text, 18, 15, "`needs` lists `a` twice");
    assert_eq!(diags(&text).len(), 3);
}

#[test]
fn cycles_are_named() {
    let text = format!(
        "{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\nneeds = [\"b\"]\n\n[[stage]]\nname = \"b\"\nplugin = \"tag\"\nneeds = [\"a\"]\n"
    );
    assert_diag(&text, 13, 10, "cycle in `needs`: a -> b -> a");
    assert_eq!(diags(&text).len(), 1);

    // Two separate cycles, one of three stages; an innocent dependent.
    let mut text = HEAD.to_string();
    for (name, needs) in [
        ("x", "\"y\""),
        ("y", "\"z\""),
        ("z", "\"x\""),
        ("p", "\"q\", \"x\""),
        ("q", "\"p\""),
        ("ok", "\"x\""),
    ] {
        text.push_str(&format!(
            "[[stage]]\nname = \"{name}\"\nplugin = \"tag\"\nneeds = [{needs}]\n"
        ));
    }
    let ds = diags(&text);
    let msgs: Vec<&str> = ds.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        msgs,
        [
            "cycle in `needs`: x -> y -> z -> x",
            "cycle in `needs`: p -> q -> p"
        ]
    );
    assert_eq!((ds[0].location.line, ds[0].location.col), (13, 10));
    assert_eq!((ds[1].location.line, ds[1].location.col), (25, 10));
}

#[test]
fn bad_durations_and_sizes() {
    let stage = |extra: &str| format!("{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\n{extra}\n");
    assert_diag(
        &stage("timeout = \"10\""),
        13,
        11,
        "`timeout`: expected a duration like \"500ms\"",
    );
    assert_diag(&stage("timeout = \"10\""), 13, 11, "missing a unit");
    assert_diag(
        &stage("timeout = \"5 minutes\""),
        13,
        11,
        "expected a duration",
    );
    assert_diag(
        &stage("timeout = \"0s\""),
        13,
        11,
        "must be greater than zero",
    );
    assert_diag(&stage("timeout = \"25h\""), 13, 11, "the maximum is 24h");
    assert_diag(
        &stage("timeout = 30"),
        13,
        11,
        "expected a duration string like \"30s\" or \"5m\", found an integer",
    );
    assert_diag(
        &stage("memory = \"256\""),
        13,
        10,
        "`memory`: expected a size like \"64MiB\"",
    );
    assert_diag(&stage("memory = \"1TiB\""), 13, 10, "expected a size");
    assert_diag(&stage("memory = \"17GiB\""), 13, 10, "the maximum is 16GiB");
    assert_diag(&stage("memory = \"100kB\""), 13, 10, "the minimum is 1MiB");
    assert_diag(&stage("memory = 268435456"), 13, 10, "found an integer");
    // Defaults under [pipeline] are checked too.
    assert_diag("[pipeline]\nname = \"x\"\ntimeout = \"forever\"\nmemory = \"lots\"\n[plugins]\nt = \"t.wasm\"\n[[stage]]\nname = \"a\"\nplugin = \"t\"\n", 3, 11, "`timeout`");
    assert_diag("[pipeline]\nname = \"x\"\ntimeout = \"forever\"\nmemory = \"lots\"\n[plugins]\nt = \"t.wasm\"\n[[stage]]\nname = \"a\"\nplugin = \"t\"\n", 4, 10, "`memory`");
}

#[test]
fn retries_bounds() {
    let stage = |extra: &str| format!("{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\n{extra}\n");
    assert_diag(
        &stage("retries = 11"),
        13,
        11,
        "`retries` must be between 0 and 10, found 11",
    );
    assert_diag(&stage("retries = -1"), 13, 11, "found -1");
    assert_eq!(ok(&stage("retries = 10")).stages[0].retries, 10);
}

#[test]
fn grants_must_name_declared_secrets() {
    let stage = |extra: &str| format!("{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\n{extra}\n");
    assert_diag(
        &stage("grants = { secrets = [\"hook\", \"slack\"] }"),
        13,
        31,
        "`grants.secrets` names undeclared secret `slack`; declared secrets: `hook`",
    );
    assert_diag(
        &stage("grants = { secrets-read = [\"token\"] }"),
        13,
        28,
        "`grants.secrets-read` names undeclared secret `token`",
    );
    // A read grant can stand alone.
    let p = ok(&stage("grants = { secrets-read = [\"hook\"] }"));
    assert_eq!(p.stages[0].grants.secrets_read, ["hook"]);
    assert!(p.stages[0].grants.secrets.is_empty());
}

#[test]
fn other_grant_checks() {
    let stage = |extra: &str| format!("{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\n{extra}\n");
    assert_diag(
        &stage("grants = { env = [\"1X\"] }"),
        13,
        19,
        "invalid environment variable name \"1X\"",
    );
    assert_diag(
        &stage("grants = { http = [\"hooks.slack.com/*\"] }"),
        13,
        20,
        "must start with `https://` or `http://`",
    );
    assert_diag(
        &stage("grants = { http = [\"https://x/[\"] }"),
        13,
        20,
        "invalid glob pattern in the path",
    );
    assert_diag(
        &stage("grants = { docker = { ports = [0] } }"),
        13,
        32,
        "port 0 is out of range",
    );
    assert_diag(
        &stage("grants = { docker = { ports = [\"9000-80\"] } }"),
        13,
        32,
        "is reversed",
    );
    assert_diag(
        &stage("grants = { docker = { ports = [\"http\"] } }"),
        13,
        32,
        "expected a port (1-65535)",
    );
    assert_diag(
        &stage("grants = { docker = { run = [\"\"] } }"),
        13,
        30,
        "must not be empty",
    );
    // Docker patterns are compiled here, as the capability uses them.
    assert_diag(
        &stage("grants = { docker = { run = [\"Local/App\"] } }"),
        13,
        30,
        "lower case",
    );
    assert_diag(
        &stage("grants = { docker = { base = [\"local/[\"] } }"),
        13,
        31,
        "invalid glob",
    );
    assert_diag(
        &stage("grants = { docker = { containers = [\"a/b\"] } }"),
        13,
        37,
        "cannot appear in a container name",
    );
    assert_diag(&stage("grants = { docker = { scan = [\"local/app:1@sha256:0123456789abcdef0123456789abcdef\"] } }"), 13, 31, "not both");
    assert_diag(
        &stage("grants = { docker = { cpus = 0 } }"),
        13,
        30,
        "number of CPUs",
    );
    assert_diag(
        &stage("grants = { docker = { pids = 1 } }"),
        13,
        30,
        "from 16 to 65536",
    );
    assert_diag(
        &stage("grants = { docker = { memory = \"1KiB\" } }"),
        13,
        32,
        "`grants.docker.memory`",
    );
    assert_diag(
        &stage("grants = { docker = { context-limit = 5 } }"),
        13,
        39,
        "expected a size string",
    );
    let p = ok(&stage("grants = { workspace = \"rw\", docker = { run = [\"local/app\"], base = [\"local/base:*\"], scan = [\"local/app\"], root = true, memory = \"1GiB\", cpus = 1.5, pids = 100, context-limit = \"2GiB\" } }"));
    let d = &p.stages[0].grants.docker;
    assert_eq!(d.base, ["local/base:*"]);
    assert_eq!(d.scan, ["local/app"]);
    assert!(d.root);
    assert_eq!(
        (d.memory, d.nano_cpus, d.pids, d.context_limit),
        (Some(1 << 30), Some(1_500_000_000), Some(100), Some(2 << 30))
    );
}

#[test]
fn secret_sources() {
    let text = "[pipeline]\nname = \"x\"\n[secrets]\nboth = { env = \"A\", file = \"b\" }\nnone = {}\nbad = { env = \"A-B\" }\n";
    assert_diag(text, 4, 8, "secret `both` needs exactly one source");
    assert_diag(text, 5, 8, "secret `none` needs exactly one source");
    assert_diag(text, 6, 15, "invalid environment variable name \"A-B\"");
}

#[test]
fn with_must_be_a_table() {
    let stage = |extra: &str| format!("{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\n{extra}\n");
    assert_diag(
        &stage("with = \"image=x\""),
        13,
        8,
        "`with` must be a table",
    );
    assert_diag(&stage("with = { x = nan }"), 13, 8, "`with.x` is NaN");
    // `[stage.with]` sub-table form works too.
    let p = ok(&format!(
        "{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\n[stage.with]\nimage = \"x\"\n"
    ));
    assert_eq!(p.stages[0].with, serde_json::json!({ "image": "x" }));
}

#[test]
fn branch_and_tag_together_never_match() {
    assert_diag(
        &format!("{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\nwhen = {{ branch = [\"main\"], tag = [\"v*\"] }}\n"),
        13,
        8,
        "both `branch` and `tag`",
    );
    assert_diag(
        &format!(
            "{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\nwhen = {{ branch = [\"[a\"] }}\n"
        ),
        13,
        20,
        "invalid glob pattern in `when.branch`",
    );
}

#[test]
fn all_problems_are_reported_in_order() {
    let text = format!(
        "{HEAD}[[stage]]\nname = \"A\"\nplugin = \"nope\"\ntimeout = \"1\"\nretries = 99\n"
    );
    let ds = diags(&text);
    let at: Vec<(usize, usize)> = ds
        .iter()
        .map(|d| (d.location.line, d.location.col))
        .collect();
    assert_eq!(at, [(11, 8), (12, 10), (13, 11), (14, 11)]);
    let err = parse(Path::new("ci/pipeline.toml"), &text).unwrap_err();
    let shown = err.to_string();
    assert_eq!(shown.lines().count(), 4);
    assert!(
        shown.starts_with("ci/pipeline.toml:11:8: invalid stage name \"A\""),
        "{shown}"
    );
}

// ---- plugin files (load only) ----------------------------------------------

#[test]
fn plugin_file_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("core.wasm"), CORE).unwrap();
    std::fs::write(dir.join("text.wasm"), b"hello world").unwrap();
    std::fs::write(dir.join("short.wasm"), b"\0asm").unwrap();
    std::fs::write(dir.join("good.wasm"), COMPONENT).unwrap();
    std::fs::create_dir(dir.join("adir.wasm")).unwrap();
    let text = "[pipeline]\nname = \"x\"\n[plugins]\nadir = \"adir.wasm\"\ncore = \"core.wasm\"\ngood = \"good.wasm\"\nmissing = \"missing.wasm\"\nshort = \"short.wasm\"\ntext = \"text.wasm\"\n[[stage]]\nname = \"a\"\nplugin = \"good\"\n";
    let file = dir.join("pipeline.toml");
    std::fs::write(&file, text).unwrap();
    let err = load(&file).unwrap_err();
    let got: Vec<(usize, usize, &str)> = err
        .diagnostics
        .iter()
        .map(|d| (d.location.line, d.location.col, d.message.as_str()))
        .collect();
    assert_eq!(got.len(), 5, "{err}");
    assert_eq!((got[0].0, got[0].1), (4, 8));
    assert!(got[0].2.contains("is not a file"), "{err}");
    assert_eq!((got[1].0, got[1].1), (5, 8));
    assert!(
        got[1].2.contains("plugin `core`")
            && got[1]
                .2
                .contains("is a core WebAssembly module, not a component"),
        "{err}"
    );
    assert_eq!((got[2].0, got[2].1), (7, 11));
    assert!(got[2].2.contains("not found"), "{err}");
    assert_eq!((got[3].0, got[3].1), (8, 9));
    assert!(got[3].2.contains("is not a WebAssembly binary"), "{err}");
    assert_eq!((got[4].0, got[4].1), (9, 8));
    assert!(got[4].2.contains("is not a WebAssembly binary"), "{err}");
    assert!(err
        .to_string()
        .contains(&format!("{}:7:11: plugin `missing`", file.display())));

    // parse() never touches the disk.
    assert!(parse(&file, text).is_ok());
}

#[test]
fn load_reports_unreadable_file_and_combines_errors() {
    let err = load(Path::new("/nonexistent/pipeline.toml")).unwrap_err();
    assert_eq!(err.diagnostics.len(), 1);
    assert!(err
        .to_string()
        .starts_with("/nonexistent/pipeline.toml:1:1: cannot read pipeline file"));

    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("p.toml");
    std::fs::write(&file, "[pipeline]\nname = \"x\"\n[plugins]\nt = \"t.wasm\"\n[[stage]]\nname = \"a\"\nplugin = \"t\"\nretries = 20\n").unwrap();
    let err = load(&file).unwrap_err();
    let lines: Vec<usize> = err.diagnostics.iter().map(|d| d.location.line).collect();
    assert_eq!(lines, [4, 8], "{err}");
}

// ---- no panics ------------------------------------------------------------

#[test]
fn every_prefix_and_mutation_is_handled() {
    for (i, _) in FULL.char_indices() {
        let _ = parse(Path::new("p.toml"), &FULL[..i]);
    }
    // Dropping each line (and each character of a few lines) must not panic.
    let lines: Vec<&str> = FULL.lines().collect();
    for skip in 0..lines.len() {
        let text: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, l)| *l)
            .collect();
        let _ = parse(Path::new("p.toml"), &text.join("\n"));
    }
    for (i, _) in FULL.char_indices().step_by(3) {
        let mut text = FULL.to_string();
        text.remove(i);
        let _ = parse(Path::new("p.toml"), &text);
    }
    // Deep nesting and odd bytes.
    let deep = format!(
        "{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\nwith = {{ x = {}1{} }}\n",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let _ = parse(Path::new("p.toml"), &deep);
    let deep = format!(
        "{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\nwith = {}1{}\n",
        "{ x = ".repeat(5000),
        " }".repeat(5000)
    );
    let _ = parse(Path::new("p.toml"), &deep);
    // Moderate nesting is fine and converts.
    let nested = format!(
        "{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\nwith = {}1{}\n",
        "{ x = ".repeat(50),
        " }".repeat(50)
    );
    assert!(parse(Path::new("p.toml"), &nested).is_ok());
    let _ = parse(Path::new("p.toml"), "\u{feff}\0\u{1F600}= =");
    let _ = parse(Path::new("p.toml"), "");
}

// ---- when -------------------------------------------------------------------

fn branch(b: &str, event: &str) -> Trigger {
    Trigger {
        branch: Some(b.into()),
        tag: None,
        event: event.into(),
    }
}
fn tag(t: &str) -> Trigger {
    Trigger {
        branch: None,
        tag: Some(t.into()),
        event: "push".into(),
    }
}
fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn when_matching() {
    let any = When::default();
    assert!(any.is_unconditional());
    assert!(any.matches(&branch("main", "push")));
    assert!(any.matches(&tag("v1.0.0")));

    let w = When {
        branch: strings(&["main", "feature/*"]),
        ..When::default()
    };
    assert!(w.matches(&branch("main", "push")));
    assert!(w.matches(&branch("feature/login", "push")));
    assert!(
        !w.matches(&branch("feature/ui/login", "push")),
        "`*` does not cross `/`"
    );
    assert!(!w.matches(&branch("mainline", "push")));
    assert!(
        !w.matches(&tag("main")),
        "a branch constraint never matches a tag build"
    );
    let mut both = branch("main", "push");
    both.tag = Some("v1".into());
    assert!(!w.matches(&both), "a trigger with a tag is a tag build");

    let odd = When {
        branch: strings(&["release-**"]),
        ..When::default()
    };
    assert!(odd.matches(&branch("release-1.2", "push")));
    let deep = When {
        branch: strings(&["feature/**"]),
        ..When::default()
    };
    assert!(
        deep.matches(&branch("feature/ui/login", "push")),
        "`**` crosses `/`"
    );

    let t = When {
        tag: strings(&["v*"]),
        ..When::default()
    };
    assert!(t.matches(&tag("v1.2.3")));
    assert!(!t.matches(&tag("release-1")));
    assert!(
        !t.matches(&branch("v1", "push")),
        "a tag constraint never matches a branch build"
    );

    let e = When {
        branch: strings(&["main"]),
        event: strings(&["push", "manual"]),
        always: true,
        ..When::default()
    };
    assert!(e.matches(&branch("main", "manual")));
    assert!(
        !e.matches(&branch("main", "pull_request")),
        "all constraints must hold"
    );
    assert!(!e.matches(&branch("dev", "push")));
    let ev = When {
        event: strings(&["pull_*"]),
        ..When::default()
    };
    assert!(!ev.matches(&tag("x")), "tag builds have event `push`");
    assert!(ev.matches(&branch("x", "pull_request")));
}

// ---- units --------------------------------------------------------------------

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    assert_eq!(
        parse_duration("1m30s250ms"),
        Ok(Duration::from_millis(90_250))
    );
    assert_eq!(parse_duration("24h"), Ok(MAX_DURATION));
    assert_eq!(parse_duration(" 90s "), Ok(Duration::from_secs(90)));
    for bad in [
        "",
        "10",
        "s",
        "1.5h",
        "30m1h",
        "1h1h",
        "5 m",
        "5min",
        "-5s",
        "0s",
        "0h0m",
        "24h1ms",
        "99999999999999999999h",
        "1d",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
    }
    assert!(parse_duration("10")
        .unwrap_err()
        .to_string()
        .contains("missing a unit"));
}

#[test]
fn sizes() {
    assert_eq!(parse_size("64MiB"), Ok(64 << 20));
    assert_eq!(parse_size("1GiB"), Ok(1 << 30));
    assert_eq!(parse_size("512MB"), Ok(512_000_000));
    assert_eq!(parse_size("2000kB"), Ok(2_000_000));
    assert_eq!(parse_size("1024KiB"), Ok(1 << 20));
    assert_eq!(parse_size("256 mib"), Ok(256 << 20));
    assert_eq!(parse_size("16GiB"), Ok(MAX_SIZE));
    assert_eq!(parse_size("1048576B"), Ok(MIN_SIZE));
    for bad in [
        "",
        "256",
        "MiB",
        "1.5GiB",
        "100kB",
        "17GiB",
        "1TiB",
        "-1MiB",
        "99999999999999999999999GiB",
        "5 MiBs",
    ] {
        assert!(parse_size(bad).is_err(), "{bad:?} should be refused");
    }
}

// ---- dag ----------------------------------------------------------------------

#[test]
fn topo_order_is_stable_and_respects_needs() {
    let mut text = HEAD.to_string();
    for (name, needs) in [
        ("deploy", "\"push\", \"scan\""),
        ("push", "\"build\""),
        ("build", ""),
        ("scan", "\"build\""),
        ("lint", ""),
        ("notify", "\"deploy\""),
    ] {
        text.push_str(&format!(
            "[[stage]]\nname = \"{name}\"\nplugin = \"tag\"\nneeds = [{needs}]\n"
        ));
    }
    let p = ok(&text);
    let order: Vec<&str> = p.topo_order().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(order, ["build", "push", "scan", "deploy", "lint", "notify"]);
    assert_eq!(p.dependents("build"), ["push", "scan"]);
    assert_eq!(
        p.transitive_dependents("build"),
        ["deploy", "push", "scan", "notify"]
    );
    assert!(p.transitive_dependents("missing").is_empty());
    assert!(p.stage("lint").is_some() && p.stage("nope").is_none());
}

#[test]
fn display_formats() {
    let loc = Location {
        file: "a/p.toml".into(),
        line: 3,
        col: 7,
    };
    assert_eq!(loc.to_string(), "a/p.toml:3:7");
    let d = Diagnostic {
        location: loc,
        message: "boom".into(),
    };
    assert_eq!(d.to_string(), "a/p.toml:3:7: boom");
}

#[test]
fn stage_environment_must_be_declared() {
    let text = "[pipeline]\nname = \"x\"\n[environments.dev]\nbranch = [\"develop\"]\n[[stage]]\nname = \"a\"\nplugin = \"p\"\nenvironment = \"prod\"\n";
    let err = parse(Path::new("ci/pipeline.toml"), text)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "ci/pipeline.toml:8:15: unknown environment `prod` (declared environments: dev)"
        ),
        "{err}"
    );
    let text = "[pipeline]\nname = \"x\"\n[environments.dev]\napproval-timeout = \"soon\"\n[[stage]]\nname = \"a\"\nplugin = \"p\"\n";
    let err = parse(Path::new("ci/pipeline.toml"), text)
        .unwrap_err()
        .to_string();
    assert!(err.contains("ci/pipeline.toml:4:20"), "{err}");
}

#[test]
fn rollback_names_a_stage_it_depends_on_and_artifacts_stay_in_the_workspace() {
    let p = ok(&format!(
        "{HEAD}[[stage]]\nname = \"deploy\"\nplugin = \"tag\"\ngrants = {{ workspace = \"rw\" }}\nartifacts = [\"dist/app\"]\n\
         [[stage]]\nname = \"smoke\"\nplugin = \"tag\"\nneeds = [\"deploy\"]\nrollback = \"deploy\"\n"
    ));
    assert_eq!(
        p.stage("smoke").unwrap().rollback.as_deref(),
        Some("deploy")
    );
    assert_eq!(
        p.stage("deploy").unwrap().artifacts,
        vec!["dist/app".to_string()]
    );
    // Line 10 is the first appended line.
    assert_diag(
        &format!(
            "{HEAD}[[stage]]\nname = \"deploy\"\nplugin = \"tag\"\n\
             [[stage]]\nname = \"smoke\"\nplugin = \"tag\"\nrollback = \"deploy\"\n"
        ),
        16,
        12,
        "`smoke` does not depend on it",
    );
    assert_diag(
        &format!(
            "{HEAD}[[stage]]\nname = \"build\"\nplugin = \"tag\"\ngrants = {{ workspace = \"rw\" }}\nartifacts = [\"ok\", \"/etc/passwd\", \"ok\"]\n"
        ),
        14,
        20,
        "must be relative to the workspace",
    );
    assert_diag(
        &format!(
            "{HEAD}[[stage]]\nname = \"build\"\nplugin = \"tag\"\nartifacts = [\"dist/app\"]\n"
        ),
        13,
        14,
        "no workspace access",
    );
}

const HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

#[test]
fn git_repositories_and_ssh_hosts_are_declared_once_and_granted_by_name() {
    let p = ok(&format!(
        "{HEAD}[git.deploy-config]\nurl = \"git://127.0.0.1:19418/deploy.git\"\npush = [\"main\", \"env/*\"]\n\n\
         [ssh.prod]\naddress = \"deploy@127.0.0.1:2222\"\nhost-key = \"{HOST_KEY} prod\"\nkey = \"hook\"\n\n\
         [[stage]]\nname = \"deploy\"\nplugin = \"tag\"\ngrants = {{ git = [\"deploy-config\"], ssh = [\"prod\", \"prod\"] }}\n"
    ));
    let g = &p.declared.git["deploy-config"];
    assert_eq!(g.branch, "main");
    assert_eq!(g.push.iter().collect::<Vec<_>>(), vec!["main", "env/*"]);
    let h = &p.declared.ssh["prod"];
    assert_eq!(
        (h.user.as_str(), h.host.as_str(), h.port),
        ("deploy", "127.0.0.1", 2222)
    );
    assert_eq!(h.known_hosts_line(), format!("[127.0.0.1]:2222 {HOST_KEY}"));
    assert_eq!(p.stages[0].grants.git, vec!["deploy-config"]);
    assert_eq!(p.stages[0].grants.ssh, vec!["prod"]);
    // Push defaults to the cloned branch.
    let p = ok(&format!(
        "{HEAD}[git.r]\nurl = \"file:///srv/r.git\"\nbranch = \"deploy\"\n[[stage]]\nname = \"a\"\nplugin = \"tag\"\n"
    ));
    assert_eq!(
        p.declared.git["r"].push.iter().collect::<Vec<_>>(),
        vec!["deploy"]
    );
}

#[test]
fn bad_git_and_ssh_declarations_are_pointed_at() {
    let stage = "[[stage]]\nname = \"a\"\nplugin = \"tag\"\n";
    assert_diag(
        &format!("{HEAD}[git.r]\nurl = \"ssh://git@example.com/r.git\"\n{stage}"),
        11,
        7,
        "scheme `ssh` is not supported",
    );
    assert_diag(
        &format!("{HEAD}[git.r]\nurl = \"https://u:tok@example.com/r.git\"\n{stage}"),
        11,
        7,
        "credentials do not belong in the URL",
    );
    assert_diag(
        &format!("{HEAD}[git.r]\nurl = \"file:///r.git\"\nbranch = \"-x\"\n{stage}"),
        12,
        10,
        "is not a branch name",
    );
    assert_diag(
        &format!("{HEAD}[ssh.h]\naddress = \"deploy@127.0.0.1\"\nkey = \"hook\"\n{stage}"),
        10,
        1,
        "missing `host-key`",
    );
    assert_diag(
        &format!(
            "{HEAD}[ssh.h]\naddress = \"-oProxyCommand=x@h\"\nhost-key = \"{HOST_KEY}\"\nkey = \"hook\"\n{stage}"
        ),
        11,
        11,
        "is not a plain user name",
    );
    assert_diag(
        &format!(
            "{HEAD}[ssh.h]\naddress = \"d@h\"\nhost-key = \"ssh-rsa AAAA\"\nkey = \"hook\"\n{stage}"
        ),
        12,
        12,
        "not a `ssh-rsa` key",
    );
    assert_diag(
        &format!(
            "{HEAD}[ssh.h]\naddress = \"d@h\"\nhost-key = \"{HOST_KEY}\"\nkey = \"nope\"\n{stage}"
        ),
        13,
        7,
        "undeclared secret `nope`",
    );
    assert_diag(
        &format!("{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\ngrants = {{ git = [\"r\"] }}\n"),
        13,
        19,
        "`grants.git` names undeclared `r`; no [git.NAME] tables are declared",
    );
    assert_diag(
        &format!(
            "{HEAD}[ssh.h]\naddress = \"d@h\"\nhost-key = \"{HOST_KEY}\"\nkey = \"hook\"\n{stage}grants = {{ ssh = [\"x\"] }}\n"
        ),
        17,
        19,
        "declared: `h`",
    );
}

#[test]
fn labels_a_pipeline_and_its_stages_require() {
    let head = "[pipeline]\nname = \"x\"\nlabels = [\"docker\"]\n[plugins]\ntag = \"t.wasm\"\n";
    let p = ok(&format!(
        "{head}[[stage]]\nname = \"a\"\nplugin = \"tag\"\nlabels = [\"gpu\", \"docker\"]\n"
    ));
    assert_eq!(p.required_labels(), ["docker", "gpu"]);
    assert_diag(
        &format!("{head}[[stage]]\nname = \"a\"\nplugin = \"tag\"\nlabels = [\"GPU\"]\n"),
        9,
        11,
        "labels: `GPU` is not a label",
    );
}

#[test]
fn cache_inputs_are_checked_and_outside_stages_must_opt_in() {
    let stage = |extra: &str| format!("{HEAD}[[stage]]\nname = \"a\"\nplugin = \"tag\"\n{extra}\n");
    let p = ok(&stage("cache = { inputs = [\"src/**\", \"Cargo.lock\"] }"));
    let spec = p.stages[0].cache.as_ref().unwrap();
    assert_eq!(spec.inputs, ["src/**", "Cargo.lock"]);
    assert!(!spec.outside);
    assert_diag(
        &stage("grants = { http = [\"https://hooks.slack.com/*\"] }\ncache = { inputs = [\"a\"] }"),
        14,
        9,
        "`cache`: this stage deploys, pushes or notifies",
    );
    let p = ok(&stage(
        "grants = { http = [\"https://hooks.slack.com/*\"] }\ncache = { inputs = [\"a\"], outside = true }",
    ));
    assert!(p.stages[0].cache.as_ref().unwrap().outside);
    // A deploy stage (an environment) is outside too.
    assert_diag(
        "[pipeline]\nname = \"x\"\n[plugins]\np = \"p.wasm\"\n[environments.dev]\nbranch = [\"develop\"]\n[[stage]]\nname = \"a\"\nplugin = \"p\"\nenvironment = \"dev\"\ncache = { inputs = [\"a\"] }\n",
        11,
        9,
        "`cache`: this stage deploys, pushes or notifies",
    );
    assert_diag(
        &stage("cache = { inputs = [\"../x\"] }"),
        13,
        21,
        "`cache.inputs`: `../x` must be relative to the workspace",
    );
    assert_diag(
        &stage("cache = { inputs = [\"a[\"] }"),
        13,
        21,
        "`cache.inputs`: ",
    );
    assert_diag(
        &stage("cache = { input = [] }"),
        13,
        11,
        "unknown field `input`",
    );
}
