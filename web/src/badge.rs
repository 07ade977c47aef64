//! Status badges: a state's name on a coloured label. The colour is a CSS
//! class of `static/app.css` (`ok`, `bad`, `wait`, `none`), chosen for each
//! variant of each state enum of the API contract in one exhaustive match
//! per enum: a new state does not compile until it has a colour.
//!
//! `static/app.js` recolours the run and step badges it updates live from
//! the log stream with a table of its own; a test holds that table to
//! these matches.

use api_types::{
    DeliveryState, DevServerState, PullState, RefSyncState, ReviewVerdict, RunState, StepState,
    VmState,
};
use maud::{Markup, html};

/// How a badge is coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Working or done well.
    Good,
    /// Failed or needs a person.
    Bad,
    /// Waiting, paused or stopped on purpose.
    Waiting,
    Neutral,
}

impl Tone {
    /// The CSS class `app.css` colours.
    pub const fn class(self) -> &'static str {
        match self {
            Self::Good => "ok",
            Self::Bad => "bad",
            Self::Waiting => "wait",
            Self::Neutral => "none",
        }
    }
}

/// A state a badge shows: its wire spelling (`Display`) and its colour.
pub trait Toned: std::fmt::Display {
    fn tone(&self) -> Tone;
}

/// A coloured label for a state, spelled as the API spells it with spaces
/// for underscores (`paused to disk`).
pub fn badge(state: &impl Toned) -> Markup {
    labelled(&state.to_string().replace('_', " "), state.tone())
}

/// A badge for something that is not a state (`none`, `active`).
pub fn plain(label: &str) -> Markup {
    labelled(label, Tone::Neutral)
}

fn labelled(label: &str, tone: Tone) -> Markup {
    html! { span class={ "badge " (tone.class()) } { (label) } }
}

impl Toned for VmState {
    fn tone(&self) -> Tone {
        match self {
            Self::Running => Tone::Good,
            Self::Paused | Self::PausedToDisk => Tone::Waiting,
            Self::Crashed | Self::Lost => Tone::Bad,
        }
    }
}

impl Toned for RunState {
    fn tone(&self) -> Tone {
        match self {
            Self::Running | Self::Passed => Tone::Good,
            Self::Queued | Self::Cancelled => Tone::Waiting,
            Self::Failed | Self::Error => Tone::Bad,
        }
    }
}

impl Toned for StepState {
    fn tone(&self) -> Tone {
        match self {
            Self::Running | Self::Passed => Tone::Good,
            Self::Pending | Self::Cancelled => Tone::Waiting,
            Self::Failed => Tone::Bad,
            // Not a result of its own: an earlier step's or the run's.
            Self::Skipped => Tone::Neutral,
        }
    }
}

impl Toned for RefSyncState {
    fn tone(&self) -> Tone {
        match self {
            Self::InSync => Tone::Good,
            Self::Ahead | Self::Behind => Tone::Waiting,
            Self::Diverged | Self::Error => Tone::Bad,
        }
    }
}

impl Toned for DeliveryState {
    fn tone(&self) -> Tone {
        match self {
            Self::Delivered => Tone::Good,
            Self::Pending => Tone::Waiting,
            Self::Failed => Tone::Bad,
        }
    }
}

impl Toned for DevServerState {
    fn tone(&self) -> Tone {
        match self {
            Self::Running => Tone::Good,
            Self::Starting | Self::Backoff | Self::Paused => Tone::Waiting,
            Self::Dead => Tone::Bad,
        }
    }
}

impl Toned for PullState {
    fn tone(&self) -> Tone {
        match self {
            Self::Open | Self::Closed => Tone::Neutral,
        }
    }
}

impl Toned for ReviewVerdict {
    fn tone(&self) -> Tone {
        match self {
            Self::Approve => Tone::Good,
            Self::RequestChanges => Tone::Bad,
            Self::Comment => Tone::Neutral,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Every variant of `states` and the class its badge has.
    fn classes<S: Toned + Copy>(states: &[S]) -> Vec<(String, &'static str)> {
        states
            .iter()
            .map(|state| (state.to_string(), state.tone().class()))
            .collect()
    }

    #[test]
    fn every_state_has_its_colour() {
        let table = [
            classes(VmState::ALL),
            classes(RunState::ALL),
            classes(StepState::ALL),
            classes(RefSyncState::ALL),
            classes(DeliveryState::ALL),
            classes(DevServerState::ALL),
            classes(PullState::ALL),
            classes(ReviewVerdict::ALL),
        ]
        .concat();
        let expected = [
            ("running", "ok"),
            ("paused", "wait"),
            ("paused_to_disk", "wait"),
            ("crashed", "bad"),
            ("lost", "bad"),
            ("queued", "wait"),
            ("running", "ok"),
            ("passed", "ok"),
            ("failed", "bad"),
            ("cancelled", "wait"),
            ("error", "bad"),
            ("pending", "wait"),
            ("running", "ok"),
            ("passed", "ok"),
            ("failed", "bad"),
            ("skipped", "none"),
            ("cancelled", "wait"),
            ("in_sync", "ok"),
            ("ahead", "wait"),
            ("behind", "wait"),
            ("diverged", "bad"),
            ("error", "bad"),
            ("pending", "wait"),
            ("delivered", "ok"),
            ("failed", "bad"),
            ("starting", "wait"),
            ("running", "ok"),
            ("dead", "bad"),
            ("backoff", "wait"),
            ("paused", "wait"),
            ("open", "none"),
            ("closed", "none"),
            ("COMMENT", "none"),
            ("APPROVE", "ok"),
            ("REQUEST_CHANGES", "bad"),
        ];
        let table: Vec<(&str, &str)> = table.iter().map(|(s, c)| (s.as_str(), *c)).collect();
        assert_eq!(table, expected);
    }

    #[test]
    fn a_badge_spells_the_state_with_spaces() {
        assert_eq!(
            badge(&VmState::PausedToDisk).into_string(),
            r#"<span class="badge wait">paused to disk</span>"#
        );
        assert_eq!(
            badge(&ReviewVerdict::RequestChanges).into_string(),
            r#"<span class="badge bad">REQUEST CHANGES</span>"#
        );
        assert_eq!(
            plain("none").into_string(),
            r#"<span class="badge none">none</span>"#
        );
    }

    /// The `{ state: "class", ... }` table of `badge()` in `app.js`.
    fn script_classes() -> HashMap<&'static str, &'static str> {
        let script = include_str!("../static/app.js");
        let start = script
            .find("const cls = {")
            .expect("app.js colours badges with a `cls` table")
            + "const cls = {".len();
        let end = start + script[start..].find('}').expect("the table ends");
        script[start..end]
            .split(',')
            .filter_map(|pair| pair.split_once(':'))
            .map(|(state, class)| (state.trim(), class.trim().trim_matches('"')))
            .collect()
    }

    #[test]
    fn live_run_and_step_badges_are_coloured_as_the_page_colours_them() {
        let script = script_classes();
        let live = [classes(RunState::ALL), classes(StepState::ALL)].concat();
        for (state, class) in live {
            let in_script = script.get(state.as_str()).copied().unwrap_or("none");
            assert_eq!(in_script, class, "{state}");
        }
    }
}
