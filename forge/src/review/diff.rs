//! A pull request's diff, as far as a review needs it: per file, the lines
//! of the new side a review comment may point at (GitHub accepts a
//! comment on a line of a hunk, added or context, `side: RIGHT`), and the
//! text of each file's part of the diff for the model.
//!
//! The diff is `git diff <merge-base> <head>`, the same GitHub shows. A
//! file whose name git quotes (a tab, a newline or a quote in it) is
//! skipped: no comment can point into it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One file's part of the diff.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileDiff {
    /// New-side line numbers inside the file's hunks.
    pub lines: BTreeSet<u32>,
    /// New-side line numbers the change added.
    pub added: BTreeSet<u32>,
    /// The file's part of the unified diff, from its `diff --git` line.
    pub text: String,
}

/// The diff by (new) path; deleted files are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub files: BTreeMap<String, FileDiff>,
}

impl Diff {
    /// Whether a review comment may point at `line` of `path`.
    pub fn commentable(&self, path: &str, line: u32) -> bool {
        self.files
            .get(path)
            .is_some_and(|file| file.lines.contains(&line))
    }

    /// Parses `git diff`'s unified output.
    pub fn parse(text: &str) -> Self {
        let mut files = BTreeMap::new();
        let mut current: Option<(Option<String>, FileDiff)> = None;
        // The next new-side line number inside a hunk; `None` outside.
        let mut next: Option<u32> = None;
        let mut finish = |current: Option<(Option<String>, FileDiff)>| {
            if let Some((Some(path), file)) = current {
                files.insert(path, file);
            }
        };
        for line in text.split_inclusive('\n') {
            if line.starts_with("diff --git ") {
                finish(current.take());
                current = Some((None, FileDiff::default()));
                next = None;
            }
            let Some((path, file)) = current.as_mut() else {
                continue;
            };
            file.text.push_str(line);
            let content = line.trim_end_matches('\n');
            if next.is_none() {
                if let Some(name) = content.strip_prefix("+++ ") {
                    *path = name.strip_prefix("b/").map(str::to_owned);
                } else if let Some(header) = content.strip_prefix("@@ ") {
                    next = hunk_start(header);
                }
                continue;
            }
            let Some(row) = next else { continue };
            match content.as_bytes().first() {
                Some(b'+') => {
                    file.lines.insert(row);
                    file.added.insert(row);
                    next = Some(row + 1);
                }
                Some(b' ') | None => {
                    file.lines.insert(row);
                    next = Some(row + 1);
                }
                Some(b'-') | Some(b'\\') => {}
                _ => {
                    next = content.strip_prefix("@@ ").and_then(hunk_start);
                }
            }
        }
        finish(current);
        Self { files }
    }

    /// The diff between the merge base of `base` and `head`, and `head`,
    /// in the bare repository `dir`, read up to [`MAX_DIFF_BYTES`] (a
    /// pusher decides how large it is; files past the bound get no
    /// comments).
    pub async fn between(dir: &Path, base: &str, head: &str) -> anyhow::Result<Self> {
        let merge_base = git(dir, &["merge-base", base, head]).await?;
        let text = git(
            dir,
            &[
                "diff",
                "--no-color",
                "--no-ext-diff",
                "--no-renames",
                "--unified=3",
                merge_base.trim(),
                head,
                "--",
            ],
        )
        .await?;
        Ok(Self::parse(&text))
    }
}

/// Most bytes of `git diff` read for a review.
pub const MAX_DIFF_BYTES: u64 = 8 << 20;

/// `git args` in `dir` (the forge's sanitised git), its output up to
/// [`MAX_DIFF_BYTES`].
async fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    use tokio::io::AsyncReadExt as _;
    let mut child = crate::git::git_command(dir)
        .args(["-c", "core.quotePath=false"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut out = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        stdout.take(MAX_DIFF_BYTES).read_to_end(&mut out).await?;
    }
    let mut err = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        stderr.take(64 << 10).read_to_end(&mut err).await?;
    }
    // Past the bound the rest is not wanted: git is stopped.
    let cut = out.len() as u64 >= MAX_DIFF_BYTES;
    if cut {
        let _ = child.start_kill();
    }
    let status = child.wait().await?;
    anyhow::ensure!(
        cut || status.success(),
        "git {} failed: {}",
        args.first().unwrap_or(&""),
        String::from_utf8_lossy(&err).trim()
    );
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The new side's first line from a hunk header's rest (`-a,b +c,d @@`).
fn hunk_start(header: &str) -> Option<u32> {
    let new = header.split(' ').find_map(|part| part.strip_prefix('+'))?;
    let start = new.split(',').next()?.parse::<u32>().ok()?;
    // `+0,0`: the file is now empty; no line follows.
    Some(start.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIFF: &str = "\
diff --git a/src/math.ts b/src/math.ts
index 1111111..2222222 100644
--- a/src/math.ts
+++ b/src/math.ts
@@ -1,4 +1,5 @@
 export function add(a: number, b: number): number {
-  return a + b;
+  return a - b;
+  // changed
 }
 
@@ -20,2 +21,3 @@ export const x = 1;
 const a = 1;
+const b = 2;
 const c = 3;
diff --git a/old.ts b/old.ts
deleted file mode 100644
--- a/old.ts
+++ /dev/null
@@ -1,2 +0,0 @@
-gone
-gone
diff --git a/new file.ts b/new file.ts
new file mode 100644
--- /dev/null
+++ b/new file.ts
@@ -0,0 +1,2 @@
+one
+two
\\ No newline at end of file
";

    #[test]
    fn lines_of_hunks_are_commentable_on_the_new_side() {
        let diff = Diff::parse(DIFF);
        assert_eq!(
            diff.files.keys().collect::<Vec<_>>(),
            ["new file.ts", "src/math.ts"]
        );
        let math = &diff.files["src/math.ts"];
        assert_eq!(
            math.lines.iter().copied().collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 21, 22, 23]
        );
        assert_eq!(math.added.iter().copied().collect::<Vec<_>>(), [2, 3, 22]);
        assert!(math.text.starts_with("diff --git a/src/math.ts"));
        assert!(math.text.ends_with(" const c = 3;\n"));
        assert!(diff.commentable("new file.ts", 2));
        assert!(!diff.commentable("new file.ts", 3));
        assert!(!diff.commentable("src/math.ts", 10));
        assert!(!diff.commentable("old.ts", 1));
    }

    #[test]
    fn garbage_is_an_empty_diff() {
        assert_eq!(Diff::parse("hello\n@@ -1 +1 @@\n+x\n"), Diff::default());
        assert_eq!(
            Diff::parse("diff --git a/x b/x\n+++ b/x\n@@ -1 +zz @@\n+x\n").files["x"]
                .lines
                .len(),
            0
        );
    }
}
