//! The recipe: the files in `vmm/guest/rootfs/` (embedded at compile
//! time), the host's apt sources, and the hash of all inputs that names an
//! image.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::BuildError;

pub const PACKAGES_TXT: &str = include_str!("../rootfs/packages.txt");
pub const NPM_LOCK: &str = include_str!("../rootfs/npm.lock");
pub const HOSTS: &str = include_str!("../rootfs/hosts");

/// Bump when the build steps change in a way that changes the output.
pub const RECIPE_VERSION: u32 = 1;

pub const SUITE: &str = "bookworm";

/// What one `npm.lock` line installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Node,
    Npm,
    Bun,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpmPin {
    pub role: Role,
    pub package: String,
    pub version: String,
    /// SRI string, `sha512-<base64>`.
    pub integrity: String,
}

impl NpmPin {
    /// `https://registry/<package>/-/<basename>-<version>.tgz`
    pub fn tarball_url(&self, registry: &str) -> String {
        let base = self.package.rsplit('/').next().unwrap_or(&self.package);
        format!(
            "{}/{}/-/{}-{}.tgz",
            registry.trim_end_matches('/'),
            self.package,
            base,
            self.version
        )
    }
}

fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
}

pub fn packages() -> Vec<String> {
    lines(PACKAGES_TXT).map(str::to_owned).collect()
}

pub fn npm_pins() -> Result<Vec<NpmPin>, BuildError> {
    lines(NPM_LOCK)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let bad = || BuildError::Recipe(format!("bad npm.lock line {l:?}"));
            let [role, package, version, integrity] = f[..] else {
                return Err(bad());
            };
            let role = match role {
                "node" => Role::Node,
                "npm" => Role::Npm,
                "bun" => Role::Bun,
                _ => return Err(bad()),
            };
            if !integrity.starts_with("sha512-") {
                return Err(bad());
            }
            Ok(NpmPin {
                role,
                package: package.to_owned(),
                version: version.to_owned(),
                integrity: integrity.to_owned(),
            })
        })
        .collect()
}

/// One apt source line for bookworm (main archive, updates, security).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    pub uri: String,
    pub suite: String,
    pub components: Vec<String>,
}

impl AptSource {
    pub fn line(&self) -> String {
        format!(
            "deb {} {} {}",
            self.uri,
            self.suite,
            self.components.join(" ")
        )
    }
}

/// Reads the host's apt sources (one-line `.list` and deb822 `.sources`
/// files) and keeps the `deb` entries of bookworm suites.
pub fn host_apt_sources(etc_apt: &Path) -> Result<Vec<AptSource>, BuildError> {
    let mut files = vec![etc_apt.join("sources.list")];
    if let Ok(rd) = std::fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut more: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    let mut out = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => out.extend(parse_deb822(&text)),
            Some("list") => out.extend(parse_one_line(&text)),
            _ => {}
        }
    }
    out.retain(|s| s.suite == SUITE || s.suite.starts_with(&format!("{SUITE}-")));
    for s in &mut out {
        s.components.retain(|c| c == "main");
    }
    out.retain(|s| !s.components.is_empty());
    out.dedup();
    if !out.iter().any(|s| s.suite == SUITE) {
        return Err(BuildError::Recipe(format!(
            "no `deb ... {SUITE} main` source in {}: the image is built from the host's configured Debian mirror",
            etc_apt.display()
        )));
    }
    Ok(out)
}

fn parse_one_line(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for l in lines(text) {
        let mut f = l.split_whitespace().peekable();
        if f.next() != Some("deb") {
            continue;
        }
        // Skip an options block: `[arch=amd64 signed-by=...]`.
        if f.peek().is_some_and(|w| w.starts_with('[')) {
            for w in f.by_ref() {
                if w.ends_with(']') {
                    break;
                }
            }
        }
        let (Some(uri), Some(suite)) = (f.next(), f.next()) else {
            continue;
        };
        out.push(AptSource {
            uri: uri.to_owned(),
            suite: suite.to_owned(),
            components: f.map(str::to_owned).collect(),
        });
    }
    out
}

fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut types = Vec::new();
        let mut uris = Vec::new();
        let mut suites = Vec::new();
        let mut comps = Vec::new();
        let mut enabled = true;
        for l in stanza.lines() {
            if l.starts_with('#') {
                continue;
            }
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let words = || v.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
            match k.trim().to_ascii_lowercase().as_str() {
                "types" => types = words(),
                "uris" => uris = words(),
                "suites" => suites = words(),
                "components" => comps = words(),
                "enabled" => enabled = v.trim() != "no",
                _ => {}
            }
        }
        if !enabled || !types.iter().any(|t| t == "deb") {
            continue;
        }
        for uri in &uris {
            for suite in &suites {
                out.push(AptSource {
                    uri: uri.clone(),
                    suite: suite.clone(),
                    components: comps.clone(),
                });
            }
        }
    }
    out
}

/// Hash of the Debian base: recipe version, packages, apt sources.
pub fn base_hash(sources: &[AptSource]) -> String {
    let mut h = Sha256::new();
    h.update(format!("recipe {RECIPE_VERSION}\nsuite {SUITE}\n"));
    h.update(PACKAGES_TXT);
    for s in sources {
        h.update(s.line());
        h.update("\n");
    }
    hex(&h.finalize()[..8])
}

/// Hash of everything that goes into an image.
pub fn image_hash(base: &str, agent_binary: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(base);
    h.update(NPM_LOCK);
    h.update(HOSTS);
    h.update(Sha256::digest(agent_binary));
    hex(&h.finalize()[..8])
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_recipe_parses() {
        let pins = npm_pins().unwrap();
        assert_eq!(pins.len(), 3);
        let bun = pins.iter().find(|p| p.role == Role::Bun).unwrap();
        assert_eq!(bun.package, "@oven/bun-linux-x64");
        assert_eq!(
            bun.tarball_url("https://r.example/"),
            format!(
                "https://r.example/@oven/bun-linux-x64/-/bun-linux-x64-{}.tgz",
                bun.version
            )
        );
        assert!(packages().contains(&"git".to_owned()));
    }

    #[test]
    fn sources_in_both_formats_are_read() {
        let dir = std::env::temp_dir().join(format!("guest-image-apt-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sources.list.d")).unwrap();
        std::fs::write(
            dir.join("sources.list"),
            "# comment\ndeb [arch=amd64] http://m.example/debian bookworm main contrib\ndeb-src http://m.example/debian bookworm main\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://s.example/debian-security\nSuites: bookworm-security\nComponents: main\n\nTypes: deb\nURIs: http://x.example\nSuites: trixie\nComponents: main\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("sources.list.d/other.list.disabled"),
            "deb http://no bookworm main\n",
        )
        .unwrap();
        let s = host_apt_sources(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let lines: Vec<_> = s.iter().map(AptSource::line).collect();
        assert_eq!(
            lines,
            vec![
                "deb http://m.example/debian bookworm main",
                "deb http://s.example/debian-security bookworm-security main"
            ]
        );
        assert_ne!(base_hash(&s), base_hash(&s[..1]));
    }
}
