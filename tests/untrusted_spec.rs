//! A hostile `.build-spec.ncl`, tried the way a pull request's author would, against the built
//! binary: imports in every syntactic position Nickel allows, symlinks out of the repository,
//! deep nesting, and bombs of time and memory. Each must end in exit 2 with one line, with no
//! byte of an outside file and no secret of the environment in it, and nothing spawned.

mod support;

use std::path::Path;

use support::{Context, Launcher};

/// Planted in the environment of every run: it must never show.
const TOKEN: &str = "fake-token-MUST-NOT-LEAK-4d1f";
/// The content of a file outside the repository: it must never show either.
const OUTSIDE: &str = "OUTSIDE-MARKER-7c2a";

struct Repo {
    ctx: Context,
    /// A directory beside the repository, holding a file a spec must not read.
    outside: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let ctx = Context::new();
        std::fs::create_dir(ctx.path().join(".git")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.ncl"), format!("\"{OUTSIDE}\"")).unwrap();
        std::fs::write(outside.path().join("secret.txt"), OUTSIDE).unwrap();
        Repo { ctx, outside }
    }

    fn outside_file(&self) -> String {
        self.outside.path().join("secret.ncl").display().to_string()
    }

    fn spec(&self, text: &str) -> &Self {
        std::fs::write(self.ctx.path().join(".build-spec.ncl"), text).unwrap();
        self
    }

    fn plan(&self) -> support::Outcome {
        Launcher::new()
            .env("HCLOUD_TOKEN", TOKEN)
            .env("REGISTRY_USERNAME", "ci")
            .env("REGISTRY_PASSWORD", TOKEN)
            .args(["plan", "--history", "none", "--context"])
            .args([self.ctx.path()])
            .run()
    }

    /// Exit 2, one line, nothing secret or outside in it; returns the line.
    fn refused(&self) -> String {
        let out = self.plan();
        let line = out.assert_one_line_error(2).to_owned();
        assert_clean(&line);
        line
    }
}

fn assert_clean(text: &str) {
    assert!(!text.contains(TOKEN), "the token leaked: {text}");
    assert!(!text.contains(OUTSIDE), "an outside file leaked: {text}");
}

/// Every syntactic position an import can take, with `{I}` where the import goes. The import
/// pre-pass works on tokens, so a position is covered because `import` is a keyword, not
/// because this list names it; the list is what shows it.
const POSITIONS: &[(&str, &str)] = &[
    ("the whole file", "{I}"),
    ("a field's value", "{ memory_gb = {I} }"),
    ("a field's default value", "{ memory_gb | default = {I} }"),
    ("a field's contract annotation", "{ memory_gb | ({I}) = 4 }"),
    ("a let binding", "let x = {I} in { memory_gb = 4 }"),
    (
        "a recursive let binding",
        "let rec x = {I} in { memory_gb = 4 }",
    ),
    (
        "a let pattern's default value",
        "let { a ? {I} } = {} in { memory_gb = 4 }",
    ),
    (
        "a let pattern's annotation",
        "let { a | ({I}) } = { a = 1 } in { memory_gb = 4 }",
    ),
    (
        "a function pattern's default value",
        "let f = fun { a ? ({I}) } => a in { memory_gb = f {} }",
    ),
    (
        "a function pattern's annotation",
        "let f = fun { a | ({I}) } => a in { memory_gb = f { a = 4 } }",
    ),
    (
        "a type annotation's contract",
        "{ memory_gb = (4 | Array ({I})) }",
    ),
    (
        "an enum row's argument type",
        "{ memory_gb = 4, x | [| 'a ({I}) |] = 'a 1 }",
    ),
    (
        "a record type's field type",
        "{ memory_gb = 4, x | { y : Number, z | ({I}) } = { y = 1, z = 2 } }",
    ),
    ("an array element", "{ memory_gb = 4, x = [1, {I}] }"),
    (
        "a string interpolation",
        "{ memory_gb = 4, x = \"a%{{I}}b\" }",
    ),
    (
        "a multi-line string interpolation",
        "{ memory_gb = 4, x = m%\"a%{{I}}b\"% }",
    ),
    ("a dynamic field name", "{ memory_gb = 4, \"%{{I}}\" = 1 }"),
    ("a match arm", "{ memory_gb = 4 |> match { _ => {I} } }"),
    (
        "a match guard",
        "{ memory_gb = 4 |> match { x if {I} => x } }",
    ),
    ("an if condition", "{ memory_gb = if {I} then 4 else 8 }"),
    (
        "a function argument",
        "{ memory_gb = std.string.length ({I}) }",
    ),
    ("an operator's operand", "{ memory_gb = 4 + ({I}) }"),
    ("a field path's record", "{ memory_gb = ({I}).x }"),
    ("an or-default", "{ memory_gb = {}.x or ({I}) }"),
];

fn each_position(import: &str, check: impl Fn(&str, String)) {
    for (name, template) in POSITIONS {
        let repo = Repo::new();
        let import = import.replace("{OUTSIDE}", &repo.outside_file());
        repo.spec(&template.replace("{I}", &import));
        check(name, repo.refused());
    }
}

#[test]
fn an_absolute_import_is_refused_in_every_position() {
    each_position("import \"{OUTSIDE}\"", |name, line| {
        assert!(
            line.contains("absolute paths are not allowed"),
            "{name}: {line}"
        );
    });
}

#[test]
fn proc_self_environ_is_refused_in_every_position() {
    each_position("import \"/proc/self/environ\" as 'Text", |name, line| {
        assert!(line.contains("is refused"), "{name}: {line}");
    });
}

#[test]
fn a_relative_import_that_leaves_the_repository_is_refused_in_every_position() {
    for (name, template) in POSITIONS {
        let repo = Repo::new();
        let up = pathdiff(repo.ctx.path(), &repo.outside.path().join("secret.ncl"));
        repo.spec(&template.replace("{I}", &format!("import \"{up}\"")));
        let line = repo.refused();
        assert!(
            line.contains("resolves outside the repository"),
            "{name}: {line}"
        );
    }
}

#[test]
fn a_symlink_out_of_the_repository_is_refused_wherever_it_is_imported() {
    for (name, template) in POSITIONS {
        let repo = Repo::new();
        std::os::unix::fs::symlink("/proc/self/environ", repo.ctx.path().join("env.txt")).unwrap();
        std::os::unix::fs::symlink(repo.outside.path(), repo.ctx.path().join("lib")).unwrap();
        repo.spec(&template.replace("{I}", "import \"env.txt\" as 'Text"));
        let line = repo.refused();
        assert!(
            line.contains("resolves outside the repository"),
            "{name}: {line}"
        );
        repo.spec(&template.replace("{I}", "import \"lib/secret.ncl\""));
        let line = repo.refused();
        assert!(
            line.contains("resolves outside the repository"),
            "{name}: {line}"
        );
    }
}

#[test]
fn package_imports_and_imports_that_are_not_plain_strings_are_refused() {
    let repo = Repo::new();
    for spec in [
        "{ memory_gb = import foo }",
        "{ memory_gb = import \"a\\u{2e}ncl\" }",
        "{ memory_gb = import m%\"a.ncl\"% }",
        "{ memory_gb = import \"\" }",
    ] {
        repo.spec(spec);
        let line = repo.refused();
        assert!(line.contains("is refused"), "{spec}: {line}");
    }
}

#[test]
fn an_import_whose_path_cannot_be_resolved_is_refused_not_guessed() {
    let repo = Repo::new();
    // Longer than PATH_MAX once resolved: canonicalize fails, and that is a refusal.
    let deep = format!("{}/x.ncl", vec!["a"; 2100].join("/"));
    repo.spec(&format!("{{ memory_gb = import \"{deep}\" }}"));
    let line = repo.refused();
    assert!(line.contains("is refused"), "{line}");
    // A symlink loop.
    std::os::unix::fs::symlink("loop.ncl", repo.ctx.path().join("loop.ncl")).unwrap();
    repo.spec("{ memory_gb = import \"loop.ncl\" }");
    let line = repo.refused();
    assert!(line.contains("cannot be resolved with certainty"), "{line}");
}

#[test]
fn imports_inside_the_repository_still_work() {
    let repo = Repo::new();
    std::fs::create_dir(repo.ctx.path().join("ci")).unwrap();
    std::fs::write(repo.ctx.path().join("ci/size.ncl"), "{ memory_gb = 12 }").unwrap();
    std::fs::write(repo.ctx.path().join("ci/note.txt"), "hello").unwrap();
    repo.spec(
        "let s = import \"ci/size.ncl\" in { memory_gb = s.memory_gb + std.string.length (import \"ci/note.txt\" as 'Text) - 5 }",
    );
    let out = repo.plan();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("cx43"), "{}", out.stdout);
    assert!(
        !out.stderr.contains("Landlock is not available"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_spec_sees_no_environment() {
    // Nickel has no environment access of its own; the child's environment is empty anyway,
    // and its /proc/self/environ is outside the repository.
    let repo = Repo::new();
    repo.spec("{ memory_gb = 4, tier = std.string.from (import \"/proc/self/environ\" as 'Text) }");
    repo.refused();
}

#[test]
fn deep_nesting_is_refused_before_anything_recurses() {
    let repo = Repo::new();
    repo.spec(&format!(
        "{{ memory_gb = {}4{} }}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    ));
    let line = repo.refused();
    assert!(line.contains("larger than 64 KiB"), "{line}");
    repo.spec(&format!(
        "{{ memory_gb = {}4{} }}",
        "(".repeat(5_000),
        ")".repeat(5_000)
    ));
    let line = repo.refused();
    assert!(line.contains("nests more than 64 levels"), "{line}");
    // A long operator chain nests without brackets: the token cap bounds it, and whatever
    // the evaluator makes of the rest, the launcher answers with one line.
    repo.spec(&format!(
        "{{ memory_gb = {} }}",
        vec!["1"; 15_000].join("+")
    ));
    repo.refused();
    repo.spec(&format!(
        "{{ memory_gb = {} }}",
        vec!["1"; 30_000].join("+")
    ));
    let line = repo.refused();
    assert!(
        line.contains("more than 20000 tokens") || line.contains("larger than"),
        "{line}"
    );
}

#[test]
fn a_time_bomb_is_stopped_by_the_wall_clock() {
    let repo = Repo::new();
    // A loop in constant memory: only the wall clock stops it.
    repo.spec("let rec f = fun n => if n < 0 then n else f (n + 1) in { memory_gb = f 0 }");
    let line = repo.refused();
    assert!(line.contains("longer than 2000 ms"), "{line}");
    // Unbounded recursion: the memory cap, the stack or the clock, whichever comes first.
    repo.spec("let rec f = fun n => f (n + 1) in { memory_gb = f 0 }");
    let line = repo.refused();
    assert!(
        [
            "longer than",
            "recurses too deeply",
            "needs more than 512 MiB"
        ]
        .iter()
        .any(|m| line.contains(m)),
        "{line}"
    );
    repo.spec("let rec f = fun n => if n == 0 then 1 else f (n - 1) + 0 * f (n - 1) in { memory_gb = f 60 }");
    let line = repo.refused();
    // Exponential work: the wall clock or the memory cap, whichever it meets first.
    assert!(
        line.contains("longer than 2000 ms") || line.contains("needs more than 512 MiB"),
        "{line}"
    );
}

#[test]
fn a_spec_that_is_a_fifo_or_a_device_is_refused_without_hanging() {
    let repo = Repo::new();
    let spec = repo.ctx.path().join(".build-spec.ncl");
    std::os::unix::fs::symlink("/dev/zero", &spec).unwrap();
    let line = repo.refused();
    assert!(
        line.contains("is refused") || line.contains("refused:"),
        "{line}"
    );
    std::fs::remove_file(&spec).unwrap();
    nix::unistd::mkfifo(&spec, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let line = repo.refused();
    assert!(line.contains("not a regular file"), "{line}");
}

/// `to` relative to `from` (both absolute), with `..` steps.
fn pathdiff(from: &Path, to: &Path) -> String {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); from.len() - common];
    parts.extend(
        to[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

/// A memory cgroup of the test's own (cgroup v1), removed on drop even when the test fails.
struct MemoryCgroup(std::path::PathBuf);

impl MemoryCgroup {
    fn new(limit_bytes: u64) -> MemoryCgroup {
        let dir = std::path::PathBuf::from(format!(
            "/sys/fs/cgroup/memory/bkl-test-spec-{}",
            std::process::id()
        ));
        std::fs::create_dir(&dir).expect("create a memory cgroup (cgroup v1, root)");
        let cg = MemoryCgroup(dir);
        std::fs::write(cg.0.join("memory.limit_in_bytes"), limit_bytes.to_string()).unwrap();
        let _ = std::fs::write(
            cg.0.join("memory.memsw.limit_in_bytes"),
            limit_bytes.to_string(),
        );
        cg
    }

    fn oom_kills(&self) -> u64 {
        let text = std::fs::read_to_string(self.0.join("memory.oom_control")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // The launcher has exited; its processes are gone from the group.
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_memory_bomb_is_stopped_by_the_launchers_own_cap_under_a_tight_cgroup() {
    if !support::registry::require_root_and_tools(&[]) {
        return;
    }
    // 1 GiB for the launcher and its evaluator together: a spec that allocates without bound
    // would be OOM-killed by the cgroup if the evaluator's own cap did not stop it first.
    let cg = MemoryCgroup::new(1 << 30);
    let repo = Repo::new();
    repo.spec(
        // Doubles a string until it no longer fits: gigabytes within a second.
        "let rec d = fun s n => if n == 0 then s else d (s ++ s) (n - 1) in { memory_gb = std.string.length (d \"xxxxxxxx\" 40) }",
    );
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "echo $$ > \"$1/cgroup.procs\" && shift && exec \"$@\"",
            "sh",
        ])
        .arg(&cg.0)
        .arg(support::BIN)
        .args(["plan", "--history", "none", "--context"])
        .arg(repo.ctx.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", repo.outside.path())
        .env("HCLOUD_TOKEN", TOKEN)
        .output()
        .unwrap();
    let out = support::Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let line = out.assert_one_line_error(2).to_owned();
    assert!(line.contains("needs more than 512 MiB of memory"), "{line}");
    assert_clean(&line);
    assert_eq!(
        cg.oom_kills(),
        0,
        "the cgroup, not the launcher's cap, stopped it"
    );
}
