//! What a push may change. Each command `<old> <new> <ref>` of a push is
//! judged by these rules, in this order:
//!
//! 1. **A sandbox's git token** ([`Pusher::Sandbox`], the token the git
//!    relay adds, see `vms/gitrelay.rs`) may create and update (fast-forward
//!    or force) the branch its VM serves, if it serves one, and create,
//!    update and delete the branches under its own prefix
//!    (`--sandbox-branch-prefix`, default `sandbox/{vm}/`, `{vm}` being the
//!    VM's id). Anything else is refused: another branch, deleting its own
//!    branch, a tag, any other ref.
//! 2. **A protected branch** (the repository's default branch and every
//!    branch `--protected-branches` names) is never deleted and is updated
//!    only by a fast-forward, whoever pushes. Creating one is allowed: that
//!    is the first push to an empty repository.
//! 3. Everything else the token's scope allows is allowed.
//!
//! Rule 1 and the deletion half of rule 2 need only the command, so
//! [`PushRules::check`] decides them from the command section at the head
//! of the request, before receive-pack starts: a push that breaks one is
//! refused as a whole, nothing written, and each of its commands is
//! answered `ng <ref> <reason>` in receive-pack's own report, which
//! `git push` prints (it does not print the body of a `403` to a POST).
//!
//! The fast-forward half of rule 2 needs the pushed commits, which arrive
//! in the pack after the commands. It is left to git: receive-pack runs
//! with `core.hooksPath` set to the forge's hooks, whose `pre-receive`
//! ([`PRE_RECEIVE_HOOK`]) checks `git merge-base --is-ancestor <old> <new>`
//! for each ref named in [`FAST_FORWARD_ONLY_ENV`]. Git runs that hook with
//! the pushed objects still in its quarantine directory and drops them when
//! the hook declines, so again nothing is written; git sends the hook's
//! message to the pusher as `remote: forge: …`. The ref's value is checked
//! against the `<old>` the client sent, which git's ref update then
//! compares and swaps, so a concurrent push cannot slip a rewrite through.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::git::pktline::{Command, RefStatus, Report};
use crate::git::valid_branch_name;

/// The environment variable naming, space-separated, the refs the
/// `pre-receive` hook checks are fast-forwards.
pub const FAST_FORWARD_ONLY_ENV: &str = "FORGE_FAST_FORWARD_ONLY";

/// The forge's `pre-receive` hook: refuses a non-fast-forward update of a
/// ref named in [`FAST_FORWARD_ONLY_ENV`]. Refnames hold no spaces, so the
/// list splits on them; creations and deletions are never named there.
pub const PRE_RECEIVE_HOOK: &str = r#"#!/bin/sh
# Installed by the forge (forge/src/git/push/rules.rs); rewritten at start-up.
# Refuses a non-fast-forward update of the refs named in FORGE_FAST_FORWARD_ONLY.
refused=0
while read -r old new ref; do
	case " $FORGE_FAST_FORWARD_ONLY " in
	*" $ref "*) ;;
	*) continue ;;
	esac
	if ! git merge-base --is-ancestor "$old" "$new" 2>/dev/null; then
		echo "forge: $ref is a protected branch: a push may fast-forward it but not force-update it ($new does not contain $old)" >&2
		refused=1
	fi
done
exit $refused
"#;

/// Writes the forge's hooks into `dir` (created, mode 0700): the
/// `pre-receive` of [`PRE_RECEIVE_HOOK`], replaced atomically.
pub fn install_hooks(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let temporary = dir.join(".pre-receive.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o700)
        .open(&temporary)?;
    file.write_all(PRE_RECEIVE_HOOK.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, pre_receive_hook(dir))
}

/// The `pre-receive` hook in the hooks directory `dir`.
pub fn pre_receive_hook(dir: &Path) -> PathBuf {
    dir.join("pre-receive")
}

/// Who pushes, as far as the rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pusher<'a> {
    /// A user's or a program's token: every ref, within rule 2.
    Writer,
    /// The git token of sandbox `vm`, which serves `branch` (if any).
    Sandbox {
        vm: &'a str,
        branch: Option<&'a str>,
    },
}

/// Why a flag's branch prefix or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("The sandbox branch prefix {0:?} must contain {{vm}} and end with '/'")]
    PrefixShape(String),
    #[error("The sandbox branch prefix {0:?} does not make valid branch names")]
    PrefixName(String),
    #[error("The branch pattern {0:?} may hold '*' only as its last character")]
    PatternStar(String),
    #[error("The branch pattern {0:?} is not a valid branch name")]
    PatternName(String),
}

/// `--sandbox-branch-prefix`: where a sandbox may create branches of its
/// own, a template in which `{vm}` stands for the VM's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchPrefix(String);

impl BranchPrefix {
    /// The prefix of sandbox `vm`'s branches, e.g. `sandbox/sb12/`.
    pub fn for_vm(&self, vm: &str) -> String {
        self.0.replace("{vm}", vm)
    }
}

impl Default for BranchPrefix {
    fn default() -> Self {
        Self("sandbox/{vm}/".into())
    }
}

impl FromStr for BranchPrefix {
    type Err = RuleError;

    /// The template must hold `{vm}`, so that sandboxes never share a
    /// prefix, and end with `/`, so that `sandbox/vm1/` is not a prefix of
    /// `sandbox/vm12/…`.
    fn from_str(template: &str) -> Result<Self, RuleError> {
        if !template.contains("{vm}") || !template.ends_with('/') {
            return Err(RuleError::PrefixShape(template.into()));
        }
        let example = template.replace("{vm}", "sb0123456789");
        if !valid_branch_name(&example[..example.len() - 1]) {
            return Err(RuleError::PrefixName(template.into()));
        }
        Ok(Self(template.into()))
    }
}

impl fmt::Display for BranchPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One `--protected-branches` entry: a branch name, or a prefix followed
/// by `*` (`release/*` matches `release/1.0` and `release/1/hotfix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchPattern(String);

impl BranchPattern {
    pub fn matches(&self, branch: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => branch.starts_with(prefix),
            None => branch == self.0,
        }
    }
}

impl FromStr for BranchPattern {
    type Err = RuleError;

    fn from_str(pattern: &str) -> Result<Self, RuleError> {
        let pattern = pattern.trim();
        let literal = pattern.strip_suffix('*').unwrap_or(pattern);
        if literal.contains('*') {
            return Err(RuleError::PatternStar(pattern.into()));
        }
        // `release/*` is checked as `release/x`, a bare `*` as `x`.
        let example = match pattern.strip_suffix('*') {
            Some(literal) => format!("{literal}x"),
            None => pattern.to_owned(),
        };
        if !valid_branch_name(&example) {
            return Err(RuleError::PatternName(pattern.into()));
        }
        Ok(Self(pattern.into()))
    }
}

impl fmt::Display for BranchPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The forge's push rules, from its flags.
#[derive(Debug, Clone, Default)]
pub struct PushRules {
    pub sandbox_branch_prefix: BranchPrefix,
    /// Protected besides each repository's default branch.
    pub protected_branches: Vec<BranchPattern>,
}

/// Which of its branches a sandbox writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxBranch {
    /// The branch it serves: updated, never deleted.
    Own,
    /// A branch under its prefix: its own to make and delete.
    UnderPrefix,
}

/// What the rules say of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Allowed if the old commit is an ancestor of the new one.
    FastForwardOnly,
    /// Refused, with the message the pusher sees.
    Refused(String),
}

/// A push the rules let through, so far as the commands tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// The refs git must still find fast-forwarded ([`FAST_FORWARD_ONLY_ENV`]).
    pub fast_forward_only: Vec<String>,
}

/// A push refused as a whole: the refused refs and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub refused: Vec<(String, String)>,
}

/// What the refs of a refused push that broke no rule themselves are told.
pub const HELD_BACK: &str = "forge: not pushed, because another ref of this push was refused";

impl Refusal {
    /// Receive-pack's report for `commands`: nothing unpacked was kept, and
    /// every ref is `ng`, with its own reason or [`HELD_BACK`].
    pub fn report(&self, commands: &[Command]) -> Report {
        let refs = commands
            .iter()
            .map(|command| {
                let reason = self
                    .refused
                    .iter()
                    .find(|(refname, _)| *refname == command.refname)
                    .map_or(HELD_BACK, |(_, reason)| reason.as_str());
                (command.refname.clone(), RefStatus::Rejected(reason.into()))
            })
            .collect();
        Report {
            unpack_error: None,
            refs,
        }
    }

    /// Every reason, one a line (for a client that asked for no report).
    pub fn message(&self) -> String {
        let reasons: Vec<&str> = self.refused.iter().map(|(_, r)| r.as_str()).collect();
        reasons.join("\n")
    }
}

impl PushRules {
    /// Whether `branch` is protected in a repository whose default branch
    /// is `default_branch`.
    pub fn is_protected(&self, default_branch: &str, branch: &str) -> bool {
        branch == default_branch || self.protected_branches.iter().any(|p| p.matches(branch))
    }

    /// Whether sandbox `vm`, which serves branch `own` (if any), may write
    /// `branch` (`None`: a ref that is not a branch): its own branch and
    /// the branches under its prefix. `Err` says which it may write.
    pub fn sandbox_may_write(
        &self,
        vm: &str,
        own: Option<&str>,
        branch: Option<&str>,
    ) -> Result<SandboxBranch, String> {
        let prefix = self.sandbox_branch_prefix.for_vm(vm);
        let under_prefix = branch.is_some_and(|b| b.len() > prefix.len() && b.starts_with(&prefix));
        if under_prefix {
            return Ok(SandboxBranch::UnderPrefix);
        }
        if own.is_some() && branch == own {
            return Ok(SandboxBranch::Own);
        }
        Err(match own {
            Some(own) => format!("refs/heads/{own} and refs/heads/{prefix}*"),
            None => format!("refs/heads/{prefix}*"),
        })
    }

    /// The verdict on one command (rules 1 to 3 of the module doc).
    pub fn verdict(&self, default_branch: &str, pusher: Pusher<'_>, command: &Command) -> Verdict {
        let branch = command.refname.strip_prefix("refs/heads/");
        if let Pusher::Sandbox { vm, branch: own } = pusher {
            let which = match self.sandbox_may_write(vm, own, branch) {
                Ok(which) => which,
                Err(allowed) => {
                    return Verdict::Refused(format!(
                        "forge: this sandbox may push only to {allowed}; {} is not among them",
                        command.refname
                    ));
                }
            };
            if which == SandboxBranch::Own && command.is_delete() {
                return Verdict::Refused(format!(
                    "forge: this sandbox may update {} but not delete it",
                    command.refname
                ));
            }
        }
        if let Some(branch) = branch
            && self.is_protected(default_branch, branch)
        {
            if command.is_delete() {
                return Verdict::Refused(format!(
                    "forge: {} is a protected branch: it cannot be deleted",
                    command.refname
                ));
            }
            if !command.is_create() {
                return Verdict::FastForwardOnly;
            }
        }
        Verdict::Allowed
    }

    /// Judges every command of a push: refused as a whole when any is,
    /// else the refs whose fast-forward git must still check.
    pub fn check(
        &self,
        default_branch: &str,
        pusher: Pusher<'_>,
        commands: &[Command],
    ) -> Result<Accepted, Refusal> {
        let mut accepted = Accepted::default();
        let mut refused = Vec::new();
        for command in commands {
            match self.verdict(default_branch, pusher, command) {
                Verdict::Allowed => {}
                Verdict::FastForwardOnly => {
                    accepted.fast_forward_only.push(command.refname.clone());
                }
                Verdict::Refused(reason) => refused.push((command.refname.clone(), reason)),
            }
        }
        if refused.is_empty() {
            Ok(accepted)
        } else {
            Err(Refusal { refused })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Z: &str = "0000000000000000000000000000000000000000";
    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    fn command(refname: &str, old: &str, new: &str) -> Command {
        Command {
            old: old.into(),
            new: new.into(),
            refname: refname.into(),
        }
    }

    fn rules() -> PushRules {
        PushRules {
            sandbox_branch_prefix: BranchPrefix::default(),
            protected_branches: vec![
                "release/*".parse().expect("valid"),
                "prod".parse().expect("valid"),
            ],
        }
    }

    #[test]
    fn the_table_of_who_may_change_which_ref() {
        let writer = Pusher::Writer;
        let feature = Pusher::Sandbox {
            vm: "vm1",
            branch: Some("feature"),
        };
        let main_box = Pusher::Sandbox {
            vm: "vm1",
            branch: Some("main"),
        };
        let loose = Pusher::Sandbox {
            vm: "vm1",
            branch: None,
        };
        // (pusher, ref, old, new, fast-forward) → allowed
        let table: &[(Pusher<'_>, &str, &str, &str, bool, bool)] = &[
            // A user's token: anything but rewriting or deleting a protected branch.
            (writer, "refs/heads/main", A, B, true, true),
            (writer, "refs/heads/main", A, B, false, false),
            (writer, "refs/heads/main", A, Z, false, false),
            (writer, "refs/heads/main", Z, A, false, true),
            (writer, "refs/heads/release/1.0", A, B, false, false),
            (writer, "refs/heads/release/1.0", A, B, true, true),
            (writer, "refs/heads/release/1.0", A, Z, false, false),
            (writer, "refs/heads/prod", A, B, false, false),
            (writer, "refs/heads/production", A, B, false, true),
            (writer, "refs/heads/feature", A, B, false, true),
            (writer, "refs/heads/feature", A, Z, false, true),
            (writer, "refs/tags/v1", Z, A, false, true),
            (writer, "refs/tags/v1", A, Z, false, true),
            // A sandbox on `feature`: its branch (even forced), its prefix.
            (feature, "refs/heads/feature", A, B, true, true),
            (feature, "refs/heads/feature", A, B, false, true),
            (feature, "refs/heads/feature", Z, A, false, true),
            (feature, "refs/heads/feature", A, Z, false, false),
            (feature, "refs/heads/sandbox/vm1/x", Z, A, false, true),
            (feature, "refs/heads/sandbox/vm1/x", A, B, false, true),
            (feature, "refs/heads/sandbox/vm1/x", A, Z, false, true),
            (feature, "refs/heads/sandbox/vm1/", Z, A, false, false),
            (feature, "refs/heads/sandbox/vm12/x", Z, A, false, false),
            (feature, "refs/heads/sandbox/vm2/x", Z, A, false, false),
            (feature, "refs/heads/main", A, B, true, false),
            (feature, "refs/heads/main", A, B, false, false),
            (feature, "refs/heads/main", A, Z, false, false),
            (feature, "refs/heads/other", Z, A, false, false),
            (feature, "refs/tags/v1", Z, A, false, false),
            (feature, "refs/notes/commits", Z, A, false, false),
            (feature, "refs/heads/feature/x", Z, A, false, false),
            // The default branch's sandbox still only fast-forwards it.
            (main_box, "refs/heads/main", A, B, true, true),
            (main_box, "refs/heads/main", A, B, false, false),
            (main_box, "refs/heads/main", A, Z, false, false),
            (main_box, "refs/heads/feature", A, B, true, false),
            // A sandbox serving no branch: its prefix only.
            (loose, "refs/heads/sandbox/vm1/x", Z, A, false, true),
            (loose, "refs/heads/main", A, B, true, false),
            (loose, "refs/heads/feature", Z, A, false, false),
        ];
        let rules = rules();
        for (pusher, refname, old, new, fast_forward, allowed) in table {
            let verdict = rules.verdict("main", *pusher, &command(refname, old, new));
            // What the pre-receive hook adds: a fast-forward-only ref passes when it is one.
            let got = match &verdict {
                Verdict::Allowed => true,
                Verdict::FastForwardOnly => *fast_forward,
                Verdict::Refused(_) => false,
            };
            assert_eq!(
                got, *allowed,
                "{pusher:?} {refname} {old:.1}→{new:.1} ff={fast_forward}: {verdict:?}"
            );
        }
    }

    #[test]
    fn refusals_name_the_ref_and_what_is_allowed() {
        let rules = rules();
        let feature = Pusher::Sandbox {
            vm: "vm123",
            branch: Some("feature"),
        };
        assert_eq!(
            rules.verdict("main", feature, &command("refs/heads/main", A, B)),
            Verdict::Refused(
                "forge: this sandbox may push only to refs/heads/feature and \
                 refs/heads/sandbox/vm123/*; refs/heads/main is not among them"
                    .into()
            )
        );
        let loose = Pusher::Sandbox {
            vm: "vm123",
            branch: None,
        };
        assert_eq!(
            rules.verdict("main", loose, &command("refs/tags/v1", Z, A)),
            Verdict::Refused(
                "forge: this sandbox may push only to refs/heads/sandbox/vm123/*; \
                 refs/tags/v1 is not among them"
                    .into()
            )
        );
        assert_eq!(
            rules.verdict("main", Pusher::Writer, &command("refs/heads/main", A, Z)),
            Verdict::Refused(
                "forge: refs/heads/main is a protected branch: it cannot be deleted".into()
            )
        );
    }

    #[test]
    fn one_refused_ref_refuses_the_whole_push() {
        let rules = rules();
        let feature = Pusher::Sandbox {
            vm: "vm1",
            branch: Some("feature"),
        };
        let commands = [
            command("refs/heads/feature", A, B),
            command("refs/heads/main", A, B),
        ];
        let refusal = rules
            .check("main", feature, &commands)
            .expect_err("main is not the sandbox's");
        let report = refusal.report(&commands);
        assert_eq!(report.unpack_error, None);
        assert_eq!(
            report.refs[0],
            (
                "refs/heads/feature".into(),
                RefStatus::Rejected(HELD_BACK.into())
            )
        );
        assert!(
            matches!(&report.refs[1].1, RefStatus::Rejected(r) if r.contains("not among them"))
        );
        let accepted = rules
            .check("main", Pusher::Writer, &commands)
            .expect("a writer may fast-forward both");
        assert_eq!(accepted.fast_forward_only, ["refs/heads/main"]);
    }

    #[test]
    fn prefixes_and_patterns_are_checked_once() {
        assert_eq!(
            "sandbox/{vm}/"
                .parse::<BranchPrefix>()
                .map(|p| p.for_vm("sb1")),
            Ok("sandbox/sb1/".into())
        );
        for bad in [
            "sandbox/",
            "sandbox/{vm}",
            "-x/{vm}/",
            "a..b/{vm}/",
            "{vm}//",
        ] {
            assert!(bad.parse::<BranchPrefix>().is_err(), "{bad}");
        }
        let release: BranchPattern = "release/*".parse().expect("valid");
        assert!(release.matches("release/1.0"));
        assert!(release.matches("release/1/hotfix"));
        assert!(!release.matches("release"));
        assert!(!release.matches("releases/1"));
        let exact: BranchPattern = "prod".parse().expect("valid");
        assert!(exact.matches("prod") && !exact.matches("prod2"));
        assert!(
            "*".parse::<BranchPattern>()
                .expect("valid")
                .matches("anything")
        );
        for bad in ["", "a*b*", "*/x", "re lease", "x/../y*"] {
            assert!(bad.parse::<BranchPattern>().is_err(), "{bad}");
        }
    }

    /// The hook as git runs it (one line per ref on stdin, the list in the
    /// environment) against a real repository; under a real receive-pack,
    /// quarantine included, it runs in `tests/tests/sandbox_push.rs`.
    #[test]
    fn the_hook_refuses_a_rewrite_and_lets_a_fast_forward_through() {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let hooks = tmp.path().join("hooks");
        install_hooks(&hooks).expect("installed");
        let repo = tmp.path().join("repo");
        let git = |args: &[&str]| {
            let output = std::process::Command::new("git")
                .current_dir(&repo)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@example.com")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@example.com")
                .args(args)
                .output()
                .expect("git runs");
            assert!(output.status.success(), "git {args:?}: {output:?}");
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        };
        std::fs::create_dir_all(&repo).expect("repo dir");
        git(&["init", "-q"]);
        git(&["commit", "-q", "--allow-empty", "-m", "one"]);
        let one = git(&["rev-parse", "HEAD"]);
        git(&["commit", "-q", "--allow-empty", "-m", "two"]);
        let two = git(&["rev-parse", "HEAD"]);
        let run = |stdin: String, fast_forward_only: &str| {
            use std::io::Write;
            let mut child = std::process::Command::new(pre_receive_hook(&hooks))
                .current_dir(&repo)
                .env(FAST_FORWARD_ONLY_ENV, fast_forward_only)
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("the hook runs");
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(stdin.as_bytes())
                .expect("written");
            let output = child.wait_with_output().expect("the hook ends");
            (
                output.status.success(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        };
        let forward = format!("{one} {two} refs/heads/main\n");
        let backward = format!("{two} {one} refs/heads/main\n");
        assert_eq!(run(forward, "refs/heads/main"), (true, String::new()));
        let (ok, message) = run(backward.clone(), "refs/heads/release/1 refs/heads/main");
        assert!(!ok);
        assert!(
            message.contains("forge: refs/heads/main is a protected branch"),
            "{message}"
        );
        // A ref not named is not the hook's business.
        assert_eq!(run(backward, "refs/heads/mainline"), (true, String::new()));
    }
}
