//! One template build, in a sandbox: the steps of a spec, their output in
//! the build's log, and the image kept as a snapshot.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ::sandbox::{Command, ExecEvent, ExitStatus};
use api_types::templates::{BuildStep, TemplateSpec};

use super::{BuildEvent, Live, Templates};
use crate::vms::NewVm;

/// How long one step may run.
const STEP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long a warm template's server has to answer on its port.
const WARM_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// A build VM is destroyed by its deadline even if the forge loses it.
const BUILD_TTL_SECS: u64 = 3 * 3600;
/// The log is written to the database at least this often while output
/// comes.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// ... or once this much waits: each write rewrites the stored log (its
/// last MiB), so a flood of output is written in large pieces.
const FLUSH_BYTES: usize = 256 * 1024;
/// How much of the log a live build keeps in memory for late followers.
const LIVE_LOG_BYTES: usize = 256 * 1024;

/// Sizes of a build (and of every VM from it) the spec does not set.
pub const DEFAULT_VCPUS: u8 = 1;
pub const DEFAULT_MEM_MIB: u64 = 512;
pub const DEFAULT_DISK_MIB: u64 = 4096;

/// Labels of a build's VM.
pub const BUILD_ROLE: (&str, &str) = ("forge/role", "template-build");
/// The creator of a build's VM: not the token that posted the spec, which
/// could otherwise reach into a build other tokens' templates share.
pub const BUILD_ACTOR: &str = "template-build";
/// The label naming the template a build's VM builds.
pub const TEMPLATE_LABEL: &str = "forge/template";

/// How long a build stays leased to its process without a renewal.
const BUILD_LEASE_SECS: i64 = 15;
/// How often a running build renews its lease.
const BUILD_RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// The end of a build's lease taken or renewed now (unix s).
pub fn lease_until() -> i64 {
    crate::store::unix_now() + BUILD_LEASE_SECS
}

/// A step: what it is called and the command it runs.
struct Step {
    name: String,
    command: Command,
}

/// The commands a spec runs, in order.
fn steps(spec: &TemplateSpec) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut apt = spec.apt.clone();
    if !spec.pip.is_empty() && !apt.iter().any(|p| p == "python3-pip") {
        apt.push("python3-pip".into());
    }
    let apt_env = |c: Command| c.env("DEBIAN_FRONTEND", "noninteractive");
    if !apt.is_empty() {
        steps.push(Step {
            name: "apt-get update".into(),
            command: apt_env(Command::new(["apt-get", "update", "-q"])),
        });
        let mut argv = vec![
            "apt-get".to_owned(),
            "install".into(),
            "-y".into(),
            "-q".into(),
            "--no-install-recommends".into(),
            "--".into(),
        ];
        argv.extend(apt.iter().cloned());
        steps.push(Step {
            name: format!("apt-get install {}", apt.join(" ")),
            command: apt_env(Command::new(argv)),
        });
        steps.push(Step {
            name: "apt-get clean".into(),
            command: Command::shell("apt-get clean && rm -rf /var/lib/apt/lists/*"),
        });
    }
    if !spec.pip.is_empty() {
        let mut argv = vec![
            "pip".to_owned(),
            "install".into(),
            "--no-cache-dir".into(),
            "--break-system-packages".into(),
            "--progress-bar".into(),
            "off".into(),
        ];
        argv.extend(spec.pip.iter().cloned());
        steps.push(Step {
            name: format!("pip install {}", spec.pip.join(" ")),
            command: Command::new(argv),
        });
    }
    if !spec.npm.is_empty() {
        let mut argv = vec![
            "npm".to_owned(),
            "install".into(),
            "--global".into(),
            "--no-fund".into(),
            "--no-audit".into(),
        ];
        argv.extend(spec.npm.iter().cloned());
        steps.push(Step {
            name: format!("npm install --global {}", spec.npm.join(" ")),
            command: Command::new(argv),
        });
    }
    if let Some(workdir) = &spec.workdir {
        steps.push(Step {
            name: format!("mkdir {workdir}"),
            command: Command::new(["mkdir", "-p", "--", workdir.as_str()]),
        });
    }
    for run in &spec.run {
        let mut command = Command::shell(run.clone());
        if let Some(workdir) = &spec.workdir {
            command = command.cwd(workdir.clone());
        }
        steps.push(Step {
            name: run
                .lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(120)
                .collect(),
            command,
        });
    }
    steps
}

/// Keeps the end of `log`, at most `max` bytes, cut at a character.
fn keep_end(log: &mut String, max: usize) {
    if log.len() > max {
        let mut cut = log.len() - max;
        while !log.is_char_boundary(cut) {
            cut += 1;
        }
        log.drain(..cut);
    }
}

/// The build's log as it is written: the live copy and followers at once,
/// the database every [`FLUSH_EVERY`].
struct Log<'a> {
    templates: &'a Templates,
    hash: &'a str,
    live: &'a Live,
    pending: String,
    flushed: Instant,
}

impl Log<'_> {
    fn send(&self, event: BuildEvent, text: Option<&str>, step: Option<&BuildStep>) {
        let mut state = self.live.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(text) = text {
            state.0.push_str(text);
            keep_end(&mut state.0, LIVE_LOG_BYTES);
        }
        if let Some(step) = step {
            state.1 = Some(step.clone());
        }
        // No follower is not an error.
        let _ = self.live.events.send(event);
    }

    async fn write(&mut self, text: &str) {
        self.send(BuildEvent::Log(text.to_owned()), Some(text), None);
        self.pending.push_str(text);
        if self.flushed.elapsed() >= FLUSH_EVERY || self.pending.len() > FLUSH_BYTES {
            self.flush().await;
        }
    }

    async fn step(&mut self, step: BuildStep) {
        let line = format!("==> [{}/{}] {}\n", step.index, step.total, step.name);
        self.send(BuildEvent::Step(step.clone()), None, Some(&step));
        self.write(&line).await;
    }

    async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let text = std::mem::take(&mut self.pending);
        if let Err(error) = self
            .templates
            .store
            .append_build_log(self.hash, &text)
            .await
        {
            tracing::warn!(%error, spec_hash = self.hash, "writing a template build's log failed");
        }
        self.flushed = Instant::now();
    }
}

impl Templates {
    /// Builds `spec` (known by `hash`) for token `by`, recording the
    /// outcome; never fails itself.
    pub(super) async fn run_build(&self, hash: &str, spec: &TemplateSpec, by: &str, live: &Live) {
        let started = Instant::now();
        let mut log = Log {
            templates: self,
            hash,
            live,
            pending: String::new(),
            flushed: Instant::now(),
        };
        tracing::info!(template = %spec.name, spec_hash = hash, "template build started");
        let store = self.store.clone();
        let leased = hash.to_owned();
        let lease = tokio::spawn(async move {
            loop {
                tokio::time::sleep(BUILD_RENEW_EVERY).await;
                match store.renew_build(&leased, lease_until()).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(spec_hash = %leased, "a running build's lease was taken: it was failed as stopped");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(spec_hash = %leased, %error, "renewing a build's lease failed")
                    }
                }
            }
        });
        let outcome = self.build_steps(hash, spec, by, &mut log).await;
        lease.abort();
        let text = match &outcome {
            Ok(snapshot) => format!(
                "==> built in {:.1} s; image {snapshot}\n",
                started.elapsed().as_secs_f64()
            ),
            Err(error) => format!("==> the build failed: {error}\n"),
        };
        log.write(&text).await;
        log.flush().await;
        let ms = started.elapsed().as_millis() as i64;
        let recorded = match &outcome {
            Ok(snapshot) => self.store.finish_build(hash, Ok(snapshot), ms).await,
            Err(error) => self.store.finish_build(hash, Err(error), ms).await,
        };
        if let Err(error) = recorded {
            tracing::error!(%error, spec_hash = hash, "recording a template build's outcome failed");
        }
        match &outcome {
            Ok(snapshot) => {
                tracing::info!(template = %spec.name, spec_hash = hash, %snapshot, ms, "template built");
            }
            Err(error) => {
                tracing::warn!(template = %spec.name, spec_hash = hash, %error, "template build failed");
            }
        }
        log.send(BuildEvent::Done, None, None);
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(hash);
        // A template deleted or changed while it built leaves this build
        // unused.
        if let Err(error) = self.remove_orphans().await {
            tracing::warn!(%error, "removing unused template builds failed");
        }
    }

    /// The build's steps in a VM of its own; the snapshot id, or why not.
    async fn build_steps(
        &self,
        hash: &str,
        spec: &TemplateSpec,
        by: &str,
        log: &mut Log<'_>,
    ) -> Result<String, String> {
        let steps = steps(spec);
        let total = steps.len() as u32 + 2 + u32::from(spec.warm);
        let mut index = 1;
        log.step(BuildStep {
            index,
            total,
            name: "starting a build sandbox".into(),
        })
        .await;
        let vm = self
            .sandboxes
            .create(NewVm {
                vcpus: spec.vcpus.unwrap_or(DEFAULT_VCPUS),
                mem_mib: spec.mem_mib.unwrap_or(DEFAULT_MEM_MIB),
                disk_mib: spec.disk_mib.unwrap_or(DEFAULT_DISK_MIB),
                persistent: false,
                idle_timeout_secs: None,
                env: spec.env.clone().into_iter().collect(),
                repo_id: None,
                branch: None,
                created_by: BUILD_ACTOR.to_owned(),
                dev_server: None,
                node_labels: BTreeMap::new(),
                labels: BTreeMap::from([
                    (BUILD_ROLE.0.to_owned(), BUILD_ROLE.1.to_owned()),
                    (TEMPLATE_LABEL.to_owned(), spec.name.clone()),
                ]),
                ttl_secs: Some(BUILD_TTL_SECS),
                origin: None,
            })
            .await
            .map_err(|e| format!("starting the build sandbox failed: {e}"))?;
        let built = async {
            for step in steps {
                index += 1;
                log.step(BuildStep {
                    index,
                    total,
                    name: step.name.clone(),
                })
                .await;
                self.run_step(&vm.id, step, log).await?;
            }
            if let (true, Some(start)) = (spec.warm, &spec.start) {
                index += 1;
                log.step(BuildStep {
                    index,
                    total,
                    name: format!(
                        "warming: {} until port {} answers",
                        start.command, start.port
                    ),
                })
                .await;
                self.warm(&vm.id, spec, log).await?;
            }
            index += 1;
            log.step(BuildStep {
                index,
                total,
                name: "keeping the image (snapshot)".into(),
            })
            .await;
            let snapshot = self
                .sandboxes
                .snapshot(&vm.id, None, by, Some(hash))
                .await
                .map_err(|e| format!("keeping the image failed: {e}"))?;
            log.write(&format!(
                "    kept: {}{}\n",
                snapshot.kept,
                snapshot
                    .note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ))
            .await;
            Ok(snapshot.id)
        }
        .await;
        if let Err(error) = self.sandboxes.destroy(&vm.id).await {
            tracing::warn!(vm = %vm.id, %error, "a template build's sandbox could not be destroyed");
        }
        built
    }

    /// Runs one step, its output into the log; an error unless it exits 0.
    async fn run_step(&self, vm: &str, step: Step, log: &mut Log<'_>) -> Result<(), String> {
        let command = step.command.timeout(STEP_TIMEOUT);
        let mut exec = self
            .sandboxes
            .exec_stream(vm, command)
            .await
            .map_err(|e| format!("{}: {e}", step.name))?;
        let mut carry = Vec::new();
        loop {
            match exec
                .next()
                .await
                .map_err(|e| format!("{}: {e}", step.name))?
            {
                Some(ExecEvent::Stdout(bytes) | ExecEvent::Stderr(bytes)) => {
                    carry.extend_from_slice(&bytes);
                    let text = take_text(&mut carry);
                    if !text.is_empty() {
                        log.write(&text).await;
                    }
                }
                Some(ExecEvent::Exited(exited)) => {
                    if !carry.is_empty() {
                        log.write(&String::from_utf8_lossy(&carry)).await;
                    }
                    return match exited.status {
                        ExitStatus::Code(0) if !exited.timed_out => Ok(()),
                        _ if exited.timed_out => Err(format!(
                            "{} ran past {} minutes",
                            step.name,
                            STEP_TIMEOUT.as_secs() / 60
                        )),
                        ExitStatus::Code(code) => Err(format!("{} exited with {code}", step.name)),
                        ExitStatus::Signal(signal) => {
                            Err(format!("{} was killed by signal {signal}", step.name))
                        }
                    };
                }
                None => return Err(format!("{}: the output ended without an exit", step.name)),
            }
        }
    }

    /// Starts the spec's server in the background and waits until its port
    /// answers; an error (with the end of its output) if it exits first.
    async fn warm(&self, vm: &str, spec: &TemplateSpec, log: &mut Log<'_>) -> Result<(), String> {
        let Some(start) = &spec.start else {
            return Ok(());
        };
        let mut command = Command::shell(start.command.clone());
        if let Some(workdir) = &spec.workdir {
            command = command.cwd(workdir.clone());
        }
        let pid = self
            .sandboxes
            .spawn(vm, command)
            .await
            .map_err(|e| format!("starting {} failed: {e}", start.command))?;
        let deadline = Instant::now() + WARM_TIMEOUT;
        loop {
            if self.sandboxes.open_port(vm, start.port).await.is_ok() {
                log.write(&format!("    port {} answers\n", start.port))
                    .await;
                return Ok(());
            }
            let exited = self
                .sandboxes
                .processes(vm)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .find(|p| p.pid == pid)
                .and_then(|p| p.exit);
            if exited.is_some() || Instant::now() >= deadline {
                let mut output = self
                    .sandboxes
                    .process_output(vm, pid, 0, false)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut text = Vec::new();
                while let Ok(Some(chunk)) = output.next_chunk().await {
                    text.extend_from_slice(&chunk);
                    if text.len() > 64 * 1024 {
                        break;
                    }
                }
                log.write(&String::from_utf8_lossy(&text)).await;
                return Err(match exited {
                    Some(status) => format!(
                        "{} exited ({status:?}) before port {} answered",
                        start.command, start.port
                    ),
                    None => format!(
                        "port {} did not answer within {} s",
                        start.port,
                        WARM_TIMEOUT.as_secs()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The complete UTF-8 text at the front of `carry`, leaving a character cut
/// between reads for the next; bytes that are not UTF-8 are replaced.
fn take_text(carry: &mut Vec<u8>) -> String {
    let valid = match std::str::from_utf8(carry) {
        Ok(_) => carry.len(),
        Err(error) if error.error_len().is_none() => error.valid_up_to(),
        Err(_) => carry.len(),
    };
    let text = String::from_utf8_lossy(&carry[..valid]).into_owned();
    carry.drain(..valid);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_becomes_its_steps_in_order() {
        let spec = TemplateSpec {
            name: "py".into(),
            apt: vec!["python3-pytest".into()],
            pip: vec!["requests".into()],
            npm: vec!["typescript".into()],
            run: vec!["echo hi".into()],
            workdir: Some("/srv/app".into()),
            ..Default::default()
        };
        let steps = steps(&spec);
        let names: Vec<_> = steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "apt-get update",
                "apt-get install python3-pytest python3-pip",
                "apt-get clean",
                "pip install requests",
                "npm install --global typescript",
                "mkdir /srv/app",
                "echo hi",
            ]
        );
        // Packages are arguments after `--`, never options or shell text.
        assert_eq!(steps[1].command.argv.last().unwrap(), "python3-pip");
        assert!(steps[1].command.argv.contains(&"--".to_owned()));
        assert_eq!(steps[6].command.cwd.as_deref(), Some("/srv/app"));
        assert!(super::steps(&TemplateSpec::default()).is_empty());
    }

    #[test]
    fn text_is_taken_whole_characters_at_a_time() {
        let mut carry = "é".as_bytes()[..1].to_vec();
        assert_eq!(take_text(&mut carry), "");
        carry.extend_from_slice(&"é!".as_bytes()[1..]);
        assert_eq!(take_text(&mut carry), "é!");
        assert!(carry.is_empty());
        let mut log = "aé".repeat(10);
        keep_end(&mut log, 4);
        assert!(log.len() <= 4 && log.ends_with('é'));
    }
}
