//! Templates: images built from a spec, which VMs start from.
//!
//! A build runs in a sandbox of its own, like any untrusted code: a VM from
//! the forge's image with the spec's sizes and environment, whose package
//! downloads (`apt`, `pip`, `npm`) and `run` commands go out through the
//! egress proxy and its allow-list. Once every step passed (and, for a
//! `warm` template, its `start` command answers on its port), the VM is
//! kept as a snapshot (`vms/snapshots.rs`), the template's image; the build
//! VM is destroyed either way. VMs from the template are copies of that
//! snapshot: its files, and for a warm one its running server.
//!
//! Builds are keyed by the hash of what the spec builds ([`spec_hash`]:
//! everything but the name, and the forge image it starts from), one row
//! per hash in `template_builds`, so the same spec never builds twice;
//! posting a spec whose build failed builds it again. A build's output is
//! its log (the end kept, [`crate::store::MAX_BUILD_LOG_BYTES`]), streamed
//! live to followers ([`Templates::follow`]) with each step as it starts.
//! A build is leased to the forge process running it, which renews the
//! lease while it runs; the server holding the duties fails a build whose
//! lease lapsed (its process stopped) and destroys its sandbox.

mod build;

pub use build::BUILD_ACTOR;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use api_types::TemplateState;
use api_types::templates::{BuildStep, DEFAULT_BASE, TemplateSpec};
use api_types::vms::DevServerSpec;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use crate::store::{Store, TemplateRow};
use crate::vms::snapshots::{Origin, check_name};
use crate::vms::{Sandboxes, VmError};

/// Most packages one list of a spec may name.
pub const MAX_PACKAGES: usize = 200;
/// Most `run` commands, and the longest one.
pub const MAX_RUN_COMMANDS: usize = 50;
pub const MAX_COMMAND_BYTES: usize = 8 * 1024;
/// Most environment variables a spec sets.
pub const MAX_ENV: usize = 64;
/// Templates one token that is not an admin may have.
pub const MAX_TEMPLATES_PER_TOKEN: i64 = 20;
/// Builds one token that is not an admin may have running at once.
pub const MAX_BUILDS_PER_TOKEN: usize = 2;
/// A name no template may take: the pool of the forge's own image.
pub const RESERVED_NAME: &str = crate::vms::pool::DEFAULT_POOL;
/// How often the server holding the duties fails lapsed builds and reads
/// the templates' pools.
pub const DUTIES_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// What a follower of a build receives.
#[derive(Debug, Clone)]
pub enum BuildEvent {
    Step(BuildStep),
    /// Output of the build's commands (and the step lines), as text.
    Log(String),
    /// The build ended; the template's view says how.
    Done,
}

/// A build in progress: its log so far (the end, bounded) and the channel
/// its events go out on. Both change under one lock, so a follower that
/// copies the log and subscribes under it misses and repeats nothing.
struct Live {
    state: Mutex<(String, Option<BuildStep>)>,
    events: broadcast::Sender<BuildEvent>,
    /// The token whose post started it.
    by: String,
}

/// Templates and their builds.
pub struct Templates {
    store: Store,
    sandboxes: Arc<Sandboxes>,
    live: Mutex<HashMap<String, Arc<Live>>>,
}

/// What [`Templates::follow`] gives: the log so far, the step under way,
/// and the events after them (`None` when the build is not running).
pub type Following = (
    String,
    Option<BuildStep>,
    Option<broadcast::Receiver<BuildEvent>>,
);

impl Templates {
    pub fn new(store: Store, sandboxes: Arc<Sandboxes>) -> Arc<Self> {
        Arc::new(Self {
            store,
            sandboxes,
            live: Mutex::new(HashMap::new()),
        })
    }

    /// When this server takes up the duties (`store/locks.rs`): builds a
    /// stopped forge process left half done are failed, images no build
    /// records and builds no template names any more are removed, and the
    /// templates' pools are set from the database.
    pub async fn recover(&self) -> Result<(), VmError> {
        self.fail_lapsed().await?;
        for image in self.store.unreferenced_images().await? {
            tracing::info!(snapshot = %image.id, "an image no template build records is deleted");
            if let Err(error) = self.sandboxes.delete_snapshot(&image).await {
                tracing::warn!(snapshot = %image.id, %error, "an unrecorded image could not be deleted");
            }
        }
        self.sync_pools().await?;
        self.remove_orphans().await
    }

    /// Fails the builds whose process stopped (their lease lapsed) and
    /// destroys the build sandboxes of builds no longer running, wherever
    /// they ran. The server holding the duties calls it every
    /// [`DUTIES_EVERY`].
    pub async fn fail_lapsed(&self) -> Result<(), VmError> {
        let failed = self
            .store
            .fail_interrupted_builds(crate::store::unix_now())
            .await?;
        if !failed.is_empty() {
            tracing::warn!(
                count = failed.len(),
                "template builds whose forge process stopped are marked failed"
            );
        }
        for vm in self.store.vms_created_by(build::BUILD_ACTOR).await? {
            if self.is_building(&vm).await? {
                continue;
            }
            if let Err(error) = self.sandboxes.destroy(&vm.id).await {
                tracing::warn!(vm = %vm.id, %error, "an interrupted build's sandbox could not be destroyed");
            }
        }
        Ok(())
    }

    /// Whether build sandbox `vm`'s build is still running (on any
    /// server): its template's build is `building`.
    async fn is_building(&self, vm: &crate::store::VmRow) -> Result<bool, VmError> {
        let Some(name) = vm.labels().get(build::TEMPLATE_LABEL).cloned() else {
            return Ok(false);
        };
        let Some(template) = self.store.template(&name).await? else {
            return Ok(false);
        };
        Ok(self
            .store
            .template_build(&template.spec_hash)
            .await?
            .is_some_and(|build| build.state == TemplateState::Building))
    }

    /// Sets every template's pool from the database, as posted through
    /// whichever server; a template gone empties its pool.
    pub async fn sync_pools(&self) -> Result<(), VmError> {
        let mut pools = Vec::new();
        for template in self.store.templates().await? {
            if let Ok(spec) = serde_json::from_str::<TemplateSpec>(&template.spec) {
                pools.push((template.name, spec.pool));
            }
        }
        self.sandboxes.set_template_pools(pools);
        Ok(())
    }

    /// Removes builds no template names, then their snapshots (the build
    /// refers to its snapshot, so it goes first); one that fails is
    /// logged and the others go on.
    async fn remove_orphans(&self) -> Result<(), VmError> {
        for build in self.store.orphan_builds().await? {
            let removed = async {
                let snapshot = match &build.snapshot_id {
                    Some(id) => self.store.snapshot(id).await?,
                    None => None,
                };
                self.store.delete_build(&build.spec_hash).await?;
                if let Some(snapshot) = snapshot {
                    self.sandboxes.delete_snapshot(&snapshot).await?;
                }
                Ok::<_, VmError>(())
            };
            match removed.await {
                Ok(()) => {
                    tracing::info!(spec_hash = %build.spec_hash, "an unused template build was removed");
                }
                Err(error) => {
                    tracing::warn!(spec_hash = %build.spec_hash, %error, "removing an unused template build failed");
                }
            }
        }
        Ok(())
    }

    /// Records template `spec` for token `by` and starts its build unless
    /// one of the same hash exists (`reused`). Returns the row and whether
    /// an earlier build is used. A token that is not an `admin` may change
    /// only its own templates, have [`MAX_TEMPLATES_PER_TOKEN`] of them and
    /// [`MAX_BUILDS_PER_TOKEN`] building, and a build counts against its
    /// quota of live VMs.
    pub async fn put(
        self: &Arc<Self>,
        spec: TemplateSpec,
        by: &str,
        admin: bool,
    ) -> Result<(TemplateRow, bool), VmError> {
        check_spec(&spec)?;
        let image = self.sandboxes.image_identity()?;
        let hash = spec_hash(&spec, &image);
        let now = crate::store::now();
        let existing = self.store.template(&spec.name).await?;
        let not_yours =
            || VmError::Conflict(format!("template {} belongs to another token", spec.name));
        if let Some(existing) = &existing
            && !admin
            && existing.created_by != by
        {
            return Err(not_yours());
        }
        if !admin {
            let mine = self.store.count_templates_by(by).await?;
            if existing.is_none() && mine >= MAX_TEMPLATES_PER_TOKEN {
                return Err(VmError::Quota {
                    what: "templates",
                    live: mine as usize,
                    quota: MAX_TEMPLATES_PER_TOKEN as usize,
                    advice: "delete one",
                });
            }
            let building = self
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter(|live| live.by == by)
                .count();
            if building >= MAX_BUILDS_PER_TOKEN {
                return Err(VmError::Quota {
                    what: "template builds running",
                    live: building,
                    quota: MAX_BUILDS_PER_TOKEN,
                    advice: "wait for one to end",
                });
            }
            self.sandboxes.check_quota(by, 1).await?;
        }
        let row = TemplateRow {
            name: spec.name.clone(),
            spec: serde_json::to_string(&spec).unwrap_or_default(),
            spec_hash: hash.clone(),
            created_by: existing
                .as_ref()
                .map_or_else(|| by.to_owned(), |row| row.created_by.clone()),
            created_at: existing.map_or_else(|| now.clone(), |row| row.created_at),
            updated_at: now,
        };
        let Some(start) = self
            .store
            .put_template(&row, by, admin, build::lease_until())
            .await?
        else {
            return Err(not_yours());
        };
        self.sandboxes.set_template_pool(&spec.name, spec.pool);
        if start {
            let live = Arc::new(Live {
                state: Mutex::new((String::new(), None)),
                events: broadcast::channel(1024).0,
                by: by.to_owned(),
            });
            self.live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(hash.clone(), live.clone());
            let templates = self.clone();
            let by = by.to_owned();
            tokio::spawn(async move {
                templates.run_build(&hash, &spec, &by, &live).await;
            });
        }
        // A spec changed under its name may leave its old build unused.
        if let Err(error) = self.remove_orphans().await {
            tracing::warn!(%error, "removing unused template builds failed");
        }
        Ok((row, !start))
    }

    /// Deletes template `name`; its image goes with it unless another
    /// template builds the same spec. `false` when there is none.
    pub async fn delete(&self, name: &str) -> Result<bool, VmError> {
        if self.store.template(name).await?.is_none() {
            return Ok(false);
        }
        self.sandboxes.set_template_pool(name, None);
        if let Some(snapshot) = self.store.delete_template(name).await? {
            self.sandboxes.delete_snapshot(&snapshot).await?;
        }
        Ok(true)
    }

    /// The log of the build of `spec_hash` so far, the step under way, and
    /// when it runs, its events from here on.
    pub async fn follow(&self, spec_hash: &str) -> Result<Following, VmError> {
        let live = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(spec_hash)
            .cloned();
        if let Some(live) = live {
            let state = live.state.lock().unwrap_or_else(|p| p.into_inner());
            return Ok((
                state.0.clone(),
                state.1.clone(),
                Some(live.events.subscribe()),
            ));
        }
        let build = self.store.template_build(spec_hash).await?;
        Ok((build.map(|b| b.log).unwrap_or_default(), None, None))
    }
}

/// The VM origin and dev server of template `name` for a new VM; an error
/// says why it cannot start one (none, still building, failed).
pub async fn origin(store: &Store, name: &str) -> Result<(Origin, Option<DevServerSpec>), VmError> {
    let missing = || VmError::Missing(format!("template {name} does not exist"));
    let template = store.template(name).await?.ok_or_else(missing)?;
    let spec: TemplateSpec = serde_json::from_str(&template.spec).map_err(|e| {
        VmError::Conflict(format!("template {name}'s stored spec is unreadable: {e}"))
    })?;
    let build = store
        .template_build(&template.spec_hash)
        .await?
        .ok_or_else(missing)?;
    let snapshot = match (build.state, &build.snapshot_id) {
        (TemplateState::Ready, Some(id)) => store.snapshot(id).await?,
        (TemplateState::Failed, _) => {
            return Err(VmError::Conflict(format!(
                "template {name}'s build failed ({}); post its spec again to rebuild it",
                build.error.unwrap_or_default()
            )));
        }
        _ => {
            return Err(VmError::Conflict(format!(
                "template {name} is still building; follow GET /v1/templates/{name}/build?follow=true"
            )));
        }
    };
    let snapshot = snapshot.ok_or_else(|| {
        VmError::Conflict(format!(
            "template {name}'s image is gone; post its spec again"
        ))
    })?;
    // A warm template's server runs already; a cold one's is started.
    let start = spec.start.clone().filter(|_| !spec.warm);
    Ok((
        Origin {
            snapshot,
            template: Some(name.to_owned()),
            workdir: spec.workdir.clone(),
        },
        start,
    ))
}

/// Refuses template `name` for a repository's pipelines unless a forge
/// admin's token made it. Template names are the forge's, first come first
/// served, and their owner may change the spec at any time: a pipeline
/// runs with its repository's checkout and push access, so it trusts only
/// templates an admin controls.
pub async fn check_pipeline_template(store: &Store, name: &str) -> Result<(), VmError> {
    let template = store
        .template(name)
        .await?
        .ok_or_else(|| VmError::Missing(format!("template {name} does not exist")))?;
    let by_admin = store
        .token_by_id(&template.created_by)
        .await?
        .is_some_and(|token| {
            token.repo_id.is_none()
                && crate::auth::parse_scopes([token.scopes.as_str()])
                    .is_ok_and(|scopes| scopes.contains(&crate::auth::Scope::Admin))
        });
    if by_admin {
        Ok(())
    } else {
        Err(VmError::Invalid(format!(
            "template {name} was not made by a forge admin's token; pipelines start only from admins' templates"
        )))
    }
}

/// The hash a build is known by: what the spec builds (not its name) and
/// the image it starts from.
pub fn spec_hash(spec: &TemplateSpec, image: &str) -> String {
    let unnamed = TemplateSpec {
        name: String::new(),
        pool: None,
        base: Some(spec.base.clone().unwrap_or_else(|| DEFAULT_BASE.to_owned())),
        ..spec.clone()
    };
    let mut hasher = Sha256::new();
    hasher.update(b"template 1\n");
    hasher.update(image.as_bytes());
    hasher.update(b"\n");
    // Struct fields serialise in declaration order and maps sorted: the
    // same spec always gives the same bytes.
    hasher.update(serde_json::to_vec(&unnamed).unwrap_or_default());
    hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A package name as a list may give it: no option (`-…`), no space or
/// control character, and short.
fn check_package(list: &str, package: &str) -> Result<(), VmError> {
    let fine = !package.is_empty()
        && package.len() <= 214
        && !package.starts_with('-')
        && !package.chars().any(|c| c.is_whitespace() || c.is_control());
    if fine {
        Ok(())
    } else {
        Err(VmError::Invalid(format!(
            "{list} package {package:?} is not a package name"
        )))
    }
}

/// Refuses a spec that cannot build, naming the field.
pub fn check_spec(spec: &TemplateSpec) -> Result<(), VmError> {
    check_name("template", &spec.name)?;
    if spec.name == RESERVED_NAME {
        return Err(VmError::Invalid(format!(
            "{RESERVED_NAME:?} names the pool of the forge's own image: choose another template name"
        )));
    }
    if let Some(base) = &spec.base
        && base != DEFAULT_BASE
    {
        return Err(VmError::Invalid(format!(
            "base {base:?} is not offered: the only base is {DEFAULT_BASE:?}"
        )));
    }
    for (list, packages) in [("apt", &spec.apt), ("npm", &spec.npm), ("pip", &spec.pip)] {
        if packages.len() > MAX_PACKAGES {
            return Err(VmError::Invalid(format!(
                "{list} names {} packages, at most {MAX_PACKAGES} are allowed",
                packages.len()
            )));
        }
        for package in packages {
            check_package(list, package)?;
        }
    }
    if spec.run.len() > MAX_RUN_COMMANDS {
        return Err(VmError::Invalid(format!(
            "run has {} commands, at most {MAX_RUN_COMMANDS} are allowed",
            spec.run.len()
        )));
    }
    if let Some(command) = spec
        .run
        .iter()
        .find(|c| c.trim().is_empty() || c.len() > MAX_COMMAND_BYTES || c.contains('\0'))
    {
        return Err(VmError::Invalid(format!(
            "run command {:?} must be non-empty, at most {MAX_COMMAND_BYTES} bytes, without NUL",
            command.chars().take(80).collect::<String>()
        )));
    }
    if spec.env.len() > MAX_ENV {
        return Err(VmError::Invalid(format!(
            "env sets {} variables, at most {MAX_ENV} are allowed",
            spec.env.len()
        )));
    }
    for (key, value) in &spec.env {
        let name_ok = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok || value.contains('\0') || value.len() > MAX_COMMAND_BYTES {
            return Err(VmError::Invalid(format!(
                "env {key:?} must be a variable name ([A-Za-z_][A-Za-z0-9_]*) with a value of at most {MAX_COMMAND_BYTES} bytes"
            )));
        }
    }
    if let Some(workdir) = &spec.workdir {
        let fine = workdir.starts_with('/')
            && workdir.len() <= 1024
            && !workdir.split('/').any(|part| part == ".." || part == ".")
            && !workdir.chars().any(char::is_control);
        if !fine {
            return Err(VmError::Invalid(format!(
                "workdir {workdir:?} must be an absolute path without '.' or '..'"
            )));
        }
    }
    if let Some(start) = &spec.start
        && (start.command.trim().is_empty() || start.port == 0)
    {
        return Err(VmError::Invalid(
            "start needs a command and a port (1 to 65535)".into(),
        ));
    }
    if spec
        .pool
        .is_some_and(|count| count > crate::vms::pool::MAX_SPEC_POOL)
    {
        return Err(VmError::Invalid(format!(
            "pool may ask for at most {} sandboxes; --warm-pool {}=N may ask for more",
            crate::vms::pool::MAX_SPEC_POOL,
            spec.name
        )));
    }
    if spec.warm && spec.start.is_none() {
        return Err(VmError::Invalid(
            "warm needs start: the command whose port must answer before the image is kept".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> TemplateSpec {
        TemplateSpec {
            name: name.into(),
            apt: vec!["python3-pytest".into()],
            pip: vec!["requests".into()],
            ..Default::default()
        }
    }

    #[test]
    fn the_hash_is_of_what_builds_not_the_name() {
        let image = "/var/lib/forge/images/abc/rootfs";
        assert_eq!(spec_hash(&spec("a"), image), spec_hash(&spec("b"), image));
        let explicit = TemplateSpec {
            base: Some(DEFAULT_BASE.into()),
            ..spec("a")
        };
        assert_eq!(spec_hash(&explicit, image), spec_hash(&spec("a"), image));
        let more = TemplateSpec {
            pip: vec!["requests".into(), "rich".into()],
            ..spec("a")
        };
        assert_ne!(spec_hash(&more, image), spec_hash(&spec("a"), image));
        assert_ne!(
            spec_hash(&spec("a"), "/other"),
            spec_hash(&spec("a"), image)
        );
        let pooled = TemplateSpec {
            pool: Some(4),
            ..spec("a")
        };
        assert_eq!(spec_hash(&pooled, image), spec_hash(&spec("a"), image));
    }

    #[test]
    fn specs_are_checked_field_by_field() {
        assert!(check_spec(&spec("py")).is_ok());
        let refused = |spec: TemplateSpec, needle: &str| {
            let message = check_spec(&spec).expect_err("refused").to_string();
            assert!(message.contains(needle), "{message}");
        };
        refused(spec("bad name"), "template name");
        refused(spec("default"), "pool of the forge's own image");
        refused(
            TemplateSpec {
                base: Some("alpine".into()),
                ..spec("a")
            },
            "base",
        );
        refused(
            TemplateSpec {
                apt: vec!["--allow-unauthenticated".into()],
                ..spec("a")
            },
            "apt package",
        );
        refused(
            TemplateSpec {
                pip: vec!["requests rich".into()],
                ..spec("a")
            },
            "pip package",
        );
        refused(
            TemplateSpec {
                npm: vec!["x".into(); MAX_PACKAGES + 1],
                ..spec("a")
            },
            "at most",
        );
        refused(
            TemplateSpec {
                run: vec!["  ".into()],
                ..spec("a")
            },
            "run command",
        );
        refused(
            TemplateSpec {
                workdir: Some("/srv/../etc".into()),
                ..spec("a")
            },
            "workdir",
        );
        refused(
            TemplateSpec {
                env: [("1X".to_owned(), "y".to_owned())].into(),
                ..spec("a")
            },
            "env",
        );
        refused(
            TemplateSpec {
                warm: true,
                ..spec("a")
            },
            "warm needs start",
        );
    }
}
