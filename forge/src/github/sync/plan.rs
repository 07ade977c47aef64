//! The pure half of a sync pass: from what each side holds and what both
//! last agreed on, the action every ref needs and why. Nothing here reads
//! git, GitHub or the database; [`super::apply`] performs the plan.
//!
//! For one ref, with F the forge's commit, G GitHub's and B the last commit
//! both agreed on, the rules apply in this order:
//! 1. neither side holds it: its state is forgotten;
//! 2. F = G: in sync, and B becomes F;
//! 3. only the forge holds it: F = B means GitHub deleted it, so delete it
//!    on the forge (compare-and-swap on F); no B means it is new on the
//!    forge, so push it; any other B means the forge moved what GitHub
//!    deleted: diverged;
//! 4. only GitHub holds it: the mirror image of 3;
//! 5. both hold different commits (B plays no part, git's history decides):
//!    F is an ancestor of G: fast-forward the forge (compare-and-swap on
//!    F, so a concurrent push wins); G is an ancestor of F: push F without
//!    force; neither: diverged.
//!
//! A diverged ref is left alone on both sides and announced once per pair
//! of values: a pass that finds the same F and G diverged again stays quiet.

use std::collections::{BTreeMap, BTreeSet};

use api_types::RefSyncState;

use crate::store::GithubRefState;

/// The state of a ref whose action succeeded, or that needs none.
pub const IN_SYNC: RefSyncState = RefSyncState::InSync;
/// The state of a ref both sides moved apart: nothing is overwritten.
pub const DIVERGED: RefSyncState = RefSyncState::Diverged;
/// The state of a ref whose action failed; `last_error` says how.
pub const ERROR: RefSyncState = RefSyncState::Error;

/// How the two sides' commits of a ref relate in git's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lineage {
    /// The forge's commit is an ancestor of GitHub's.
    ForgeBehind,
    /// GitHub's commit is an ancestor of the forge's.
    GithubBehind,
    /// Neither contains the other.
    Unrelated,
}

/// What a pass knows before it acts, every map keyed by full ref name.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The forge's branches and tags.
    pub forge: BTreeMap<String, String>,
    /// GitHub's branches and tags, as just fetched into the mirror.
    pub github: BTreeMap<String, String>,
    /// What the previous pass stored per ref.
    pub previous: BTreeMap<String, GithubRefState>,
    /// For each ref of [`Snapshot::differing`]: how its two commits relate.
    /// A ref missing here is treated as [`Lineage::Unrelated`]: when git
    /// has not said one side contains the other, neither is overwritten.
    pub lineage: BTreeMap<String, Lineage>,
}

impl Snapshot {
    /// The refs both sides hold at different commits, as (name, forge
    /// commit, GitHub commit): the ones whose [`Lineage`] the planner needs.
    pub fn differing(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.forge.iter().filter_map(|(name, forge)| {
            let github = self.github.get(name)?;
            (github != forge).then_some((name.as_str(), forge.as_str(), github.as_str()))
        })
    }

    /// The last commit both sides agreed on.
    fn synced(&self, name: &str) -> Option<&str> {
        self.previous.get(name)?.synced_sha.as_deref()
    }
}

/// What to do with one ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Both sides agree: record their commit as the last synced one.
    RecordInSync,
    /// Neither side holds the ref: drop its state.
    Forget,
    /// Move the forge's ref from `old` to `new` (`None`: absent), only if
    /// it still is at `old`.
    SetForge {
        old: Option<String>,
        new: Option<String>,
    },
    /// Push `new` to GitHub without force (`None` deletes the ref there).
    SetGithub { new: Option<String> },
    /// Leave both sides alone; `announce` when these values did not
    /// diverge before, so `sync.diverged` is recorded once per pair.
    MarkDiverged { announce: bool },
}

/// Why a ref gets its action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Both sides hold the same commit.
    Same,
    /// Neither side holds the ref any more.
    GoneFromBoth,
    /// The forge created the ref since the last pass.
    CreatedOnForge,
    /// GitHub created the ref since the last pass.
    CreatedOnGithub,
    /// The forge deleted the ref; GitHub still holds the synced commit.
    DeletedOnForge,
    /// GitHub deleted the ref; the forge still holds the synced commit.
    DeletedOnGithub,
    /// The forge's commit contains GitHub's.
    ForgeAhead,
    /// GitHub's commit contains the forge's.
    GithubAhead,
    /// Neither commit contains the other.
    BothMoved,
    /// The forge moved the ref that GitHub deleted.
    MovedOnForgeDeletedOnGithub,
    /// GitHub moved the ref that the forge deleted.
    MovedOnGithubDeletedOnForge,
}

impl Reason {
    pub fn describe(self) -> &'static str {
        match self {
            Reason::Same => "both sides hold the same commit",
            Reason::GoneFromBoth => "neither side holds the ref any more",
            Reason::CreatedOnForge => "the forge created the ref",
            Reason::CreatedOnGithub => "GitHub created the ref",
            Reason::DeletedOnForge => "the forge deleted the ref",
            Reason::DeletedOnGithub => "GitHub deleted the ref",
            Reason::ForgeAhead => "the forge's commit contains GitHub's",
            Reason::GithubAhead => "GitHub's commit contains the forge's",
            Reason::BothMoved => "neither commit contains the other",
            Reason::MovedOnForgeDeletedOnGithub => "the forge moved the ref GitHub deleted",
            Reason::MovedOnGithubDeletedOnForge => "GitHub moved the ref the forge deleted",
        }
    }
}

/// The decision about one ref, with what it was based on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefPlan {
    pub name: String,
    /// The forge's commit as seen before acting.
    pub forge: Option<String>,
    /// GitHub's commit as seen before acting.
    pub github: Option<String>,
    /// The last commit both sides agreed on.
    pub synced: Option<String>,
    pub action: Action,
    pub reason: Reason,
}

impl RefPlan {
    /// The state stored once the action has succeeded.
    pub fn state(&self) -> RefSyncState {
        match self.action {
            Action::MarkDiverged { .. } => DIVERGED,
            _ => IN_SYNC,
        }
    }

    /// The ref's stored state once the action has succeeded, stamped `at`.
    pub fn settled(&self, at: &str) -> GithubRefState {
        let mut row = self.observed(at, self.state());
        match &self.action {
            Action::RecordInSync => row.synced_sha = self.forge.clone(),
            Action::Forget => {
                row.synced_sha = None;
                row.forge_sha = None;
                row.github_sha = None;
            }
            Action::SetForge { new, .. } => {
                row.forge_sha = new.clone();
                row.synced_sha = new.clone();
            }
            Action::SetGithub { new } => {
                row.github_sha = new.clone();
                row.synced_sha = new.clone();
            }
            Action::MarkDiverged { .. } => {}
        }
        row
    }

    /// The ref's stored state when its action failed with `error`: the
    /// values as seen, so the next pass decides again from them.
    pub fn failed(&self, at: &str, error: String) -> GithubRefState {
        let mut row = self.observed(at, ERROR);
        row.last_error = Some(error);
        row
    }

    fn observed(&self, at: &str, state: RefSyncState) -> GithubRefState {
        GithubRefState {
            ref_name: self.name.clone(),
            synced_sha: self.synced.clone(),
            forge_sha: self.forge.clone(),
            github_sha: self.github.clone(),
            state,
            last_sync_at: at.to_owned(),
            last_error: None,
        }
    }
}

/// The decisions of one pass: every ref either side holds or the previous
/// pass stored, in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub refs: Vec<RefPlan>,
}

/// Decides what every ref needs (see the module docs).
pub fn plan(snapshot: &Snapshot) -> Plan {
    let names: BTreeSet<&str> = snapshot
        .forge
        .keys()
        .chain(snapshot.github.keys())
        .chain(snapshot.previous.keys())
        .map(String::as_str)
        .collect();
    Plan {
        refs: names
            .into_iter()
            .map(|name| plan_ref(snapshot, name))
            .collect(),
    }
}

fn plan_ref(snapshot: &Snapshot, name: &str) -> RefPlan {
    let forge = snapshot.forge.get(name).map(String::as_str);
    let github = snapshot.github.get(name).map(String::as_str);
    let synced = snapshot.synced(name);
    let owned = |sha: &str| Some(sha.to_owned());
    let (action, reason) = match (forge, github) {
        (None, None) => (Action::Forget, Reason::GoneFromBoth),
        (Some(f), Some(g)) if f == g => (Action::RecordInSync, Reason::Same),
        (Some(f), None) => match synced {
            Some(b) if b == f => (
                Action::SetForge {
                    old: owned(f),
                    new: None,
                },
                Reason::DeletedOnGithub,
            ),
            None => (Action::SetGithub { new: owned(f) }, Reason::CreatedOnForge),
            Some(_) => (
                diverged(snapshot, name, forge, github),
                Reason::MovedOnForgeDeletedOnGithub,
            ),
        },
        (None, Some(g)) => match synced {
            Some(b) if b == g => (Action::SetGithub { new: None }, Reason::DeletedOnForge),
            None => (
                Action::SetForge {
                    old: None,
                    new: owned(g),
                },
                Reason::CreatedOnGithub,
            ),
            Some(_) => (
                diverged(snapshot, name, forge, github),
                Reason::MovedOnGithubDeletedOnForge,
            ),
        },
        (Some(f), Some(g)) => match snapshot.lineage.get(name) {
            Some(Lineage::ForgeBehind) => (
                Action::SetForge {
                    old: owned(f),
                    new: owned(g),
                },
                Reason::GithubAhead,
            ),
            Some(Lineage::GithubBehind) => {
                (Action::SetGithub { new: owned(f) }, Reason::ForgeAhead)
            }
            Some(Lineage::Unrelated) | None => {
                (diverged(snapshot, name, forge, github), Reason::BothMoved)
            }
        },
    };
    RefPlan {
        name: name.to_owned(),
        forge: forge.map(str::to_owned),
        github: github.map(str::to_owned),
        synced: synced.map(str::to_owned),
        action,
        reason,
    }
}

/// Marks a ref diverged, announcing it unless the previous pass found the
/// very same values diverged.
fn diverged(snapshot: &Snapshot, name: &str, forge: Option<&str>, github: Option<&str>) -> Action {
    let known = snapshot.previous.get(name).is_some_and(|p| {
        p.state == DIVERGED && p.forge_sha.as_deref() == forge && p.github_sha.as_deref() == github
    });
    Action::MarkDiverged { announce: !known }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = "refs/heads/main";

    /// The history the cases are written against: `a` ← `b` ← `c` on one
    /// line, and `x` forked from `a` beside it.
    fn lineage(forge: &str, github: &str) -> Lineage {
        let line = ["a", "b", "c"];
        let position = |sha| line.iter().position(|c| *c == sha);
        match (position(forge), position(github)) {
            (Some(f), Some(g)) if f < g => Lineage::ForgeBehind,
            (Some(f), Some(g)) if g < f => Lineage::GithubBehind,
            _ if forge == "a" => Lineage::ForgeBehind,
            _ if github == "a" => Lineage::GithubBehind,
            _ => Lineage::Unrelated,
        }
    }

    fn stored(
        synced: Option<&str>,
        forge: Option<&str>,
        github: Option<&str>,
        state: RefSyncState,
    ) -> GithubRefState {
        GithubRefState {
            ref_name: MAIN.into(),
            synced_sha: synced.map(Into::into),
            forge_sha: forge.map(Into::into),
            github_sha: github.map(Into::into),
            state,
            last_sync_at: "2026-01-01T00:00:00Z".into(),
            last_error: None,
        }
    }

    /// A snapshot of `main` alone, its lineage asked of the test history
    /// as the pass asks git; a last synced commit comes with an in-sync row.
    fn snapshot(forge: Option<&str>, github: Option<&str>, synced: Option<&str>) -> Snapshot {
        let mut snapshot = Snapshot::default();
        if let Some(f) = forge {
            snapshot.forge.insert(MAIN.into(), f.into());
        }
        if let Some(g) = github {
            snapshot.github.insert(MAIN.into(), g.into());
        }
        if synced.is_some() {
            snapshot
                .previous
                .insert(MAIN.into(), stored(synced, synced, synced, IN_SYNC));
        }
        let asked: Vec<(String, Lineage)> = snapshot
            .differing()
            .map(|(name, f, g)| (name.to_owned(), lineage(f, g)))
            .collect();
        snapshot.lineage.extend(asked);
        snapshot
    }

    fn only(plan: Plan) -> RefPlan {
        let mut refs = plan.refs;
        assert_eq!(refs.len(), 1, "{refs:?}");
        refs.remove(0)
    }

    fn sha(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    fn to_github(new: Option<&str>) -> Action {
        Action::SetGithub {
            new: new.map(str::to_owned),
        }
    }

    fn to_forge(old: Option<&str>, new: Option<&str>) -> Action {
        Action::SetForge {
            old: old.map(str::to_owned),
            new: new.map(str::to_owned),
        }
    }

    fn diverged() -> Action {
        Action::MarkDiverged { announce: true }
    }

    #[test]
    fn each_ref_gets_the_action_its_two_sides_and_last_sync_call_for() {
        use Reason::*;
        let (b, c, x) = (Some("b"), Some("c"), Some("x"));
        // (case, forge, GitHub, last synced, action, reason, state once applied)
        #[rustfmt::skip]
        let cases = [
            ("in sync: the commit is recorded as synced",
                b, b, b, Action::RecordInSync, Same, IN_SYNC),
            ("the same commit on both sides, never synced: in sync",
                b, b, None, Action::RecordInSync, Same, IN_SYNC),
            ("forge ahead: pushed to GitHub without force",
                c, b, b, to_github(c), ForgeAhead, IN_SYNC),
            ("GitHub ahead: the forge is fast-forwarded from the commit it was seen at",
                b, c, b, to_forge(b, c), GithubAhead, IN_SYNC),
            ("history decides, not the last sync: a forge behind an older commit is fast-forwarded",
                Some("a"), c, b, to_forge(Some("a"), c), GithubAhead, IN_SYNC),
            ("diverged: neither commit contains the other, both are left alone",
                x, c, Some("a"), diverged(), BothMoved, DIVERGED),
            ("new on the forge: pushed to GitHub",
                b, None, None, to_github(b), CreatedOnForge, IN_SYNC),
            ("new on GitHub: created on the forge",
                None, b, None, to_forge(None, b), CreatedOnGithub, IN_SYNC),
            ("new on both sides at related commits: the older side is fast-forwarded",
                b, c, None, to_forge(b, c), GithubAhead, IN_SYNC),
            ("new on both sides at unrelated commits: diverged",
                x, b, None, diverged(), BothMoved, DIVERGED),
            ("deleted on GitHub: deleted on the forge, which still holds the synced commit",
                b, None, b, to_forge(b, None), DeletedOnGithub, IN_SYNC),
            ("deleted on the forge: deleted on GitHub, which still holds the synced commit",
                None, b, b, to_github(None), DeletedOnForge, IN_SYNC),
            ("deleted on GitHub but moved on the forge: diverged, the forge keeps its commit",
                c, None, b, diverged(), MovedOnForgeDeletedOnGithub, DIVERGED),
            ("deleted on the forge but moved on GitHub: diverged, GitHub keeps its commit",
                None, c, b, diverged(), MovedOnGithubDeletedOnForge, DIVERGED),
            ("deleted on both sides: its state is forgotten",
                None, None, b, Action::Forget, GoneFromBoth, IN_SYNC),
        ];
        for (case, forge, github, synced, action, reason, state) in cases {
            let planned = only(plan(&snapshot(forge, github, synced)));
            assert_eq!(planned.action, action, "{case}");
            assert_eq!(planned.reason, reason, "{case}");
            assert_eq!(planned.state(), state, "{case}");
            assert_eq!(
                (planned.forge.as_deref(), planned.github.as_deref()),
                (forge, github),
                "{case}: the plan keeps what it was based on"
            );
            assert_eq!(planned.synced.as_deref(), synced, "{case}");
        }
    }

    #[test]
    fn once_applied_both_sides_and_the_last_sync_agree() {
        // (forge, GitHub, last synced): whatever moves, the row stored
        // afterwards names one commit three times, or none for a deletion.
        let cases = [
            (Some("b"), Some("b"), Some("a"), Some("b")),
            (Some("c"), Some("b"), Some("b"), Some("c")),
            (Some("b"), Some("c"), Some("b"), Some("c")),
            (Some("b"), None, None, Some("b")),
            (None, Some("b"), None, Some("b")),
            (Some("b"), None, Some("b"), None),
            (None, Some("b"), Some("b"), None),
        ];
        for (forge, github, synced, agreed) in cases {
            let planned = only(plan(&snapshot(forge, github, synced)));
            let row = planned.settled("now");
            let agreed = agreed.map(str::to_owned);
            assert_eq!(
                (&row.forge_sha, &row.github_sha, &row.synced_sha),
                (&agreed, &agreed, &agreed),
                "{planned:?}"
            );
            assert_eq!(row.state, IN_SYNC);
            assert_eq!(row.last_sync_at, "now");
            assert_eq!(row.last_error, None);
        }
    }

    #[test]
    fn a_diverged_ref_keeps_what_each_side_holds_and_the_last_agreed_commit() {
        let planned = only(plan(&snapshot(Some("x"), Some("c"), Some("a"))));
        let row = planned.settled("now");
        assert_eq!(row.state, DIVERGED);
        assert_eq!(
            (row.forge_sha, row.github_sha, row.synced_sha),
            (sha("x"), sha("c"), sha("a"))
        );
    }

    #[test]
    fn a_divergence_is_announced_once_per_pair_of_values() {
        let mut again = snapshot(Some("x"), Some("c"), Some("a"));
        again.previous.insert(
            MAIN.into(),
            stored(Some("a"), Some("x"), Some("c"), DIVERGED),
        );
        assert_eq!(
            only(plan(&again)).action,
            Action::MarkDiverged { announce: false },
            "the same values diverged before: nothing new to say"
        );
        let mut moved = snapshot(Some("x"), Some("b"), Some("a"));
        moved.previous.insert(
            MAIN.into(),
            stored(Some("a"), Some("x"), Some("c"), DIVERGED),
        );
        assert_eq!(
            only(plan(&moved)).action,
            Action::MarkDiverged { announce: true },
            "GitHub moved since: a new divergence"
        );
        let mut deleted = snapshot(Some("x"), None, Some("a"));
        deleted
            .previous
            .insert(MAIN.into(), stored(Some("a"), Some("x"), None, DIVERGED));
        assert_eq!(
            only(plan(&deleted)).action,
            Action::MarkDiverged { announce: false },
            "a deletion against a move is a pair of values too"
        );
    }

    #[test]
    fn a_ref_whose_previous_pass_failed_is_decided_again_from_its_values() {
        let mut failed = snapshot(Some("b"), Some("c"), Some("b"));
        let mut row = stored(Some("b"), Some("b"), Some("c"), ERROR);
        row.last_error = Some("git update-ref failed".into());
        failed.previous.insert(MAIN.into(), row);
        let planned = only(plan(&failed));
        assert_eq!(
            planned.action,
            Action::SetForge {
                old: sha("b"),
                new: sha("c")
            }
        );
    }

    #[test]
    fn commits_git_has_not_related_are_never_overwritten() {
        let mut unknown = snapshot(Some("b"), Some("c"), Some("b"));
        unknown.lineage.clear();
        let planned = only(plan(&unknown));
        assert_eq!(planned.action, Action::MarkDiverged { announce: true });
        assert_eq!(planned.reason, Reason::BothMoved);
    }

    #[test]
    fn a_failed_action_stores_the_values_it_saw_and_why_it_failed() {
        let planned = only(plan(&snapshot(Some("b"), Some("c"), Some("b"))));
        let row = planned.failed("now", "git update-ref failed: locked".into());
        assert_eq!(row.state, ERROR);
        assert_eq!(
            row.last_error.as_deref(),
            Some("git update-ref failed: locked")
        );
        assert_eq!(
            (row.forge_sha, row.github_sha, row.synced_sha),
            (sha("b"), sha("c"), sha("b"))
        );
    }

    #[test]
    fn every_ref_of_either_side_or_the_last_pass_is_planned_in_name_order() {
        let mut snapshot = Snapshot::default();
        snapshot.forge.insert("refs/tags/v1".into(), "a".into());
        snapshot.forge.insert("refs/heads/main".into(), "b".into());
        snapshot.github.insert("refs/heads/main".into(), "b".into());
        snapshot
            .github
            .insert("refs/heads/feature".into(), "c".into());
        snapshot.previous.insert(
            "refs/heads/old".into(),
            stored(Some("a"), Some("a"), Some("a"), IN_SYNC),
        );
        let planned: Vec<(String, Reason)> = plan(&snapshot)
            .refs
            .into_iter()
            .map(|r| (r.name, r.reason))
            .collect();
        assert_eq!(
            planned,
            [
                ("refs/heads/feature".to_owned(), Reason::CreatedOnGithub),
                ("refs/heads/main".to_owned(), Reason::Same),
                ("refs/heads/old".to_owned(), Reason::GoneFromBoth),
                ("refs/tags/v1".to_owned(), Reason::CreatedOnForge),
            ]
        );
    }

    #[test]
    fn only_refs_held_at_different_commits_need_their_lineage() {
        let mut snapshot = Snapshot::default();
        snapshot.forge.insert("refs/heads/main".into(), "b".into());
        snapshot.forge.insert("refs/heads/same".into(), "a".into());
        snapshot
            .forge
            .insert("refs/heads/forge-only".into(), "a".into());
        snapshot.github.insert("refs/heads/main".into(), "c".into());
        snapshot.github.insert("refs/heads/same".into(), "a".into());
        snapshot
            .github
            .insert("refs/heads/github-only".into(), "a".into());
        let differing: Vec<_> = snapshot.differing().collect();
        assert_eq!(differing, [("refs/heads/main", "b", "c")]);
    }
}
