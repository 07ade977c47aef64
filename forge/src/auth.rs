//! Tokens and what they allow.
//!
//! A token is `forge_` followed by 40 base62 characters (238 bits of
//! randomness). Only its SHA-256 is stored; the secret is shown once, when it
//! is created. Scopes: `admin` (everything, including repositories and
//! tokens), `repo:write` (push, which implies `repo:read`), `repo:read`
//! (clone, fetch, read the API). A token may be limited to one repository.
//!
//! A sandbox's git token (minted by `vms/gitrelay.rs`) records its VM in its
//! own row ([`Caller::sandbox_vm`]): whoever presents it, inside the sandbox
//! or not, pushes only where that sandbox may (`git/push/rules.rs`).

use rand::Rng;
use sha2::{Digest, Sha256};

use crate::store::TokenRow;

/// The prefix of every secret, so that secret scanners can recognise one.
pub const SECRET_PREFIX: &str = "forge_";

/// A permission a token may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    RepoRead,
    RepoWrite,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Admin, Scope::RepoWrite, Scope::RepoRead];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::RepoWrite => "repo:write",
            Scope::RepoRead => "repo:read",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == text)
    }
}

/// Parses a space- or comma-separated list of scopes; `Err` names the first
/// unknown one.
pub fn parse_scopes<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Vec<Scope>, String> {
    let mut scopes = Vec::new();
    for item in items
        .into_iter()
        .flat_map(|item| item.split([' ', ',']))
        .filter(|item| !item.is_empty())
    {
        let scope = Scope::parse(item).ok_or_else(|| item.to_owned())?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    scopes.sort();
    Ok(scopes)
}

pub fn scopes_to_string(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|scope| scope.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A fresh random secret.
pub fn new_secret() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let body: String = (0..40)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("{SECRET_PREFIX}{body}")
}

/// The stored form of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub token_name: String,
    scopes: Vec<Scope>,
    repo_id: Option<String>,
    sandbox_vm: Option<String>,
}

/// Why a caller may not do something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The token lacks the scope.
    Scope(Scope),
    /// The token is limited to another repository.
    OtherRepo,
}

impl Caller {
    pub fn from_row(row: &TokenRow) -> Self {
        Self {
            token_id: row.id.clone(),
            token_name: row.name.clone(),
            scopes: parse_scopes(row.scopes.split(' ')).unwrap_or_default(),
            repo_id: row.repo_id.clone(),
            sandbox_vm: row.vm_id.clone(),
        }
    }

    /// The VM whose git token this is, if it is one: its pushes are
    /// limited to what that sandbox may change.
    pub fn sandbox_vm(&self) -> Option<&str> {
        self.sandbox_vm.as_deref()
    }

    /// An admin over the whole forge: the admin scope and no repository
    /// limit. A repository-limited admin token is an admin of that
    /// repository only (`check_repo`), never of the forge.
    pub fn is_admin(&self) -> bool {
        self.repo_id.is_none() && self.scopes.contains(&Scope::Admin)
    }

    /// Whether the caller may see and use a sandbox that belongs to
    /// `repo_id` (if any) and was created by the token `created_by`: its
    /// creator, a forge admin, or an admin of its repository.
    pub fn may_use_vm(&self, repo_id: Option<&str>, created_by: Option<&str>) -> bool {
        self.is_admin()
            || created_by == Some(self.token_id.as_str())
            || repo_id.is_some_and(|repo| self.check_repo(repo, Scope::Admin).is_ok())
    }

    /// The one repository this token is limited to, if any.
    pub fn repo_limit(&self) -> Option<&str> {
        self.repo_id.as_deref()
    }

    fn holds(&self, scope: Scope) -> bool {
        // Scopes are ordered by power: admin > repo:write > repo:read.
        self.scopes.iter().any(|held| *held >= scope)
    }

    /// Checks `scope` on the repository `repo_id`.
    pub fn check_repo(&self, repo_id: &str, scope: Scope) -> Result<(), Denied> {
        if let Some(limit) = &self.repo_id
            && limit != repo_id
        {
            return Err(Denied::OtherRepo);
        }
        if self.holds(scope) {
            Ok(())
        } else {
            Err(Denied::Scope(scope))
        }
    }

    /// Checks a scope that is not about one repository (admin actions).
    pub fn check(&self, scope: Scope) -> Result<(), Denied> {
        if self.holds(scope) && (self.repo_id.is_none() || scope != Scope::Admin) {
            Ok(())
        } else {
            Err(Denied::Scope(scope))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(scopes: &str, repo: Option<&str>) -> Caller {
        Caller::from_row(&TokenRow {
            id: "t".into(),
            name: "t".into(),
            scopes: scopes.into(),
            repo_id: repo.map(Into::into),
            vm_id: None,
            created_at: String::new(),
            last_used_at: None,
            revoked_at: None,
        })
    }

    #[test]
    fn a_repository_limited_admin_is_admin_of_that_repository_only() {
        let forge_admin = caller("admin", None);
        let repo_admin = caller("admin", Some("r"));
        let writer = caller("repo:write", None);
        assert!(forge_admin.is_admin());
        assert!(!repo_admin.is_admin());
        assert_eq!(
            repo_admin.check(Scope::Admin),
            Err(Denied::Scope(Scope::Admin))
        );
        assert!(repo_admin.check_repo("r", Scope::Admin).is_ok());
        assert_eq!(
            repo_admin.check_repo("s", Scope::RepoRead),
            Err(Denied::OtherRepo)
        );
        // Sandboxes: (repo of the VM, its creator) → who may use it.
        let table: [(Option<&str>, Option<&str>, [bool; 3]); 5] = [
            (None, None, [true, false, false]),
            (Some("r"), None, [true, true, false]),
            (Some("s"), None, [true, false, false]),
            (Some("s"), Some("t"), [true, true, true]),
            (None, Some("other"), [true, false, false]),
        ];
        for (repo, creator, expected) in table {
            let got = [&forge_admin, &repo_admin, &writer].map(|c| c.may_use_vm(repo, creator));
            assert_eq!(got, expected, "repo {repo:?}, created by {creator:?}");
        }
    }

    #[test]
    fn write_implies_read_but_not_admin() {
        let writer = caller("repo:write", None);
        assert!(writer.check_repo("r", Scope::RepoRead).is_ok());
        assert!(writer.check_repo("r", Scope::RepoWrite).is_ok());
        assert_eq!(writer.check(Scope::Admin), Err(Denied::Scope(Scope::Admin)));
        let reader = caller("repo:read", None);
        assert_eq!(
            reader.check_repo("r", Scope::RepoWrite),
            Err(Denied::Scope(Scope::RepoWrite))
        );
    }

    #[test]
    fn repo_limit_is_enforced_even_for_admin() {
        let limited = caller("admin", Some("r1"));
        assert!(limited.check_repo("r1", Scope::RepoWrite).is_ok());
        assert_eq!(
            limited.check_repo("r2", Scope::RepoRead),
            Err(Denied::OtherRepo)
        );
        assert!(limited.check(Scope::Admin).is_err());
    }

    #[test]
    fn scopes_parse_and_reject_unknown() {
        assert_eq!(
            parse_scopes(["repo:read,admin", "admin"]),
            Ok(vec![Scope::RepoRead, Scope::Admin])
        );
        assert_eq!(parse_scopes(["root"]), Err("root".to_owned()));
    }

    #[test]
    fn secrets_are_random_and_hash_is_hex_sha256() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), SECRET_PREFIX.len() + 40);
        assert_eq!(hash_secret("abc").len(), 64);
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
