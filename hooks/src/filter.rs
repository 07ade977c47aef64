//! Subscription filters: which events a subscription receives.
//!
//! A [`SubscriptionFilter`] is compiled once, when a subscription is created
//! or changed, and then evaluated per event without parsing anything.
//!
//! Rules, in the order they are applied (all must pass):
//!
//! 1. **Event type.** The event's kind must be listed, or the list holds `*`.
//!    `ping` bypasses filters entirely (it is only sent on request).
//! 2. **Branches** (only when the list is non-empty). Globs match the short
//!    branch name (`refs/heads/release/1.2` → `release/1.2`). Tags are not
//!    branches: an event on a tag ref never passes a branch filter (as in
//!    GitHub Actions' `branches:`). Events that carry no ref at all (e.g. a
//!    sandbox event without a branch) are not subject to the branch filter.
//! 3. **Paths** (only when the list is non-empty, and only for `push`
//!    events). A push passes when at least one changed path is included and
//!    not excluded. A push with no changed paths does not pass. When the
//!    forge truncated the path list and no listed path passed, the push
//!    passes anyway: an unlisted path might have.
//!
//! **Precedence within one glob list:** a pattern starting with `!` is an
//! exclusion; exclusions always win over inclusions, whatever their order. A
//! list with only exclusions includes everything else
//! (`["!wip/**"]` = every branch except those under `wip/`).
//!
//! Glob syntax is globset's with `*` and `?` not crossing `/` (use `**` for
//! that), `{a,b}` alternatives, `[a-z]` classes and `\` escapes. An invalid
//! glob is rejected with its list, index and the offset of the error.

use globset::{Candidate, Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::event::{Event, EventKind};

/// Why a filter could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("Unknown event type `{name}` in events[{index}]")]
    UnknownEvent { index: usize, name: String },
    #[error("Empty glob in {list}[{index}]")]
    EmptyGlob { list: &'static str, index: usize },
    #[error("Invalid glob `{glob}` in {list}[{index}] at offset {offset}: {reason}")]
    InvalidGlob {
        list: &'static str,
        index: usize,
        glob: String,
        /// 0-based character offset of the error in the pattern as given
        /// (a leading `!` counts).
        offset: usize,
        reason: String,
        #[source]
        source: Box<globset::Error>,
    },
}

/// Compiled event-type filter: a bit set over [`EventKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFilter {
    bits: u32,
}

impl EventFilter {
    /// Compiles a list of event names; `*` means every event type.
    pub fn new<S: AsRef<str>>(names: &[S]) -> Result<EventFilter, FilterError> {
        let mut bits = 0;
        for (index, name) in names.iter().enumerate() {
            let name = name.as_ref();
            if name == "*" {
                bits = u32::MAX;
                continue;
            }
            let kind = EventKind::parse(name).ok_or_else(|| FilterError::UnknownEvent {
                index,
                name: name.to_owned(),
            })?;
            bits |= kind.bit();
        }
        Ok(EventFilter { bits })
    }

    pub fn matches(&self, kind: EventKind) -> bool {
        self.bits & kind.bit() != 0
    }
}

/// A compiled include/exclude glob list (see the module docs for precedence).
#[derive(Debug, Clone)]
pub struct GlobFilter {
    include: GlobSet,
    exclude: GlobSet,
    /// No inclusion patterns were given: everything not excluded passes.
    include_all: bool,
    /// No patterns at all.
    empty: bool,
}

impl GlobFilter {
    /// Compiles `patterns`; `list` names the field in error messages
    /// (`branches`, `paths`).
    pub fn new<S: AsRef<str>>(
        list: &'static str,
        patterns: &[S],
    ) -> Result<GlobFilter, FilterError> {
        let mut include = GlobSetBuilder::new();
        let mut exclude = GlobSetBuilder::new();
        let mut includes = 0;
        for (index, pattern) in patterns.iter().enumerate() {
            let pattern = pattern.as_ref();
            let (negated, text) = match pattern.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, pattern),
            };
            if text.is_empty() {
                return Err(FilterError::EmptyGlob { list, index });
            }
            let glob = compile_glob(text).map_err(|source| {
                let offset = error_offset(text, source.kind()) + usize::from(negated);
                FilterError::InvalidGlob {
                    list,
                    index,
                    glob: pattern.to_owned(),
                    offset,
                    reason: source.kind().to_string(),
                    source: Box::new(source),
                }
            })?;
            if negated {
                exclude.add(glob);
            } else {
                includes += 1;
                include.add(glob);
            }
        }
        // Individually valid globs always build into a set; the error case
        // is a regex size limit, reported against the whole list.
        let build = |builder: GlobSetBuilder| {
            builder.build().map_err(|source| FilterError::InvalidGlob {
                list,
                index: 0,
                glob: String::new(),
                offset: 0,
                reason: source.kind().to_string(),
                source: Box::new(source),
            })
        };
        Ok(GlobFilter {
            include: build(include)?,
            exclude: build(exclude)?,
            include_all: includes == 0,
            empty: patterns.is_empty(),
        })
    }

    /// True when no patterns were given (the filter does not apply).
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// Whether `candidate` is included and not excluded.
    pub fn matches(&self, candidate: &str) -> bool {
        self.matches_candidate(&Candidate::new(candidate))
    }

    fn matches_candidate(&self, candidate: &Candidate<'_>) -> bool {
        (self.include_all || self.include.is_match_candidate(candidate))
            && !self.exclude.is_match_candidate(candidate)
    }
}

fn compile_glob(text: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(text)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

/// Finds where in `glob` the error `kind` lies, by a scan that mirrors
/// globset's tokenizer for the constructs that can fail.
fn error_offset(glob: &str, kind: &globset::ErrorKind) -> usize {
    use globset::ErrorKind as K;
    let chars: Vec<char> = glob.chars().collect();
    let mut class_start = None;
    let mut braces: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if let Some(start) = class_start {
            // `]` right after `[` or `[!` is a literal member.
            let first = i == start + 1 || (i == start + 2 && matches!(chars[start + 1], '!' | '^'));
            if c == ']' && !first {
                class_start = None;
            } else if let K::InvalidRange(a, b) = kind
                && c == *a
                && chars.get(i + 1) == Some(&'-')
                && chars.get(i + 2) == Some(b)
            {
                return i;
            }
            i += 1;
            continue;
        }
        match c {
            '\\' => {
                if i + 1 == chars.len() && matches!(kind, K::DanglingEscape) {
                    return i;
                }
                i += 1;
            }
            '[' => class_start = Some(i),
            '{' => braces.push(i),
            '}' if braces.pop().is_none() && matches!(kind, K::UnopenedAlternates) => return i,
            _ => {}
        }
        i += 1;
    }
    match kind {
        K::UnclosedClass => class_start.unwrap_or(0),
        K::UnclosedAlternates => braces.first().copied().unwrap_or(0),
        K::TooManyNestedAlternates => braces.last().copied().unwrap_or(0),
        _ => 0,
    }
}

/// The compiled filter of one subscription.
#[derive(Debug, Clone)]
pub struct SubscriptionFilter {
    pub events: EventFilter,
    pub branches: GlobFilter,
    pub paths: GlobFilter,
}

impl SubscriptionFilter {
    /// Compiles the three lists of a subscription.
    pub fn new<E, B, P>(events: &[E], branches: &[B], paths: &[P]) -> Result<Self, FilterError>
    where
        E: AsRef<str>,
        B: AsRef<str>,
        P: AsRef<str>,
    {
        Ok(SubscriptionFilter {
            events: EventFilter::new(events)?,
            branches: GlobFilter::new("branches", branches)?,
            paths: GlobFilter::new("paths", paths)?,
        })
    }

    /// What is wrong with each list, all at once (the first problem of
    /// each, by the list's name: `events`, `branches`, `paths`); empty
    /// when [`SubscriptionFilter::new`] accepts them.
    pub fn problems<E, B, P>(
        events: &[E],
        branches: &[B],
        paths: &[P],
    ) -> Vec<(&'static str, FilterError)>
    where
        E: AsRef<str>,
        B: AsRef<str>,
        P: AsRef<str>,
    {
        let mut problems = Vec::new();
        if let Err(error) = EventFilter::new(events) {
            problems.push(("events", error));
        }
        for (list, globs) in [
            (
                "branches",
                branches.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
            ),
            ("paths", paths.iter().map(AsRef::as_ref).collect()),
        ] {
            if let Err(error) = GlobFilter::new(list, &globs) {
                problems.push((list, error));
            }
        }
        problems
    }

    /// Whether `event` should be delivered to this subscription. To test
    /// one event against many subscriptions, prepare it once with
    /// [`PreparedEvent::new`] and call [`SubscriptionFilter::matches_prepared`].
    pub fn matches(&self, event: &Event) -> bool {
        self.matches_prepared(&PreparedEvent::new(event))
    }

    /// [`SubscriptionFilter::matches`] for an event prepared once.
    pub fn matches_prepared(&self, prepared: &PreparedEvent<'_>) -> bool {
        let event = prepared.event;
        if event.kind == EventKind::Ping {
            return true;
        }
        if !self.events.matches(event.kind) {
            return false;
        }
        if !self.branches.is_empty() && event.git_ref.is_some() {
            match &prepared.branch {
                Some(branch) if self.branches.matches_candidate(branch) => {}
                _ => return false,
            }
        }
        if !self.paths.is_empty() && event.kind == EventKind::Push {
            let any = prepared
                .paths
                .iter()
                .any(|p| self.paths.matches_candidate(p));
            if !any && !event.paths_truncated {
                return false;
            }
        }
        true
    }
}

/// An event with its branch and paths normalised for glob matching once,
/// however many subscriptions it is tested against.
#[derive(Debug)]
pub struct PreparedEvent<'a> {
    event: &'a Event,
    branch: Option<Candidate<'a>>,
    paths: Vec<Candidate<'a>>,
}

impl<'a> PreparedEvent<'a> {
    pub fn new(event: &'a Event) -> PreparedEvent<'a> {
        PreparedEvent {
            event,
            branch: event.branch().map(Candidate::new),
            paths: if event.kind == EventKind::Push {
                event.paths.iter().map(Candidate::new).collect()
            } else {
                Vec::new()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(git_ref: &str, paths: &[&str]) -> Event {
        let mut event = Event::new(1, EventKind::Push, "acme/web");
        event.git_ref = Some(git_ref.into());
        event.paths = paths.iter().map(|p| p.to_string()).collect();
        event
    }

    #[test]
    fn main_and_src_fires_only_for_matching_push() {
        let filter = SubscriptionFilter::new(&["push"], &["main"], &["src/**"]).expect("valid");
        assert!(filter.matches(&push("refs/heads/main", &["src/a.ts"])));
        assert!(filter.matches(&push("refs/heads/main", &["README.md", "src/deep/b.ts"])));
        assert!(!filter.matches(&push("refs/heads/feature/x", &["src/a.ts"])));
        assert!(!filter.matches(&push("refs/heads/main", &["README.md"])));
        assert!(!filter.matches(&push("refs/heads/main", &[])));
        // A tag named like the branch is not the branch.
        assert!(!filter.matches(&push("refs/tags/main", &["src/a.ts"])));
    }

    #[test]
    fn negations_exclude_whatever_their_position() {
        let branches = GlobFilter::new("branches", &["!wip/**", "*", "release/*"]).expect("valid");
        assert!(branches.matches("main"));
        assert!(branches.matches("release/1.2"));
        assert!(
            !branches.matches("release/1.2/hotfix"),
            "`*` does not cross `/`"
        );
        assert!(!branches.matches("wip/a/b"));

        let only_excludes = GlobFilter::new("branches", &["!wip/**"]).expect("valid");
        assert!(only_excludes.matches("feature/x"));
        assert!(!only_excludes.matches("wip/x"));

        let paths = SubscriptionFilter::new(
            &["*"],
            &[] as &[&str],
            &["src/**/*.ts", "!**/*.md", "!src/gen/**"],
        )
        .expect("valid");
        assert!(paths.matches(&push("refs/heads/x", &["src/a.ts"])));
        assert!(paths.matches(&push("refs/heads/x", &["src/gen/x.ts", "src/lib/y.ts"])));
        assert!(!paths.matches(&push("refs/heads/x", &["src/gen/x.ts"])));
        assert!(!paths.matches(&push("refs/heads/x", &["docs/a.md", "src/a.js"])));
    }

    #[test]
    fn event_types_and_wildcard() {
        let filter = SubscriptionFilter::new(
            &["branch.created", "tag.deleted"],
            &[] as &[&str],
            &[] as &[&str],
        )
        .expect("valid");
        let mut event = push("refs/heads/main", &["a"]);
        assert!(!filter.matches(&event));
        event.kind = EventKind::BranchCreated;
        assert!(filter.matches(&event));
        let all = SubscriptionFilter::new(&["*"], &[] as &[&str], &[] as &[&str]).expect("valid");
        for kind in EventKind::ALL {
            event.kind = kind;
            assert!(all.matches(&event));
        }
        let problems = SubscriptionFilter::problems(&["pushh"], &["[x"], &["ok/**", "{a"]);
        let lists: Vec<&str> = problems.iter().map(|(list, _)| *list).collect();
        assert_eq!(
            lists,
            ["events", "branches", "paths"],
            "every list's problem at once"
        );
        assert!(SubscriptionFilter::problems(&["push"], &["main"], &["src/**"]).is_empty());
        let err = EventFilter::new(&["push", "pushh"]).expect_err("unknown");
        assert!(
            matches!(err, FilterError::UnknownEvent { index: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn branch_filter_skips_refless_events_and_rejects_tags() {
        let filter = SubscriptionFilter::new(&["*"], &["main"], &[] as &[&str]).expect("valid");
        let sandbox = Event::new(2, EventKind::SandboxCreated, "acme/web");
        assert!(filter.matches(&sandbox));
        let mut tag = Event::new(3, EventKind::TagCreated, "acme/web");
        tag.git_ref = Some("refs/tags/v1".into());
        assert!(!filter.matches(&tag));
    }

    #[test]
    fn paths_only_filter_push_and_truncation_is_conservative() {
        let filter = SubscriptionFilter::new(&["*"], &[] as &[&str], &["src/**"]).expect("valid");
        let mut created = push("refs/heads/main", &[]);
        created.kind = EventKind::BranchCreated;
        assert!(filter.matches(&created));
        let mut truncated = push("refs/heads/main", &["README.md"]);
        truncated.paths_truncated = true;
        assert!(filter.matches(&truncated));
    }

    #[test]
    fn invalid_globs_report_their_offset() {
        let cases: &[(&str, usize)] = &[
            ("src/[ab", 4),
            ("src/{a,b", 4),
            ("src/a}b", 5),
            ("src/a\\", 5),
            ("!x/[z-a]", 4),
        ];
        for (glob, offset) in cases {
            let err = GlobFilter::new("paths", &["ok/**", glob]).expect_err(glob);
            match &err {
                FilterError::InvalidGlob {
                    index,
                    offset: got,
                    glob: g,
                    ..
                } => {
                    assert_eq!(*index, 1);
                    assert_eq!(g, glob);
                    assert_eq!(got, offset, "{err}");
                }
                other => panic!("unexpected {other}"),
            }
        }
        assert!(matches!(
            GlobFilter::new("branches", &["!"]),
            Err(FilterError::EmptyGlob { index: 0, .. })
        ));
    }
}
