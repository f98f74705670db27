//! The remote side: the shell scripts each step runs on the server, and
//! what their output means.
//!
//! Every script is POSIX `sh` (the plugin runs it as `sh -c '<script>'`,
//! whatever the remote user's login shell), starts with a
//! `# ssh-deploy: <step> key=value…` line naming the step (for the audit
//! trail and the tests), `cd`s into `base` and uses only fixed names
//! (`blue`, `green.pid`, `releases`…) and validated ones (versions), each
//! value single-quoted by [`sh_quote`].

use std::fmt;

/// One of the two slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    Blue,
    Green,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::Blue, Slot::Green];

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Blue => "blue",
            Slot::Green => "green",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::Blue => Slot::Green,
            Slot::Green => Slot::Blue,
        }
    }

    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "blue" => Some(Slot::Blue),
            "green" => Some(Slot::Green),
            _ => None,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `s` as one single-quoted shell word: `it's` → `'it'\''s'`. Nothing
/// inside single quotes is special to `sh` but the quote itself, which is
/// closed, escaped and reopened.
/// What runs on the server for `script`: `sh` whatever the login shell.
pub fn sh_command(script: &str) -> String {
    format!("sh -c {}", sh_quote(script))
}

/// The script of a [`sh_command`], for fakes that look at it.
#[cfg(test)]
pub fn script_of(command: &str) -> String {
    let quoted = command
        .strip_prefix("sh -c '")
        .and_then(|s| s.strip_suffix('\''));
    quoted
        .unwrap_or_else(|| panic!("not an sh_command: {command}"))
        .replace("'\\''", "'")
}

pub fn sh_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Marker file in a release directory holding the sha256 (hex) of what
/// was uploaded for it, so a re-run of the same version is recognised.
pub const DIGEST_FILE: &str = ".ssh-deploy.sha256";
/// How long `stop` waits after SIGTERM before SIGKILL, in tenths of a second.
pub const STOP_GRACE_TENTHS: u32 = 100;
/// Lines of a slot's log shown when its health check fails.
pub const LOG_TAIL_LINES: u32 = 40;

/// How the release file becomes a release directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unpack {
    /// `tar -xzf` into the directory.
    Tarball,
    /// Moved in under this name, mode 755.
    File(String),
}

/// A step's script and the longest it may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    /// `state`, `verify`, `install`, `stop`, … (in messages).
    pub step: &'static str,
    pub text: String,
    pub timeout_ms: u32,
}

const SEC: u32 = 1000;

/// `p` (the pid in variable `$p`) or its process group is alive. The
/// plugin starts each slot in its own session (`setsid`, when the server
/// has it), so the group outlives a parent that exits before its children.
const ALIVE_FN: &str = r#"alive() { kill -0 "-$1" 2>/dev/null || kill -0 "$1" 2>/dev/null; }"#;

/// Scripts for one `base` directory.
#[derive(Clone, Debug)]
pub struct Remote {
    base: String,
}

impl Remote {
    /// `base` must be validated already (`config::check_base`).
    pub fn new(base: &str) -> Self {
        Remote { base: base.into() }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Where `upload` writes the release file (the host quotes it).
    pub fn upload_path(&self, version: &str) -> String {
        format!("{}/.incoming/{version}.upload", self.base)
    }

    fn script(&self, step: &'static str, args: &[(&str, &str)], body: &str, secs: u32) -> Script {
        let mut text = format!("# ssh-deploy: {step}");
        for (k, v) in args {
            text.push_str(&format!(" {k}={v}"));
        }
        text.push_str(&format!(
            "\ncd -- {} || exit 1\n{body}",
            sh_quote(&self.base)
        ));
        Script {
            step,
            text,
            timeout_ms: secs * SEC,
        }
    }

    /// Creates the layout if missing and prints what is there:
    /// `live=<slot>` (when the file exists), `blue=<yes|no> <link target>`,
    /// `green=…` (yes: its process is alive), then `release=<name>` for
    /// each entry of `releases/`, newest first.
    pub fn state(&self) -> Script {
        let mut s = self.script(
            "state",
            &[],
            &format!(
                "mkdir -p releases .incoming || exit 1\n\
                 {ALIVE_FN}\n\
                 if [ -f live ]; then printf 'live=%s\\n' \"$(cat live)\"; fi\n\
                 for s in blue green; do\n\
                 \x20 t=$(readlink \"$s\" 2>/dev/null) || t=\n\
                 \x20 p=$(cat \"$s.pid\" 2>/dev/null) || p=\n\
                 \x20 a=no\n\
                 \x20 case $p in ''|*[!0-9]*) ;; *) if alive \"$p\"; then a=yes; fi ;; esac\n\
                 \x20 printf '%s=%s %s\\n' \"$s\" \"$a\" \"$t\"\n\
                 done\n\
                 ls -1t releases | sed 's/^/release=/'\n"
            ),
            30,
        );
        // The first deploy makes `base` itself.
        s.text = s.text.replacen(
            "\ncd -- ",
            &format!("\nmkdir -p -- {} || exit 1\ncd -- ", sh_quote(&self.base)),
            1,
        );
        s
    }

    /// Compares the uploaded file's sha256 with what the host sent.
    pub fn verify(&self, version: &str, hex: &str) -> Script {
        let up = sh_quote(&format!(".incoming/{version}.upload"));
        let want = sh_quote(hex);
        self.script(
            "verify",
            &[("version", version)],
            &format!(
                "sum=$(sha256sum {up}) || exit 1\n\
                 sum=${{sum%% *}}\n\
                 if [ \"$sum\" != {want} ]; then\n\
                 \x20 echo \"the server has sha256:$sum, the host sent sha256:\"{want} >&2\n\
                 \x20 rm -f -- {up}\n\
                 \x20 exit 1\n\
                 fi\n\
                 echo ok\n"
            ),
            120,
        )
    }

    /// Makes `releases/<version>` from the uploaded file. Prints `reused`
    /// when that release is there already with the same digest, else
    /// `installed`. `live_uses` says the live slot runs that version: then
    /// other content under the same name is refused rather than replaced.
    pub fn install(&self, version: &str, hex: &str, unpack: &Unpack, live_uses: bool) -> Script {
        let up = sh_quote(&format!(".incoming/{version}.upload"));
        let tmp = sh_quote(&format!(".incoming/{version}.d"));
        let rel = sh_quote(&format!("releases/{version}"));
        let mark = sh_quote(&format!("releases/{version}/{DIGEST_FILE}"));
        let want = sh_quote(hex);
        let refuse = if live_uses {
            format!(
                "\x20 echo \"release {version} is already on the server with other content, and the live slot runs it: deploy this one under another version\" >&2\n\
                 \x20 exit 1\n"
            )
        } else {
            format!("\x20 rm -rf -- {rel} || exit 1\n")
        };
        let unpack = match unpack {
            Unpack::Tarball => format!("tar -xzf {up} -C {tmp} || exit 1\nrm -f -- {up}\n"),
            Unpack::File(name) => {
                let dest = sh_quote(&format!(".incoming/{version}.d/{name}"));
                format!("mv -f -- {up} {dest} || exit 1\nchmod 755 {dest} || exit 1\n")
            }
        };
        self.script(
            "install",
            &[("version", version)],
            &format!(
                "if [ -e {rel} ] || [ -L {rel} ]; then\n\
                 \x20 if [ \"$(cat {mark} 2>/dev/null)\" = {want} ]; then\n\
                 \x20   rm -f -- {up}; touch {rel}; echo reused; exit 0\n\
                 \x20 fi\n\
                 {refuse}\
                 fi\n\
                 rm -rf -- {tmp} || exit 1\n\
                 mkdir -- {tmp} || exit 1\n\
                 {unpack}\
                 printf '%s\\n' {want} > {} || exit 1\n\
                 mv -- {tmp} {rel} || exit 1\n\
                 touch {rel}\n\
                 echo installed\n",
                sh_quote(&format!(".incoming/{version}.d/{DIGEST_FILE}"))
            ),
            600,
        )
    }

    /// Stops the slot's process (its group): SIGTERM, up to 10 s, then
    /// SIGKILL; fails if it still runs. Removes the pid file.
    pub fn stop(&self, slot: Slot) -> Script {
        let pid = format!("{slot}.pid");
        self.script(
            "stop",
            &[("slot", slot.as_str())],
            &format!(
                "{ALIVE_FN}\n\
                 p=$(cat {pid} 2>/dev/null) || p=\n\
                 case $p in ''|*[!0-9]*) p= ;; esac\n\
                 if [ -n \"$p\" ] && alive \"$p\"; then\n\
                 \x20 kill -TERM \"-$p\" 2>/dev/null || kill -TERM \"$p\" 2>/dev/null\n\
                 \x20 i=0\n\
                 \x20 while alive \"$p\" && [ \"$i\" -lt {STOP_GRACE_TENTHS} ]; do sleep 0.1; i=$((i+1)); done\n\
                 \x20 if alive \"$p\"; then\n\
                 \x20   kill -KILL \"-$p\" 2>/dev/null || kill -KILL \"$p\" 2>/dev/null\n\
                 \x20   i=0\n\
                 \x20   while alive \"$p\" && [ \"$i\" -lt 50 ]; do sleep 0.1; i=$((i+1)); done\n\
                 \x20   if alive \"$p\"; then echo \"process $p of slot {slot} still runs after SIGKILL\" >&2; exit 1; fi\n\
                 \x20   echo killed\n\
                 \x20 else\n\
                 \x20   echo stopped\n\
                 \x20 fi\n\
                 else\n\
                 \x20 echo 'not running'\n\
                 fi\n\
                 rm -f {pid}\n"
            ),
            30,
        )
    }

    /// Points the slot at `releases/<version>`: a new link, renamed over
    /// the old one (atomic where `mv -T` exists).
    pub fn link(&self, slot: Slot, version: &str) -> Script {
        let rel = sh_quote(&format!("releases/{version}"));
        self.script(
            "link",
            &[("slot", slot.as_str()), ("version", version)],
            &format!(
                "[ -d {rel} ] || {{ echo \"no release directory {version} in releases/\" >&2; exit 1; }}\n\
                 ln -sfn {rel} {slot}.tmp || exit 1\n\
                 mv -Tf {slot}.tmp {slot} 2>/dev/null || {{ rm -f {slot} && mv -f {slot}.tmp {slot}; }} || exit 1\n\
                 touch {rel}\n\
                 echo linked\n"
            ),
            30,
        )
    }

    /// Starts `start` in the slot's directory with `PORT`, detached:
    /// `nohup`, its own session (`setsid`; each when the server has it),
    /// stdin from /dev/null, stdout and stderr to `<slot>.log` (so ssh does
    /// not wait for it), pid in `<slot>.pid`.
    pub fn start(&self, slot: Slot, port: u16, command: &str) -> Script {
        let cmd = sh_quote(command);
        self.script(
            "start",
            &[("slot", slot.as_str()), ("port", &port.to_string())],
            &format!(
                "b=$(pwd) || exit 1\n\
                 cd {slot} || exit 1\n\
                 n=; if command -v nohup >/dev/null 2>&1; then n=nohup; fi\n\
                 s=; if command -v setsid >/dev/null 2>&1; then s=setsid; fi\n\
                 PORT={port} $n $s sh -c {cmd} >\"$b/{slot}.log\" 2>&1 </dev/null &\n\
                 echo $! >\"$b/{slot}.pid\" || exit 1\n\
                 echo $!\n"
            ),
            30,
        )
    }

    /// Prints `yes` when the slot's process (group) is alive, else `no`.
    pub fn alive(&self, slot: Slot) -> Script {
        self.script(
            "alive",
            &[("slot", slot.as_str())],
            &format!(
                "{ALIVE_FN}\n\
                 p=$(cat {slot}.pid 2>/dev/null) || p=\n\
                 case $p in ''|*[!0-9]*) echo no ;; *) if alive \"$p\"; then echo yes; else echo no; fi ;; esac\n"
            ),
            15,
        )
    }

    /// The last lines of the slot's log.
    pub fn log_tail(&self, slot: Slot) -> Script {
        self.script(
            "log",
            &[("slot", slot.as_str())],
            &format!("tail -n {LOG_TAIL_LINES} {slot}.log 2>/dev/null || true\n"),
            15,
        )
    }

    /// The `switch` template with `{port}` and `{slot}` filled in, run in
    /// `base`.
    pub fn switch(&self, slot: Slot, port: u16, template: &str) -> Script {
        let cmd = template
            .replace("{port}", &port.to_string())
            .replace("{slot}", slot.as_str());
        self.script(
            "switch",
            &[("slot", slot.as_str()), ("port", &port.to_string())],
            &format!("{cmd}\n"),
            60,
        )
    }

    /// Writes `live` (a new file renamed over the old one).
    pub fn mark_live(&self, slot: Slot) -> Script {
        self.script(
            "mark-live",
            &[("slot", slot.as_str())],
            &format!("printf '%s\\n' {slot} > live.tmp || exit 1\nmv -f live.tmp live || exit 1\n"),
            30,
        )
    }

    /// Removes these releases (validated names from `state`).
    pub fn prune(&self, versions: &[String]) -> Script {
        let paths: Vec<String> = versions
            .iter()
            .map(|v| sh_quote(&format!("releases/{v}")))
            .collect();
        self.script(
            "prune",
            &[("versions", &versions.join(","))],
            &format!("rm -rf -- {}\n", paths.join(" ")),
            120,
        )
    }
}

/// One slot as `state` found it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotState {
    /// Its process (group) is alive.
    pub alive: bool,
    /// The release its link points at (last component of the target).
    pub release: Option<String>,
}

/// What `state` printed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub live: Option<Slot>,
    pub blue: SlotState,
    pub green: SlotState,
    /// Entries of `releases/` with valid names, newest first.
    pub releases: Vec<String>,
}

impl State {
    pub fn slot(&self, s: Slot) -> &SlotState {
        match s {
            Slot::Blue => &self.blue,
            Slot::Green => &self.green,
        }
    }

    /// Parses the output of [`Remote::state`].
    pub fn parse(out: &str) -> Result<State, String> {
        let mut st = State::default();
        for line in out.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                "live" => {
                    let v = value.trim();
                    st.live = match Slot::parse(v) {
                        Some(s) => Some(s),
                        None if v.is_empty() => None,
                        None => {
                            return Err(format!(
                                "the file `live` holds {v:?}, not \"blue\" or \"green\""
                            ))
                        }
                    }
                }
                "blue" | "green" => {
                    let (alive, target) = value.split_once(' ').unwrap_or((value, ""));
                    let slot = SlotState {
                        alive: alive == "yes",
                        release: release_of_link(target.trim()),
                    };
                    if key == "blue" {
                        st.blue = slot;
                    } else {
                        st.green = slot;
                    }
                }
                "release" if crate::config::check_version(value).is_ok() => {
                    st.releases.push(value.to_string())
                }
                _ => {}
            }
        }
        Ok(st)
    }
}

/// `releases/v2` (or `/srv/app/releases/v2/`) → `v2`; `None` for no link
/// or a name that is not a valid version.
fn release_of_link(target: &str) -> Option<String> {
    let name = target.trim_end_matches('/').rsplit('/').next()?;
    crate::config::check_version(name).ok()?;
    Some(name.to_string())
}

/// Which releases to remove: all but the `keep` newest (`releases`, newest
/// first) and those a slot points at.
pub fn to_prune(releases: &[String], keep: u32, referenced: &[&str]) -> Vec<String> {
    releases
        .iter()
        .skip(keep as usize)
        .filter(|r| !referenced.contains(&r.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn script_of_undoes_sh_command() {
        let script = "echo 'it''s' \"x\"\nexit 0";
        assert_eq!(super::script_of(&super::sh_command(script)), script);
    }

    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("plain"), "'plain'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote("''"), r"''\'''\'''");
        assert_eq!(
            sh_quote("$(rm -rf /) `x` \"y\" \\ ;|&"),
            "'$(rm -rf /) `x` \"y\" \\ ;|&'"
        );
        assert_eq!(sh_quote("a\nb"), "'a\nb'");
    }

    #[test]
    fn scripts_name_their_step_and_quote_their_values() {
        let r = Remote::new("srv/my app");
        let s = r.start(Slot::Green, 18702, "./app --name 'x'");
        assert_eq!(s.step, "start");
        assert!(s.text.starts_with(
            "# ssh-deploy: start slot=green port=18702\ncd -- 'srv/my app' || exit 1\n"
        ));
        assert!(s
            .text
            .contains(r"PORT=18702 $n $s sh -c './app --name '\''x'\''' >"));
        assert!(s.text.contains(r#"echo $! >"$b/green.pid""#));
        let s = r.link(Slot::Blue, "v1.2");
        assert!(
            s.text.contains("ln -sfn 'releases/v1.2' blue.tmp"),
            "{}",
            s.text
        );
        assert_eq!(r.upload_path("v1"), "srv/my app/.incoming/v1.upload");
        let s = r.switch(
            Slot::Blue,
            18701,
            "curl -X PUT --data '{\"upstreams\":[\"127.0.0.1:{port}\"]}' http://x/{slot}",
        );
        assert!(s.text.ends_with(
            "curl -X PUT --data '{\"upstreams\":[\"127.0.0.1:18701\"]}' http://x/blue\n"
        ));
        let s = r.prune(&["v1".into(), "v0".into()]);
        assert!(s.text.ends_with("rm -rf -- 'releases/v1' 'releases/v0'\n"));
    }

    #[test]
    fn parses_state() {
        let st = State::parse(
            "live=green\nblue=yes releases/v1\ngreen=no releases/v2\nrelease=v2\nrelease=v1\nrelease=bad name\n",
        )
        .unwrap();
        assert_eq!(st.live, Some(Slot::Green));
        assert_eq!(
            st.blue,
            SlotState {
                alive: true,
                release: Some("v1".into())
            }
        );
        assert!(!st.green.alive);
        assert_eq!(st.releases, vec!["v2", "v1"]);
        let st = State::parse("blue=no \ngreen=no \n").unwrap();
        assert_eq!(st, State::default());
        assert_eq!(
            State::parse("blue=no /srv/x/releases/v3/\n")
                .unwrap()
                .blue
                .release
                .as_deref(),
            Some("v3")
        );
        assert!(State::parse("live=purple\n")
            .unwrap_err()
            .contains("purple"));
    }

    #[test]
    fn prunes_beyond_keep_but_not_what_a_slot_uses() {
        let r: Vec<String> = ["v5", "v4", "v3", "v2", "v1"].map(String::from).to_vec();
        assert_eq!(to_prune(&r, 3, &["v5", "v4"]), vec!["v2", "v1"]);
        assert_eq!(to_prune(&r, 2, &["v5", "v1"]), vec!["v3", "v2"]);
        assert!(to_prune(&r, 10, &[]).is_empty());
    }
}
