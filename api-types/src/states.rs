//! Lifecycle states and other closed sets of strings the forge stores in
//! its database and sends on the wire. Each enum's spelling is the one the
//! API documents and the CHECKs of both schemas (`migrations/`) list;
//! the tests below pin every variant's spelling.

use std::fmt;
use std::str::FromStr;

/// A string that names no variant of a state enum (a database or an
/// answer from another version of the forge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownState {
    pub kind: &'static str,
    pub value: String,
}

impl fmt::Display for UnknownState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not a {}", self.value, self.kind)
    }
}

impl std::error::Error for UnknownState {}

/// Declares a state enum: serde spells each variant by its `rename_all`
/// rule, `as_str` (and with the `sqlx` feature the database) by hand, and
/// the tests check that the two agree.
macro_rules! states {
    (
        $(#[$meta:meta])*
        pub enum $name:ident as $case:tt {
            $( $(#[$variant_meta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = $case)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every variant, in the order the lifecycle usually takes.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The spelling on the wire and in the database.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // `pad`, not `write_str`: tables format states with a width.
                f.pad(self.as_str())
            }
        }

        // Stored as text through sqlx's `Any` driver, which serves both
        // SQLite and PostgreSQL with one set of queries.
        #[cfg(feature = "sqlx")]
        impl sqlx::Type<sqlx::Any> for $name {
            fn type_info() -> sqlx::any::AnyTypeInfo {
                <str as sqlx::Type<sqlx::Any>>::type_info()
            }

            fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
                <str as sqlx::Type<sqlx::Any>>::compatible(ty)
            }
        }

        #[cfg(feature = "sqlx")]
        impl<'q> sqlx::Encode<'q, sqlx::Any> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut <sqlx::Any as sqlx::Database>::ArgumentBuffer<'q>,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, sqlx::Any>>::encode(self.as_str(), buf)
            }
        }

        #[cfg(feature = "sqlx")]
        impl<'r> sqlx::Decode<'r, sqlx::Any> for $name {
            fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<'r, sqlx::Any>>::decode(value)?;
                Ok(text.parse()?)
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;

            fn from_str(text: &str) -> Result<Self, UnknownState> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(UnknownState {
                        kind: stringify!($name),
                        value: text.to_owned(),
                    }),
                }
            }
        }
    };
}

states! {
    /// A sandbox's lifecycle (`vms.state`, `VmView::state`).
    pub enum VmState as "snake_case" {
        Running = "running",
        /// Paused in memory: no CPU, RAM kept.
        Paused = "paused",
        /// Paused to disk: no process, no RAM.
        PausedToDisk = "paused_to_disk",
        /// It stopped without being asked to; the disk is kept until it is deleted.
        Crashed = "crashed",
        /// Its sandbox node stopped reporting: unreachable, not restarted
        /// elsewhere. When the node reports again it is what it was there.
        Lost = "lost",
    }
}

impl VmState {
    /// The states that hold host resources (a process, RAM) and so count
    /// against the caps and quotas.
    pub const LIVE: [Self; 2] = [Self::Running, Self::Paused];

    /// Holds host resources: running or paused in memory.
    pub const fn is_live(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }

    /// Its sandbox can be reached (running, or paused and resumable): not
    /// crashed, not on a lost node.
    pub const fn is_reachable(self) -> bool {
        !matches!(self, Self::Crashed | Self::Lost)
    }

    /// Paused, in memory or to disk: a request resumes it.
    pub const fn is_paused(self) -> bool {
        matches!(self, Self::Paused | Self::PausedToDisk)
    }
}

states! {
    /// A pipeline run's lifecycle (`runs.state`).
    pub enum RunState as "snake_case" {
        Queued = "queued",
        Running = "running",
        Passed = "passed",
        Failed = "failed",
        Cancelled = "cancelled",
        /// The forge could not run it (no sandbox, the forge stopped).
        Error = "error",
    }
}

impl RunState {
    /// Finished with a result a review may rest on (a cancelled run has none).
    pub const CONCLUDED: [Self; 3] = [Self::Passed, Self::Failed, Self::Error];

    /// It will not change any more.
    pub const fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Passed | Self::Failed | Self::Cancelled | Self::Error
        )
    }
}

states! {
    /// A step of a run (`run_steps.status`).
    pub enum StepState as "snake_case" {
        Pending = "pending",
        Running = "running",
        Passed = "passed",
        Failed = "failed",
        /// An earlier step failed, or the run ended before it.
        Skipped = "skipped",
        Cancelled = "cancelled",
    }
}

impl StepState {
    /// It will not change any more.
    pub const fn is_finished(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }

    /// What a step that had not finished becomes when its run ends as
    /// `run`: cancelled with a cancelled run, skipped otherwise.
    pub const fn left_over_by(run: RunState) -> Self {
        match run {
            RunState::Cancelled => Self::Cancelled,
            _ => Self::Skipped,
        }
    }

    /// A step that ran to its end: passed or failed by its exit.
    pub const fn of_exit(passed: bool) -> Self {
        if passed { Self::Passed } else { Self::Failed }
    }
}

states! {
    /// How a ref of a repository linked to GitHub compares with GitHub's
    /// (`github_refs.state`).
    pub enum RefSyncState as "snake_case" {
        InSync = "in_sync",
        /// The forge has commits GitHub does not.
        Ahead = "ahead",
        /// GitHub has commits the forge does not.
        Behind = "behind",
        /// Both moved since they last agreed: a person must choose.
        Diverged = "diverged",
        /// The last sync of this ref failed (`last_error` says why).
        Error = "error",
    }
}

impl RefSyncState {
    /// Needs a person: the sides diverged or the sync failed.
    pub const fn needs_attention(self) -> bool {
        matches!(self, Self::Diverged | Self::Error)
    }
}

states! {
    /// An outbound webhook delivery (`webhook_deliveries.status`).
    pub enum DeliveryState as "snake_case" {
        /// Waiting for its first or next attempt.
        Pending = "pending",
        Delivered = "delivered",
        /// Given up on (attempts exhausted, or the webhook was disabled).
        Failed = "failed",
    }
}

impl DeliveryState {
    /// Another attempt is coming.
    pub const fn is_pending(self) -> bool {
        matches!(self, Self::Pending)
    }
}

states! {
    /// A VM's dev server, as its supervisor last saw it (memory only).
    pub enum DevServerState as "snake_case" {
        /// Started; its port does not answer yet.
        Starting = "starting",
        Running = "running",
        /// Found dead; the supervisor restarts it.
        Dead = "dead",
        /// Dead, waiting out its backoff before the next start.
        Backoff = "backoff",
        /// The VM does not run.
        Paused = "paused",
    }
}

states! {
    /// A template's build (`template_builds.state`).
    pub enum TemplateState as "snake_case" {
        Building = "building",
        /// Built: VMs start from it.
        Ready = "ready",
        /// The build failed; its log says why. Posting the spec again
        /// builds it again.
        Failed = "failed",
    }
}

states! {
    /// A GitHub pull request as the forge records it (`github_pulls.state`).
    pub enum PullState as "snake_case" {
        Open = "open",
        Closed = "closed",
    }
}

states! {
    /// The review event the bot posted on a pull request
    /// (`github_reviews.verdict`), spelled as GitHub's API spells it.
    pub enum ReviewVerdict as "SCREAMING_SNAKE_CASE" {
        /// A comment carrying the verdict: the bot never approves.
        Comment = "COMMENT",
        Approve = "APPROVE",
        RequestChanges = "REQUEST_CHANGES",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each variant's JSON is its `as_str`, and parses back.
    fn pinned<T>(expected: &[&str])
    where
        T: Copy + fmt::Debug + PartialEq + serde::Serialize + serde::de::DeserializeOwned,
        T: FromStr<Err = UnknownState> + fmt::Display + 'static,
        T: AllVariants,
    {
        let all = T::all();
        assert_eq!(all.len(), expected.len(), "{expected:?}");
        for (state, text) in all.iter().zip(expected) {
            let json = serde_json::to_string(state).expect("a state serialises");
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(state.to_string(), *text);
            assert_eq!(text.parse::<T>(), Ok(*state));
            let back: T = serde_json::from_str(&json).expect("a state deserialises");
            assert_eq!(back, *state);
        }
    }

    trait AllVariants: Sized + 'static {
        fn all() -> &'static [Self];
    }

    macro_rules! all_variants {
        ($($name:ident),+) => {
            $(impl AllVariants for $name {
                fn all() -> &'static [Self] {
                    Self::ALL
                }
            })+
        };
    }

    all_variants!(
        VmState,
        RunState,
        StepState,
        RefSyncState,
        DeliveryState,
        DevServerState,
        PullState,
        ReviewVerdict,
        TemplateState
    );

    #[test]
    fn vm_states_are_spelled_as_the_api_documents() {
        pinned::<VmState>(&["running", "paused", "paused_to_disk", "crashed", "lost"]);
    }

    #[test]
    fn run_states_are_spelled_as_the_api_documents() {
        pinned::<RunState>(&[
            "queued",
            "running",
            "passed",
            "failed",
            "cancelled",
            "error",
        ]);
    }

    #[test]
    fn step_states_are_spelled_as_the_api_documents() {
        pinned::<StepState>(&[
            "pending",
            "running",
            "passed",
            "failed",
            "skipped",
            "cancelled",
        ]);
    }

    #[test]
    fn ref_sync_states_are_spelled_as_the_api_documents() {
        pinned::<RefSyncState>(&["in_sync", "ahead", "behind", "diverged", "error"]);
    }

    #[test]
    fn delivery_states_are_spelled_as_the_api_documents() {
        pinned::<DeliveryState>(&["pending", "delivered", "failed"]);
    }

    #[test]
    fn dev_server_states_are_spelled_as_the_api_documents() {
        pinned::<DevServerState>(&["starting", "running", "dead", "backoff", "paused"]);
    }

    #[test]
    fn pull_states_and_verdicts_are_spelled_as_stored() {
        pinned::<PullState>(&["open", "closed"]);
        pinned::<ReviewVerdict>(&["COMMENT", "APPROVE", "REQUEST_CHANGES"]);
    }

    #[test]
    fn template_states_are_spelled_as_stored() {
        pinned::<TemplateState>(&["building", "ready", "failed"]);
    }

    #[test]
    fn an_unknown_spelling_is_refused() {
        assert!("Running".parse::<VmState>().is_err());
        assert!(serde_json::from_str::<RunState>("\"canceled\"").is_err());
        let error = "stopped".parse::<VmState>().expect_err("not a state");
        assert_eq!(error.to_string(), "\"stopped\" is not a VmState");
    }

    #[test]
    fn questions_the_forge_asks_of_states() {
        assert!(VmState::Paused.is_live() && !VmState::PausedToDisk.is_live());
        assert!(VmState::PausedToDisk.is_paused() && !VmState::Crashed.is_paused());
        assert!(VmState::PausedToDisk.is_reachable() && !VmState::Lost.is_reachable());
        assert!(!VmState::Lost.is_live() && !VmState::Lost.is_paused());
        assert!(VmState::LIVE.iter().all(|s| s.is_live()));
        let finished: Vec<_> = RunState::ALL.iter().filter(|s| s.is_finished()).collect();
        assert_eq!(finished.len(), 4);
        assert!(RunState::CONCLUDED.iter().all(|s| s.is_finished()));
        assert_eq!(
            StepState::left_over_by(RunState::Cancelled),
            StepState::Cancelled
        );
        assert_eq!(
            StepState::left_over_by(RunState::Failed),
            StepState::Skipped
        );
        assert!(!StepState::Running.is_finished() && StepState::Skipped.is_finished());
        assert!(RefSyncState::Diverged.needs_attention() && !RefSyncState::Ahead.needs_attention());
        assert!(DeliveryState::Pending.is_pending() && !DeliveryState::Failed.is_pending());
    }
}
