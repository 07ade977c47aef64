//! Push options (`git push -o ...`) the forge acts on. The forge
//! advertises `push-options`; a push's options arrive after its commands
//! (see [`crate::git::pktline`]) and are judged before git runs:
//!
//! - `ci.skip`: the push is recorded (its events, webhooks, sync) but no
//!   pipeline runs for it.
//! - `ci.variable=KEY=VALUE`: `KEY` is set to `VALUE` in the environment of
//!   every step of the push's runs (and of their re-runs). At most
//!   [`MAX_VARIABLES`], names of letters, digits and `_` not starting with
//!   a digit, values of at most [`MAX_VALUE_BYTES`]. Names the forge sets
//!   itself (`CI`, `FORGE_*`, the proxy and CA variables) are refused.
//!   Variables are shown on the run and in the push event: they are not a
//!   place for secrets.
//!
//! Other options are ignored, as git servers do; a malformed `ci.` option
//! refuses the push with a message `git push` prints.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Variables one push may set.
pub const MAX_VARIABLES: usize = 32;
/// Longest variable name and value, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
pub const MAX_VALUE_BYTES: usize = 4096;

/// What a push's options ask of its pipelines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushOptions {
    pub ci_skip: bool,
    pub variables: BTreeMap<String, String>,
}

impl PushOptions {
    /// Reads the options of a push; `Err` says which one is refused, and
    /// why, in words for `git push` to print.
    pub fn parse(options: &[String]) -> Result<PushOptions, String> {
        let mut parsed = PushOptions::default();
        for option in options {
            if option == "ci.skip" {
                parsed.ci_skip = true;
            } else if let Some(assignment) = option.strip_prefix("ci.variable=") {
                let Some((name, value)) = assignment.split_once('=') else {
                    return Err(format!(
                        "push option {option:?}: write ci.variable=NAME=VALUE"
                    ));
                };
                check_name(name)?;
                if value.len() > MAX_VALUE_BYTES || value.contains('\0') {
                    return Err(format!(
                        "push option ci.variable {name}: a value of at most {MAX_VALUE_BYTES} bytes without NUL"
                    ));
                }
                parsed.variables.insert(name.to_owned(), value.to_owned());
                if parsed.variables.len() > MAX_VARIABLES {
                    return Err(format!("at most {MAX_VARIABLES} ci.variable push options"));
                }
            } else if option.starts_with("ci.") {
                return Err(format!(
                    "unknown push option {option:?}: ci.skip or ci.variable=NAME=VALUE"
                ));
            }
        }
        Ok(parsed)
    }

    pub fn is_empty(&self) -> bool {
        !self.ci_skip && self.variables.is_empty()
    }

    /// The `push_options` object of a push event (and a re-run's request).
    pub fn to_json(&self) -> Value {
        json!({ "ci_skip": self.ci_skip, "variables": self.variables })
    }

    /// The options an event's payload recorded (none when it has none).
    pub fn of_payload(payload: &Value) -> PushOptions {
        let options = &payload["push_options"];
        PushOptions {
            ci_skip: options["ci_skip"] == true,
            variables: serde_json::from_value(options["variables"].clone()).unwrap_or_default(),
        }
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let well_formed = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !well_formed {
        return Err(format!(
            "push option ci.variable {name:?}: a name of letters, digits and _, not starting with a digit"
        ));
    }
    let upper = name.to_ascii_uppercase();
    let reserved = name == "CI"
        || upper.starts_with("FORGE_")
        || upper.ends_with("_PROXY")
        || crate::vms::network::CA_ENV.contains(&name);
    if reserved {
        return Err(format!(
            "push option ci.variable {name}: the forge sets this variable itself"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(options: &[&str]) -> Result<PushOptions, String> {
        PushOptions::parse(&options.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn skip_and_variables_are_read_and_other_options_ignored() {
        let parsed = parse(&[
            "ci.skip",
            "ci.variable=MODE=fast=yes",
            "merge_request.create",
        ])
        .expect("valid options");
        assert!(parsed.ci_skip);
        assert_eq!(parsed.variables["MODE"], "fast=yes", "the first = splits");
        assert!(parse(&[]).expect("none").is_empty());
        let back = PushOptions::of_payload(&json!({ "push_options": parsed.to_json() }));
        assert_eq!(back, parsed);
    }

    #[test]
    fn malformed_reserved_and_too_many_variables_are_refused() {
        for bad in [
            "ci.variable=NOVALUE",
            "ci.variable==x",
            "ci.variable=1A=x",
            "ci.variable=A-B=x",
            "ci.variable=CI=false",
            "ci.variable=FORGE_RUN=1",
            "ci.variable=https_proxy=http://evil",
            "ci.variable=SSL_CERT_FILE=/tmp/x",
            "ci.skipp",
        ] {
            assert!(parse(&[bad]).is_err(), "{bad}");
        }
        let long = format!("ci.variable=A={}", "x".repeat(MAX_VALUE_BYTES + 1));
        assert!(parse(&[&long]).is_err());
        let many: Vec<String> = (0..=MAX_VARIABLES)
            .map(|i| format!("ci.variable=V{i}=x"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(parse(&many).is_err());
    }
}
