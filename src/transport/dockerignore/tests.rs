//! Docker's .dockerignore semantics, case by case, on real directory trees.
use super::*;

/// Asserts which paths the rules exclude and which they keep.
fn check(text: &str, excluded: &[&str], kept: &[&str]) {
    let rules = Dockerignore::parse(text).unwrap();
    for path in excluded {
        assert!(rules.is_excluded(path), "{text:?} should exclude {path:?}");
    }
    for path in kept {
        assert!(!rules.is_excluded(path), "{text:?} should keep {path:?}");
    }
}

/// A context holding `paths` (a trailing `/` makes a directory) and the given .dockerignore.
fn tree(paths: &[&str], ignore: Option<&str>) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for path in paths {
        let full = root.path().join(path);
        if path.ends_with('/') {
            fs::create_dir_all(&full).unwrap();
        } else {
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(&full, "x").unwrap();
        }
    }
    if let Some(text) = ignore {
        fs::write(root.path().join(".dockerignore"), text).unwrap();
    }
    root
}

fn entries(root: &tempfile::TempDir, dockerfile: &str) -> Vec<String> {
    let list = context_entries(root.path(), dockerfile).unwrap();
    list.iter()
        .map(|p| p.to_str().unwrap().to_string())
        .collect()
}

#[test]
fn comments_only_in_first_column_and_blank_lines_ignored() {
    let text = "\u{feff}# comment\r\n\n   \n  # not a comment\r\nfoo  \n";
    check(text, &["foo", "# not a comment"], &["# comment", "bar", ""]);
}

#[test]
fn star_stays_in_one_directory_double_star_crosses() {
    check("*.log", &["a.log"], &["dir/a.log"]);
    check("*/*.log", &["dir/a.log"], &["a.log", "x/y/a.log"]);
    check("**/*.log", &["a.log", "x/y/a.log"], &["x/a.txt"]);
    check("a/**/b", &["a/b", "a/x/y/b"], &["a/xb"]);
    // `dir/**` is the string prefix `dir/`; `**foo` the string suffix `foo`, as in Docker.
    check("dir/**", &["dir/x", "dir/x/y"], &["dir", "dirx"]);
    check("**foo", &["foo", "dir/barfoo"], &["foo.txt"]);
    check("**", &["a", "any/thing"], &[]);
}

#[test]
fn leading_slash_cleaning_and_directories() {
    check("/foo", &["foo", "foo/bar"], &["sub/foo"]);
    check("./a/../b/\na//c", &["b", "a/c"], &["a"]);
    check(".\n/\n..", &[], &["a", "."]);
    check("build", &["build", "build/x/y.o"], &["buildx", "src/build"]);
    check(
        "*/cache",
        &["a/cache", "a/cache/x/y"],
        &["cache", "a/b/cache"],
    );
}

#[test]
fn exceptions_last_match_wins() {
    check("*.md\n!README.md", &["CHANGES.md"], &["README.md"]);
    check("!README.md\n*.md", &["README.md"], &[]);
    check(
        "docs\n! /docs/keep",
        &["docs", "docs/other"],
        &["docs/keep"],
    );
    check("docs\n!docs/keep.txt\ndocs/keep*", &["docs/keep.txt"], &[]);
    check("docs\n!docs/keep.txt\n**/*.txt", &["docs/keep.txt"], &[]);
    check("*\n!docs", &["src", "src/a"], &["docs", "docs/a/b"]);
    check("*\n!!x", &["x"], &["!x"]); // `!!x` re-includes the name `!x`
    // BuildKit's walk (MatchesUsingParentResults) sends dir/keep here; see `evaluate`.
    check("dir\n!dir/keep\ndir", &["dir", "dir/other"], &["dir/keep"]);
}

#[test]
fn question_mark_classes_and_escapes() {
    check("file?.txt", &["file1.txt"], &["file10.txt", "file.txt"]);
    check("a?b", &["a☺b"], &["a/b", "ab"]);
    check("[a-c]*.txt", &["b1.txt", "c.txt"], &["d1.txt"]);
    check("[^a]x", &["bx"], &["ax"]);
    check("[!a]x", &["!x"], &["bx"]); // Go negates with `^` only
    check("a[\\]]b", &["a]b"], &["a\\b"]);
    check("a\\*b", &["a*b"], &["axb"]);
    check("\\[x\\]", &["[x]"], &["x"]);
    check("a.b*", &["a.bc"], &["axb"]); // regexp metacharacters stay literal
    check("a+(b)|{c}$*", &["a+(b)|{c}$.txt"], &["ab"]);
}

#[test]
fn bad_patterns_name_the_line() {
    let err = Dockerignore::parse("ok\n# c\n[abc\n")
        .unwrap_err()
        .to_string();
    let want = ".dockerignore line 3: bad pattern \"[abc\": unclosed character class";
    assert_eq!(err, want);
    let bad = [
        "!", "! ", "a\\", "[]a]", "[-x]", "[x-]", "[a-b-c]", "[z-a]", "\\d", "[*]",
    ];
    for text in bad.iter().chain(&["[[:alpha:]]", "[\\é]"]) {
        assert!(
            Dockerignore::parse(text).is_err(),
            "{text:?} should be rejected"
        );
    }
    for text in ["[\\-x]", "[[]", "a]b", "\\_", "[^^]"] {
        assert!(
            Dockerignore::parse(text).is_ok(),
            "{text:?} should be accepted"
        );
    }
}

#[test]
fn no_dockerignore_sends_everything_including_empty_dirs() {
    let root = tree(
        &[
            "Dockerfile",
            "src/main.rs",
            "a/b/c.txt",
            "empty/",
            "a/empty/",
        ],
        None,
    );
    let want = [
        "Dockerfile",
        "a",
        "a/b",
        "a/b/c.txt",
        "a/empty",
        "empty",
        "src",
        "src/main.rs",
    ];
    assert_eq!(entries(&root, "Dockerfile"), want);
}

#[test]
fn excluded_directories_vanish_and_exceptions_bring_files_back_with_parents() {
    let paths = [
        "Dockerfile",
        "app.log",
        "docs/keep.txt",
        "docs/other",
        "docs/empty/",
    ];
    let paths = [&paths[..], &["cache/x/y.keep", "cache/x/z", "kept-empty/"]].concat();
    let root = tree(
        &paths,
        Some("*.log\ndocs\n!docs/keep.txt\ncache\n!**/*.keep\n"),
    );
    let want = [
        ".dockerignore",
        "Dockerfile",
        "cache",
        "cache/x",
        "cache/x/y.keep",
    ];
    let want = [&want[..], &["docs", "docs/keep.txt", "kept-empty"]].concat();
    assert_eq!(entries(&root, "Dockerfile"), want);
}

#[test]
fn dockerfile_and_ignore_files_always_sent_with_parents() {
    let root = tree(
        &["docker/Dockerfile.prod", "docker/other", "src/a"],
        Some("*\n"),
    );
    let want = [".dockerignore", "docker", "docker/Dockerfile.prod"];
    assert_eq!(entries(&root, "./docker/Dockerfile.prod"), want);
    let root = tree(&["Dockerfile", "b"], Some(".dockerignore\nDockerfile\n"));
    assert_eq!(
        entries(&root, "Dockerfile"),
        [".dockerignore", "Dockerfile", "b"]
    );
    // A Dockerfile-specific ignore file replaces .dockerignore, as in BuildKit.
    let root = tree(&["docker/app.Dockerfile", "a", "b"], Some("b\n"));
    fs::write(
        root.path().join("docker/app.Dockerfile.dockerignore"),
        "a\n",
    )
    .unwrap();
    let want = [".dockerignore", "b", "docker", "docker/app.Dockerfile"];
    let want = [&want[..], &["docker/app.Dockerfile.dockerignore"]].concat();
    assert_eq!(entries(&root, "docker/app.Dockerfile"), want);
}

#[test]
fn symlinks_are_listed_not_followed() {
    let root = tree(&["Dockerfile", "real/file"], Some("real\n"));
    std::os::unix::fs::symlink("real", root.path().join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent", root.path().join("dangling")).unwrap();
    let want = [".dockerignore", "Dockerfile", "dangling", "link"];
    assert_eq!(entries(&root, "Dockerfile"), want);
}

#[test]
fn errors_name_the_file() {
    let root = tree(&["Dockerfile"], Some("# rules\nok\n  [oops\n"));
    let err = context_entries(root.path(), "Dockerfile")
        .unwrap_err()
        .to_string();
    let file = root.path().join(".dockerignore").display().to_string();
    assert_eq!(
        err,
        format!("{file} line 3: bad pattern \"[oops\": unclosed character class")
    );

    for bad in ["../Dockerfile", "/etc/Dockerfile", ".", "a/../../b"] {
        let err = context_entries(root.path(), bad).unwrap_err();
        assert!(
            matches!(err, DockerignoreError::DockerfileOutsideContext(_)),
            "{bad}"
        );
    }

    let missing = root.path().join("nope");
    let err = context_entries(&missing, "Dockerfile")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no Dockerfile there"), "{err}");
}

#[test]
fn the_dockerfile_and_ignore_files_are_plain_files_reached_through_no_symlink() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("Dockerfile"), "FROM scratch\n").unwrap();
    std::fs::write(outside.path().join("rules"), "OUTSIDE-RULE\n[bad\n").unwrap();
    let root = tree(&["Dockerfile"], None);
    std::os::unix::fs::symlink(outside.path(), root.path().join("docker")).unwrap();
    let err = context_entries(root.path(), "docker/Dockerfile")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is reached through the symlink docker"),
        "{err}"
    );

    std::os::unix::fs::symlink(
        outside.path().join("rules"),
        root.path().join(".dockerignore"),
    )
    .unwrap();
    let err = context_entries(root.path(), "Dockerfile")
        .unwrap_err()
        .to_string();
    assert!(err.contains("symlink .dockerignore"), "{err}");
    assert!(!err.contains("OUTSIDE-RULE"), "{err}");

    std::fs::remove_file(root.path().join(".dockerignore")).unwrap();
    nix::unistd::mkfifo(
        &root.path().join(".dockerignore"),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .unwrap();
    let err = context_entries(root.path(), "Dockerfile")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a regular file"), "{err}");

    std::fs::remove_file(root.path().join(".dockerignore")).unwrap();
    std::fs::write(
        root.path().join(".dockerignore"),
        vec![b'a'; 2 * 1024 * 1024],
    )
    .unwrap();
    let err = context_entries(root.path(), "Dockerfile")
        .unwrap_err()
        .to_string();
    assert!(err.contains("larger than 1024 KiB"), "{err}");

    std::fs::remove_file(root.path().join(".dockerignore")).unwrap();
    std::fs::create_dir(root.path().join("d")).unwrap();
    let err = context_entries(root.path(), "d").unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
}

/// A repository's attacks on the matcher: a pattern too long to be a path, too many patterns,
/// and patterns that are each cheap but together cost a long walk; each is one error naming
/// the ignore file and the cap.
#[test]
fn ignore_files_beyond_the_caps_are_refused_naming_the_file() {
    let root = tree(&["Dockerfile"], Some(&"^".repeat(50_000)));
    let file = root.path().join(".dockerignore").display().to_string();
    let err = context_entries(root.path(), "Dockerfile")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{file} line 1: a pattern of 50000 characters, more than the cap of 4096 (no path is longer)"
        )
    );

    let many: String = (0..MAX_PATTERNS + 1).map(|i| format!("p{i}\n")).collect();
    fs::write(root.path().join(".dockerignore"), many).unwrap();
    let err = context_entries(root.path(), "Dockerfile")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("{file}: more than 10000 patterns")),
        "{err}"
    );
    // At the cap it is read.
    let at_cap: String = (0..MAX_PATTERNS).map(|i| format!("p{i}\n")).collect();
    fs::write(root.path().join(".dockerignore"), at_cap).unwrap();
    assert_eq!(
        entries(&root, "Dockerfile"),
        [".dockerignore", "Dockerfile"]
    );

    // Work: every pattern is tried on every entry (none matches), so 50 files and 200 patterns
    // cost some 10,000 pattern tries; a budget of 5,000 steps runs out, one of 10^7 does not.
    let root = tree(&["Dockerfile"], None);
    for i in 0..50 {
        fs::write(root.path().join(format!("f{i}")), "x").unwrap();
    }
    let rules: String = (0..200).map(|i| format!("*q{i}*\n")).collect();
    fs::write(root.path().join("Dockerfile.dockerignore"), rules).unwrap();
    let err = entries_within(root.path(), "Dockerfile", Budget(5_000))
        .unwrap_err()
        .to_string();
    let file = root
        .path()
        .join("Dockerfile.dockerignore")
        .display()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{file}: matching its patterns against the build context takes more than {MATCH_BUDGET} steps (the cap); use fewer or simpler patterns, or a smaller context"
        )
    );
    assert!(entries_within(root.path(), "Dockerfile", Budget(10_000_000)).is_ok());
}

/// Matching never recurses over the pattern: the longest pattern allowed, full of `*` and
/// `**`, is matched on a thread with a 64 KiB stack.
#[test]
fn the_longest_patterns_match_without_recursion() {
    let star = "a*".repeat(MAX_PATTERN_CHARS / 2);
    let any_dirs = "**/a".repeat(MAX_PATTERN_CHARS / 4);
    let starts = format!("{}?b", "^".repeat(MAX_PATTERN_CHARS - 2));
    std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || {
            let rules = Dockerignore::parse(&star).unwrap();
            assert!(rules.is_excluded(&"a".repeat(MAX_PATTERN_CHARS / 2)));
            assert!(!rules.is_excluded(&"a".repeat(MAX_PATTERN_CHARS / 2 - 1)));
            // Matched once on the whole path (is_excluded would match every parent too).
            let rules = Dockerignore::parse(&any_dirs).unwrap();
            let matcher = &rules.patterns[0].matcher;
            let mut budget = Budget::unlimited();
            let long = "x/a".repeat(MAX_PATTERN_CHARS / 4);
            assert!(matcher.matches(&long, &mut budget).unwrap());
            assert!(!matcher.matches(&long[3..], &mut budget).unwrap());
            let rules = Dockerignore::parse(&starts).unwrap();
            assert!(rules.is_excluded("ab"));
            assert!(!rules.is_excluded("b"));
        })
        .unwrap()
        .join()
        .unwrap();
}

/// The walk keeps a list of directories, not a call per level: a context nested deeper than
/// a small stack allows is walked on one.
#[test]
fn deep_directories_are_walked_without_recursion() {
    let root = tree(&["Dockerfile"], Some("keep\n"));
    let mut deep = root.path().to_path_buf();
    for _ in 0..1000 {
        deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    let context = root.path().to_path_buf();
    let count = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || context_entries(&context, "Dockerfile").unwrap().len())
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(count, 1002);
}
