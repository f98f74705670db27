//! A stand-in for ArgoCD (which cannot run here): a reconciler that
//! watches a manifest in a bare git repository, as ArgoCD watches an
//! application's path, and runs the image it names on the local engine,
//! published on 127.0.0.1. It only ever acts on what was pushed: the
//! pipeline never talks to it.
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Reconciler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Images it ran, in order (a failed `docker run` is `!image`).
    synced: Arc<Mutex<Vec<String>>>,
    container: String,
}

/// The first `image:` value of a manifest (quotes and comments dropped).
pub fn manifest_image(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.trim_start().trim_start_matches("- ");
        let v = l.strip_prefix("image:")?;
        let v = v.split(" #").next().unwrap_or(v).trim();
        Some(v.trim_matches(|c| c == '"' || c == '\'').to_string())
    })
}

impl Reconciler {
    /// Watches `branch:path` of the bare repository `bare` and keeps one
    /// container `container` running its image, port 8080 on
    /// 127.0.0.1:`port`.
    pub fn start(bare: PathBuf, branch: &str, path: &str, container: &str, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let synced = Arc::new(Mutex::new(Vec::new()));
        let spec = format!("{branch}:{path}");
        let name = container.to_string();
        let thread = {
            let (stop, synced) = (stop.clone(), synced.clone());
            std::thread::spawn(move || {
                let mut current = String::new();
                while !stop.load(Ordering::Relaxed) {
                    let out = Command::new("git")
                        .arg("--git-dir")
                        .arg(&bare)
                        .args(["show", &spec])
                        .output();
                    let image = out
                        .ok()
                        .filter(|o| o.status.success())
                        .and_then(|o| manifest_image(&String::from_utf8_lossy(&o.stdout)));
                    if let Some(image) = image.filter(|i| *i != current) {
                        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
                        let ok = Command::new("docker")
                            .args(["run", "-d", "--name", &name, "-p"])
                            .arg(format!("127.0.0.1:{port}:8080"))
                            .arg(&image)
                            .output()
                            .map(|o| o.status.success())
                            .unwrap_or(false);
                        let entry = if ok {
                            image.clone()
                        } else {
                            format!("!{image}")
                        };
                        synced.lock().unwrap().push(entry);
                        current = image;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        Reconciler {
            stop,
            thread: Some(thread),
            synced,
            container: container.to_string(),
        }
    }

    pub fn synced(&self) -> Vec<String> {
        self.synced.lock().unwrap().clone()
    }

    /// Waits until the last image it ran is `image`.
    pub fn wait_running(&self, image: &str, within: Duration) {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if self.synced().last().map(String::as_str) == Some(image) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the reconciler did not run {image} within {within:?}; it ran {:?}",
            self.synced()
        );
    }
}

impl Drop for Reconciler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.container])
            .output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_image_line() {
        let m = "kind: Deployment\nspec:\n  containers:\n    - name: app\n      image: \"r/app:1\" # pinned\n";
        assert_eq!(manifest_image(m).as_deref(), Some("r/app:1"));
        assert_eq!(manifest_image("a: b\n"), None);
    }
}
