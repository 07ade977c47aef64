//! The steps that perform a [`Plan`], through [`Effects`] so that the order
//! and the handling of failures do not depend on a real GitHub. In order:
//! 1. new divergences are announced (`sync.diverged`);
//! 2. GitHub → forge: each `SetForge` is a compare-and-swap of the forge's
//!    ref; one that fails (a concurrent push moved it, a lock) is recorded
//!    against its ref and the others go on;
//! 3. the forge updates that landed become events marked as GitHub's; if
//!    that fails the pass ends with the error, nothing more is pushed nor
//!    stored, and the next pass sees the moved refs as in sync;
//! 4. forge → GitHub: one `git push` without force carries every
//!    `SetGithub`, and git's porcelain output tells which refs landed; a
//!    ref GitHub refused is recorded against that ref. For each that
//!    landed, the mirror of GitHub's refs is moved to match; a mirror that
//!    cannot be moved is recorded against its ref too (GitHub has the
//!    update; the next fetch repairs the mirror);
//! 5. every ref gets the row to store: settled as planned, or `error`
//!    with what failed.

use std::collections::BTreeMap;

use super::plan::{Action, ERROR, Plan, RefPlan};
use super::{SyncError, SyncReport};
use crate::git::pktline::Command as RefUpdate;
use crate::git::redact_credentials;
use crate::store::GithubRefState;

/// The value git uses for an absent ref in a ref update.
pub(super) const ZERO: &str = "0000000000000000000000000000000000000000";

/// What applying a plan does to the forge's repository, GitHub and the
/// event log.
pub(super) trait Effects {
    /// Moves the forge's ref `name` from `old` to `new` ([`ZERO`]: absent),
    /// only if it still is at `old`.
    async fn set_forge_ref(&self, name: &str, old: &str, new: &str) -> Result<(), SyncError>;

    /// Records the events of the forge updates that landed.
    async fn record_forge_updates(&self, applied: &[RefUpdate]) -> Result<(), SyncError>;

    /// Pushes every (ref, commit) to GitHub in one `git push --porcelain`
    /// (no commit: delete the ref); git's output, or how it failed.
    async fn push(&self, updates: &[(&str, Option<&str>)]) -> Result<String, SyncError>;

    /// Sets the mirror of GitHub's ref `name` to `new` (`None`: deletes it).
    async fn set_mirror_ref(&self, name: &str, new: Option<&str>) -> Result<(), SyncError>;

    /// Records `sync.diverged`; a failure is logged, not returned: the ref
    /// is stored as diverged whether the event was recorded or not.
    async fn announce_diverged(&self, name: &str, forge: Option<&str>, github: Option<&str>);
}

/// What a pass did and the rows to store, in ref name order.
#[derive(Debug)]
pub(super) struct Applied {
    pub report: SyncReport,
    pub rows: Vec<GithubRefState>,
}

/// Performs `plan` (see the module docs); rows are stamped `at`.
pub(super) async fn apply<E: Effects>(
    effects: &E,
    plan: &Plan,
    at: &str,
) -> Result<Applied, SyncError> {
    let mut pass = Pass {
        rows: plan
            .refs
            .iter()
            .map(|planned| (planned.name.as_str(), planned.settled(at)))
            .collect(),
        report: SyncReport::default(),
        at,
    };
    for planned in &plan.refs {
        if let Action::MarkDiverged { announce } = planned.action {
            if announce {
                effects
                    .announce_diverged(
                        &planned.name,
                        planned.forge.as_deref(),
                        planned.github.as_deref(),
                    )
                    .await;
            }
            pass.report.diverged.push(planned.name.clone());
        }
    }
    update_forge(effects, plan, &mut pass).await?;
    update_github(effects, plan, &mut pass).await;
    Ok(Applied {
        report: pass.report,
        rows: pass.rows.into_values().collect(),
    })
}

/// The rows and report of a pass being applied.
struct Pass<'a> {
    rows: BTreeMap<&'a str, GithubRefState>,
    report: SyncReport,
    at: &'a str,
}

impl<'a> Pass<'a> {
    /// Records that `planned`'s action failed: the ref keeps the values it
    /// was seen with, so the next pass decides again.
    fn fail(&mut self, planned: &'a RefPlan, error: String) {
        self.record_failure(planned, planned.failed(self.at, error));
    }

    fn record_failure(&mut self, planned: &'a RefPlan, row: GithubRefState) {
        let error = row.last_error.clone().unwrap_or_default();
        tracing::warn!(
            r#ref = %planned.name,
            reason = planned.reason.describe(),
            %error,
            "syncing a ref with GitHub failed"
        );
        self.report.failed.insert(planned.name.clone(), error);
        self.rows.insert(planned.name.as_str(), row);
    }
}

/// GitHub → forge, then the events of what landed.
async fn update_forge<'a, E: Effects>(
    effects: &E,
    plan: &'a Plan,
    pass: &mut Pass<'a>,
) -> Result<(), SyncError> {
    let mut applied = Vec::new();
    for planned in &plan.refs {
        let Action::SetForge { old, new } = &planned.action else {
            continue;
        };
        let (old, new) = (
            old.as_deref().unwrap_or(ZERO),
            new.as_deref().unwrap_or(ZERO),
        );
        match effects.set_forge_ref(&planned.name, old, new).await {
            Ok(()) => applied.push(RefUpdate {
                old: old.to_owned(),
                new: new.to_owned(),
                refname: planned.name.clone(),
            }),
            Err(error) => pass.fail(planned, error.to_string()),
        }
    }
    pass.report.to_forge = applied.len();
    if !applied.is_empty() {
        effects.record_forge_updates(&applied).await?;
    }
    Ok(())
}

/// Forge → GitHub, then the mirror of each ref that landed.
async fn update_github<'a, E: Effects>(effects: &E, plan: &'a Plan, pass: &mut Pass<'a>) {
    let pushes: Vec<(&RefPlan, Option<&str>)> = plan
        .refs
        .iter()
        .filter_map(|planned| match &planned.action {
            Action::SetGithub { new } => Some((planned, new.as_deref())),
            _ => None,
        })
        .collect();
    if pushes.is_empty() {
        return;
    }
    let updates: Vec<(&str, Option<&str>)> = pushes
        .iter()
        .map(|(planned, new)| (planned.name.as_str(), *new))
        .collect();
    let outcome = effects.push(&updates).await;
    // A push that fails for some refs still lands the others; git says
    // which in its porcelain output, kept in the error.
    let output = match &outcome {
        Ok(out) => out.as_str(),
        Err(SyncError::Git { stderr, .. }) => stderr.as_str(),
        Err(_) => "",
    };
    for (planned, new) in pushes {
        if outcome.is_err() && !pushed(output, &planned.name) {
            pass.fail(
                planned,
                match &outcome {
                    Err(error) => redact_credentials(&error.to_string()),
                    Ok(_) => "GitHub rejected the update".into(),
                },
            );
            continue;
        }
        pass.report.to_github += 1;
        if let Err(error) = effects.set_mirror_ref(&planned.name, new).await {
            let mut row = planned.settled(pass.at);
            row.state = ERROR;
            row.last_error = Some(format!(
                "GitHub took the update, but moving the forge's mirror of it failed: {error}"
            ));
            pass.record_failure(planned, row);
        }
    }
}

/// Whether git's porcelain push output reports `name` as updated.
fn pushed(output: &str, name: &str) -> bool {
    output.lines().any(|line| {
        let mut parts = line.split('\t');
        let flag = parts.next().unwrap_or("");
        let refs = parts.next().unwrap_or("");
        refs.ends_with(&format!(":{name}")) && matches!(flag, " " | "*" | "-" | "=")
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use super::super::plan::{self, DIVERGED, IN_SYNC, Lineage, Snapshot};
    use super::*;

    /// A forge and a GitHub that remember what was done to them and fail
    /// where told to, the way git does.
    #[derive(Default)]
    struct Sides {
        /// Forge refs whose update fails, with git's complaint.
        locked: BTreeMap<String, String>,
        /// Refs GitHub rejects in a push.
        rejected: BTreeSet<String>,
        /// Refs whose mirror cannot be moved.
        stuck_mirrors: BTreeSet<String>,
        /// Whether `git push` cannot run at all.
        push_unavailable: bool,
        /// Whether recording events fails.
        events_unavailable: bool,
        done: Mutex<Vec<String>>,
    }

    impl Sides {
        fn note(&self, what: String) {
            self.done
                .lock()
                .expect("no test thread panicked")
                .push(what);
        }

        fn done(&self) -> Vec<String> {
            self.done.lock().expect("no test thread panicked").clone()
        }
    }

    impl Effects for Sides {
        async fn set_forge_ref(&self, name: &str, old: &str, new: &str) -> Result<(), SyncError> {
            if let Some(stderr) = self.locked.get(name) {
                return Err(SyncError::Git {
                    what: "update-ref",
                    stderr: stderr.clone(),
                });
            }
            self.note(format!("forge {name} {old}..{new}"));
            Ok(())
        }

        async fn record_forge_updates(&self, applied: &[RefUpdate]) -> Result<(), SyncError> {
            if self.events_unavailable {
                return Err(SyncError::Inspect("the repository is unreadable".into()));
            }
            let names: Vec<&str> = applied.iter().map(|u| u.refname.as_str()).collect();
            self.note(format!("events {}", names.join(" ")));
            Ok(())
        }

        async fn push(&self, updates: &[(&str, Option<&str>)]) -> Result<String, SyncError> {
            if self.push_unavailable {
                return Err(SyncError::Spawn(std::io::Error::other("no git")));
            }
            let mut output = String::from("To http://github.invalid/octo/app.git\n");
            for (name, new) in updates {
                let new = new.unwrap_or("");
                if self.rejected.contains(*name) {
                    output.push_str(&format!("!\t{new}:{name}\t[rejected] (fetch first)\n"));
                } else {
                    self.note(format!("github {name} {new}"));
                    output.push_str(&format!(" \t{new}:{name}\t{new}\n"));
                }
            }
            output.push_str("Done\n");
            if updates
                .iter()
                .any(|(name, _)| self.rejected.contains(*name))
            {
                return Err(SyncError::Git {
                    what: "push",
                    stderr: output,
                });
            }
            Ok(output)
        }

        async fn set_mirror_ref(&self, name: &str, new: Option<&str>) -> Result<(), SyncError> {
            if self.stuck_mirrors.contains(name) {
                return Err(SyncError::Git {
                    what: "update-ref",
                    stderr: format!("cannot lock ref '{name}'"),
                });
            }
            self.note(format!("mirror {name} {}", new.unwrap_or("-")));
            Ok(())
        }

        async fn announce_diverged(&self, name: &str, _: Option<&str>, _: Option<&str>) {
            self.note(format!("diverged {name}"));
        }
    }

    /// `dev` and `main` are behind GitHub, `feature` and `v1` are ahead of
    /// it, `release` diverged.
    fn busy_pass() -> Plan {
        let mut snapshot = Snapshot::default();
        for (name, forge, github, lineage) in [
            ("refs/heads/dev", "d1", "d2", Lineage::ForgeBehind),
            ("refs/heads/main", "m1", "m2", Lineage::ForgeBehind),
            ("refs/heads/feature", "f2", "f1", Lineage::GithubBehind),
            ("refs/tags/v1", "t2", "t1", Lineage::GithubBehind),
            ("refs/heads/release", "r1", "r2", Lineage::Unrelated),
        ] {
            snapshot.forge.insert(name.into(), forge.into());
            snapshot.github.insert(name.into(), github.into());
            snapshot.lineage.insert(name.into(), lineage);
        }
        plan::plan(&snapshot)
    }

    fn row<'a>(applied: &'a Applied, name: &str) -> &'a GithubRefState {
        let found = applied.rows.iter().find(|row| row.ref_name == name);
        found.unwrap_or_else(|| panic!("no row for {name}: {:?}", applied.rows))
    }

    fn shas(row: &GithubRefState) -> (Option<&str>, Option<&str>, Option<&str>) {
        (
            row.forge_sha.as_deref(),
            row.github_sha.as_deref(),
            row.synced_sha.as_deref(),
        )
    }

    #[tokio::test]
    async fn every_action_of_a_plan_is_performed_in_order() {
        let sides = Sides::default();
        let applied = apply(&sides, &busy_pass(), "now").await.expect("apply");
        assert_eq!(
            sides.done(),
            [
                "diverged refs/heads/release",
                "forge refs/heads/dev d1..d2",
                "forge refs/heads/main m1..m2",
                "events refs/heads/dev refs/heads/main",
                "github refs/heads/feature f2",
                "github refs/tags/v1 t2",
                "mirror refs/heads/feature f2",
                "mirror refs/tags/v1 t2",
            ]
        );
        assert_eq!((applied.report.to_forge, applied.report.to_github), (2, 2));
        assert_eq!(applied.report.diverged, ["refs/heads/release"]);
        assert!(applied.report.failed.is_empty());
        assert_eq!(row(&applied, "refs/heads/main").state, IN_SYNC);
        assert_eq!(row(&applied, "refs/heads/release").state, DIVERGED);
        let names: Vec<&str> = applied.rows.iter().map(|r| r.ref_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "refs/heads/dev",
                "refs/heads/feature",
                "refs/heads/main",
                "refs/heads/release",
                "refs/tags/v1"
            ]
        );
    }

    #[tokio::test]
    async fn a_failing_forge_update_is_recorded_against_its_ref_and_the_others_still_apply() {
        let sides = Sides {
            locked: [(
                "refs/heads/dev".to_owned(),
                "cannot lock ref 'refs/heads/dev': is at d3 but expected d1".to_owned(),
            )]
            .into(),
            ..Sides::default()
        };
        let applied = apply(&sides, &busy_pass(), "now").await.expect("apply");
        let dev = row(&applied, "refs/heads/dev");
        assert_eq!(dev.state, ERROR);
        assert_eq!(
            dev.last_error.as_deref(),
            Some(
                "git update-ref failed: cannot lock ref 'refs/heads/dev': is at d3 but expected d1"
            )
        );
        assert_eq!(shas(dev), (Some("d1"), Some("d2"), None), "as it was seen");
        assert_eq!(
            applied.report.failed.keys().collect::<Vec<_>>(),
            ["refs/heads/dev"]
        );
        let main = row(&applied, "refs/heads/main");
        assert_eq!(main.state, IN_SYNC);
        assert_eq!(shas(main), (Some("m2"), Some("m2"), Some("m2")));
        assert_eq!(applied.report.to_forge, 1);
        assert!(
            sides.done().contains(&"events refs/heads/main".to_owned()),
            "only what landed becomes an event: {:?}",
            sides.done()
        );
        assert_eq!(applied.report.to_github, 2, "pushes still go out");
        assert_eq!(row(&applied, "refs/heads/feature").state, IN_SYNC);
    }

    #[tokio::test]
    async fn a_ref_github_rejects_is_recorded_and_the_others_of_the_push_land() {
        let sides = Sides {
            rejected: ["refs/heads/feature".to_owned()].into(),
            ..Sides::default()
        };
        let applied = apply(&sides, &busy_pass(), "now").await.expect("apply");
        let feature = row(&applied, "refs/heads/feature");
        assert_eq!(feature.state, ERROR);
        assert!(
            feature
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("[rejected]")),
            "{feature:?}"
        );
        assert_eq!(shas(feature), (Some("f2"), Some("f1"), None));
        let v1 = row(&applied, "refs/tags/v1");
        assert_eq!(v1.state, IN_SYNC);
        assert_eq!(shas(v1), (Some("t2"), Some("t2"), Some("t2")));
        assert_eq!(applied.report.to_github, 1);
        assert!(
            !sides
                .done()
                .contains(&"mirror refs/heads/feature f2".to_owned()),
            "the mirror keeps GitHub's value"
        );
    }

    #[tokio::test]
    async fn a_mirror_that_cannot_follow_a_landed_push_is_recorded_against_its_ref() {
        let sides = Sides {
            stuck_mirrors: ["refs/heads/feature".to_owned()].into(),
            ..Sides::default()
        };
        let applied = apply(&sides, &busy_pass(), "now").await.expect("apply");
        let feature = row(&applied, "refs/heads/feature");
        assert_eq!(feature.state, ERROR);
        assert_eq!(
            shas(feature),
            (Some("f2"), Some("f2"), Some("f2")),
            "GitHub has the commit"
        );
        assert!(
            feature
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("mirror") && e.contains("cannot lock ref")),
            "{feature:?}"
        );
        assert_eq!(applied.report.to_github, 2, "both pushes landed");
        assert!(sides.done().contains(&"mirror refs/tags/v1 t2".to_owned()));
        assert_eq!(row(&applied, "refs/tags/v1").state, IN_SYNC);
    }

    #[tokio::test]
    async fn a_push_that_cannot_run_fails_each_ref_it_carried_and_nothing_else() {
        let sides = Sides {
            push_unavailable: true,
            ..Sides::default()
        };
        let applied = apply(&sides, &busy_pass(), "now").await.expect("apply");
        for name in ["refs/heads/feature", "refs/tags/v1"] {
            let pushed = row(&applied, name);
            assert_eq!(pushed.state, ERROR, "{name}");
            assert_eq!(pushed.last_error.as_deref(), Some("Running git failed"));
        }
        assert_eq!(applied.report.to_github, 0);
        assert_eq!(applied.report.to_forge, 2);
        assert_eq!(row(&applied, "refs/heads/main").state, IN_SYNC);
    }

    #[tokio::test]
    async fn a_pass_whose_forge_updates_cannot_become_events_ends_with_the_error() {
        let sides = Sides {
            events_unavailable: true,
            ..Sides::default()
        };
        let outcome = apply(&sides, &busy_pass(), "now").await;
        assert!(matches!(outcome, Err(SyncError::Inspect(_))), "{outcome:?}");
        assert!(
            !sides.done().iter().any(|d| d.starts_with("github ")),
            "nothing is pushed after it: {:?}",
            sides.done()
        );
    }

    #[tokio::test]
    async fn a_plan_with_nothing_to_move_touches_neither_side() {
        let mut snapshot = Snapshot::default();
        snapshot.forge.insert("refs/heads/main".into(), "m".into());
        snapshot.github.insert("refs/heads/main".into(), "m".into());
        let sides = Sides::default();
        let applied = apply(&sides, &plan::plan(&snapshot), "now")
            .await
            .expect("apply");
        assert!(sides.done().is_empty(), "{:?}", sides.done());
        assert_eq!(shas(&applied.rows[0]), (Some("m"), Some("m"), Some("m")));
    }

    #[test]
    fn porcelain_push_output_is_read() {
        let out = "To http://x/a.git\n \tabc:refs/heads/main\t[up to date]\n!\tdef:refs/heads/dev\t[rejected] (non-fast-forward)\nDone\n";
        assert!(pushed(out, "refs/heads/main"));
        assert!(!pushed(out, "refs/heads/dev"));
    }
}
