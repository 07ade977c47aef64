//! Repository names: `owner/name`, each part `[A-Za-z0-9._-]{1,100}`, not
//! starting with `.` and without `..`. The rules keep a name from ever
//! being a path trick (`../x`, `.git`) and keep URLs unambiguous.

use std::fmt;

/// A validated `owner/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoName {
    pub owner: String,
    pub name: String,
}

/// Why a name was refused; the message is shown to the user as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(String);

const MAX_PART: usize = 100;

impl RepoName {
    /// Parses `owner/name`.
    pub fn parse(full: &str) -> Result<Self, NameError> {
        let Some((owner, name)) = full.split_once('/') else {
            return Err(NameError(format!(
                "repository name {:?} must be of the form owner/name",
                shorten(full)
            )));
        };
        Self::from_parts(owner, name)
    }

    /// Validates the two parts separately (as they come from a URL path).
    pub fn from_parts(owner: &str, name: &str) -> Result<Self, NameError> {
        check_part("owner", owner)?;
        check_part("name", name)?;
        Ok(Self {
            owner: owner.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

fn check_part(what: &str, part: &str) -> Result<(), NameError> {
    let shown = shorten(part);
    if part.is_empty() {
        return Err(NameError(format!("repository {what} must not be empty")));
    }
    if part.len() > MAX_PART {
        return Err(NameError(format!(
            "repository {what} {shown:?} is longer than {MAX_PART} characters"
        )));
    }
    if let Some(bad) = part
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError(format!(
            "repository {what} {shown:?} contains {bad:?}; only letters, digits, '.', '_' and '-' are allowed"
        )));
    }
    if part.starts_with('.') {
        return Err(NameError(format!(
            "repository {what} {shown:?} must not start with '.'"
        )));
    }
    if part.contains("..") {
        return Err(NameError(format!(
            "repository {what} {shown:?} must not contain '..'"
        )));
    }
    Ok(())
}

/// At most 40 characters of hostile input go back into a message.
fn shorten(text: &str) -> String {
    let mut shown: String = text.chars().take(40).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        let name = RepoName::parse("acme/web-app_2.0").expect("valid");
        assert_eq!(
            (name.owner.as_str(), name.name.as_str()),
            ("acme", "web-app_2.0")
        );
        assert_eq!(name.to_string(), "acme/web-app_2.0");
    }

    #[test]
    fn refuses_hostile_names() {
        let long = format!("a/{}", "x".repeat(101));
        for bad in [
            "../x", "a/b/c", ".git", "a/.git", "a/..", "a/x..y", "a/", "/b", "noslash", "a/b c",
            "a/b%2f", "a/\0", "ä/b", &long,
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let message = RepoName::parse(&long).expect_err("too long").to_string();
        assert!(message.contains("longer than 100"), "{message}");
        assert!(
            message.len() < 120,
            "hostile input echoed in full: {message}"
        );
    }
}
