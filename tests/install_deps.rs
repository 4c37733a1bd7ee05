//! `scripts/install-deps buildkit` (the BuildKit step only) against a private tree: a shared
//! directory, a sums file and an install directory of the test's own (`BKL_BUILDKIT_SHARED`,
//! `BKL_BUILDKIT_SUMS`, `BKL_BUILDKIT_BIN`). Nothing is downloaded (the shared directory always
//! exists, so the script never falls back to the pinned release), nothing is installed outside
//! the temporary tree, no package is looked at. Every bad input is one line naming what and
//! where, exit 1, nothing installed.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::buildkit_tarball::{self, Tarball};

/// A name the script looks for in the shared directory on this machine.
fn name() -> String {
    format!(
        "buildkit-v0.32.2.linux-{}.tar.gz",
        buildkit_tarball::release_arch()
    )
}

struct Tree {
    dir: tempfile::TempDir,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("shared")).unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        Tree { dir }
    }

    fn shared(&self) -> PathBuf {
        self.dir.path().join("shared")
    }

    fn sums(&self) -> PathBuf {
        self.dir.path().join("buildkit-shared.sha256")
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn write_sums(&self, lines: &[(&str, &str)]) {
        let text: String = lines
            .iter()
            .map(|(sum, name)| format!("{sum}  {name}\n"))
            .collect();
        std::fs::write(self.sums(), text).unwrap();
    }

    fn run(&self, args: &[&str]) -> Run {
        let out = Command::new(support::repo_dir().join("scripts/install-deps"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("BKL_BUILDKIT_SHARED", self.shared())
            .env("BKL_BUILDKIT_SUMS", self.sums())
            .env("BKL_BUILDKIT_BIN", self.bin())
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The BuildKit step failed in exactly one line, naming `what`; nothing installed.
    fn assert_refused(&self, what: &Path, says: &str) -> String {
        let run = self.run(&["buildkit"]);
        assert_eq!(
            run.code, 1,
            "stdout: {}\nstderr: {}",
            run.stdout, run.stderr
        );
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line:\n{}", run.stderr);
        let line = lines[0];
        assert!(line.starts_with("install-deps: "), "{line}");
        assert!(line.contains(&what.display().to_string()), "{line}");
        assert!(line.contains(says), "{line}");
        assert!(run.stdout.is_empty(), "{}", run.stdout);
        let installed: Vec<_> = std::fs::read_dir(self.bin()).unwrap().flatten().collect();
        assert!(installed.is_empty(), "installed: {installed:?}");
        line.to_owned()
    }
}

fn bogus_tarball(path: &Path) -> String {
    std::fs::write(path, b"not a tarball\n").unwrap();
    buildkit_tarball::sha256(path)
}

#[test]
fn a_shared_directory_without_a_tarball_is_one_line_naming_it() {
    let tree = Tree::new();
    tree.write_sums(&[(&"0".repeat(64), &name())]);
    let says = format!(
        "holds no buildkit-v*.linux-{}.tar.gz",
        buildkit_tarball::release_arch()
    );
    tree.assert_refused(&tree.shared(), &says);
}

#[test]
fn a_checksum_mismatch_is_one_line_naming_the_tarball_both_sums_and_the_sums_file() {
    let tree = Tree::new();
    let tarball = tree.shared().join(name());
    let actual = bogus_tarball(&tarball);
    let expected = "ab".repeat(32);
    tree.write_sums(&[(&expected, &name())]);
    let line = tree.assert_refused(&tarball, "checksum mismatch");
    assert!(
        line.contains(&format!("expected {expected}"))
            && line.contains(&format!("got {actual}"))
            && line.contains(&tree.sums().display().to_string()),
        "{line}"
    );
}

#[test]
fn a_tarball_the_sums_file_does_not_list_is_one_line_naming_both() {
    let tree = Tree::new();
    let tarball = tree.shared().join(name());
    let sum = bogus_tarball(&tarball);
    tree.write_sums(&[(&sum, "buildkit-v0.1.0.linux-amd64.tar.gz")]);
    let line = tree.assert_refused(&tree.sums(), &format!("has no sha256 for {}", name()));
    assert!(
        line.contains(&tree.shared().display().to_string()),
        "{line}"
    );
}

#[test]
fn a_missing_sums_file_is_one_line_naming_it() {
    let tree = Tree::new();
    bogus_tarball(&tree.shared().join(name()));
    tree.assert_refused(&tree.sums(), "is missing or not readable");
}

#[test]
fn an_unreadable_tarball_is_one_line_naming_it_and_why() {
    // A directory by the tarball's name: sha256sum would add its own line.
    let tree = Tree::new();
    let tarball = tree.shared().join(name());
    std::fs::create_dir(&tarball).unwrap();
    tree.write_sums(&[(&"0".repeat(64), &name())]);
    tree.assert_refused(&tarball, "is not readable: not a regular file");

    // A file whose read fails (EIO: sha256sum's own /proc/self/mem, offset 0 is unmapped).
    let tree = Tree::new();
    let tarball = tree.shared().join(name());
    std::os::unix::fs::symlink("/proc/self/mem", &tarball).unwrap();
    tree.write_sums(&[(&"0".repeat(64), &name())]);
    tree.assert_refused(&tarball, "is not readable: Input/output error");
}

#[test]
fn a_tarball_with_the_right_sum_but_no_buildkit_in_it_is_one_line() {
    let tree = Tree::new();
    let tarball = tree.shared().join(name());
    let sum = bogus_tarball(&tarball);
    tree.write_sums(&[(&sum, &name())]);
    tree.assert_refused(&tarball, "not a BuildKit release tarball");
}

#[test]
fn an_unknown_argument_is_exit_2_in_one_line() {
    let run = Tree::new().run(&["everything"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("'everything'"), "{}", run.stderr);
}

#[test]
fn the_installed_buildkit_as_a_shared_tarball_is_checked_and_installed_in_the_given_directory() {
    if !support::registry::require_root_and_tools(&["buildkitd", "buildctl"]) {
        return;
    }
    let tree = Tree::new();
    let Tarball {
        path,
        name,
        sha256,
        version,
    } = buildkit_tarball::from_installed(&tree.shared());
    tree.write_sums(&[(&sha256, &name)]);
    let run = tree.run(&["buildkit"]);
    assert_eq!(
        run.code, 0,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stdout.contains(&format!(
            "installed buildkitd github.com/moby/buildkit {version} "
        )) && run.stdout.contains(&path.display().to_string()),
        "{}",
        run.stdout
    );
    for tool in ["buildctl", "buildkitd"] {
        let out = Command::new(tree.bin().join(tool))
            .arg("--version")
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!(" {version} ")),
            "{tool}"
        );
    }
    // A second run finds it installed and leaves it.
    let again = tree.run(&["buildkit"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains("is already in"), "{}", again.stdout);
}
