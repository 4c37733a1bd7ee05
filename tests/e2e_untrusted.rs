//! A hostile repository and pipeline file against `build`, through the Hetzner API simulator:
//! ignore files and Dockerfile paths that point outside the context or at special files, and
//! plugin settings that would redirect the token or the registry credentials or lift the size
//! ceiling. Each is exit 2 with one line, before the first API request: no server exists.
//!
//! No test here ever names Hetzner's real endpoint: every policy pins the simulator's, so that
//! even a defect that let a request through could not leave this machine.

mod support;

use support::attack::{Attack, GREEDY_SPEC, pinned, plugin};

#[test]
fn ignore_files_that_are_special_or_outside_cost_no_server() {
    let a = Attack::new();
    let ignore = a.ctx.path().join(".dockerignore");
    type Plant<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, Plant, &str)> = vec![
        (
            "a symlink to a device",
            Box::new(|| std::os::unix::fs::symlink("/dev/zero", &ignore).unwrap()),
            "symlink .dockerignore",
        ),
        (
            "a FIFO",
            Box::new(|| nix::unistd::mkfifo(&ignore, nix::sys::stat::Mode::S_IRWXU).unwrap()),
            "not a regular file",
        ),
        (
            "a symlink out of the context",
            Box::new(|| {
                std::os::unix::fs::symlink(a.outside.path().join("rules"), &ignore).unwrap()
            }),
            "symlink .dockerignore",
        ),
        (
            "a Dockerfile-specific ignore file symlinked out",
            Box::new(|| {
                std::os::unix::fs::symlink(
                    a.outside.path().join("rules"),
                    a.ctx.path().join("Dockerfile.dockerignore"),
                )
                .unwrap()
            }),
            "symlink Dockerfile.dockerignore",
        ),
        (
            "a file too big to be an ignore file",
            Box::new(|| std::fs::write(&ignore, vec![b'x'; 3 << 20]).unwrap()),
            "larger than",
        ),
        (
            "a bad pattern",
            Box::new(|| std::fs::write(&ignore, "ok\n[oops\n").unwrap()),
            "bad pattern",
        ),
    ];
    for (what, plant, expect) in cases {
        a.reset();
        plant();
        let out = a.build(&[]);
        let line = a.assert_refused_before_any_request(&out, what);
        assert!(line.contains(expect), "{what}: {line}");
    }
}

#[test]
fn a_dockerfile_reached_through_a_symlink_out_of_the_context_costs_no_server() {
    let a = Attack::new();
    std::os::unix::fs::symlink(a.outside.path(), a.ctx.path().join("docker")).unwrap();
    let out = a.build(&["--dockerfile", "docker/Dockerfile"]);
    let line = a.assert_refused_before_any_request(&out, "a directory symlink");
    assert!(
        line.contains("reached through the symlink docker"),
        "{line}"
    );

    a.reset();
    std::os::unix::fs::symlink(
        a.outside.path().join("Dockerfile"),
        a.ctx.path().join("docker"),
    )
    .unwrap();
    let out = a.build(&["--dockerfile", "docker"]);
    a.assert_refused_before_any_request(&out, "a file symlink");
}

#[test]
fn plugin_settings_cannot_redirect_the_token() {
    let a = Attack::new();
    let out = plugin(
        &a,
        &pinned(&a, ""),
        &[("PLUGIN_HCLOUD_ENDPOINT", "http://127.0.0.1:9/v1")],
    );
    let line = a.assert_refused_before_any_request(&out, "hcloud_endpoint");
    assert!(
        line.contains("hcloud_endpoint: the operator policy"),
        "{line}"
    );

    // Allowed to choose, a pipeline still cannot send the token over plain HTTP off loopback.
    let allow = pinned(&a, ", repository_may_set = ['hcloud_endpoint]");
    let out = plugin(
        &a,
        &allow,
        &[("PLUGIN_HCLOUD_ENDPOINT", "http://203.0.113.7/v1")],
    );
    let line = a.assert_refused_before_any_request(&out, "plain http");
    assert!(line.contains("only sent over https"), "{line}");
}

#[test]
fn plugin_settings_cannot_replace_the_ladder_or_lift_the_ceiling() {
    let a = Attack::new();
    // A repository config whose ladder tops out at a 192 GB server, and a spec asking for it.
    let config = a.ctx.path().join("big.ncl");
    std::fs::write(
        &config,
        "{ tiers.amd64 = [ { name = \"cx23\", vcpus = 2, memory_mib = 4096, disk_gb = 40 }, { name = \"ccx63\", vcpus = 48, memory_mib = 196608, disk_gb = 960 } ], language_defaults.amd64 = { rust = \"cx23\", java = \"cx23\", go = \"cx23\", node = \"cx23\", python = \"cx23\", generic = \"cx23\" } }",
    )
    .unwrap();
    std::fs::write(a.ctx.path().join(".build-spec.ncl"), "{ memory_gb = 100 }").unwrap();
    let config_setting = ("PLUGIN_CONFIG", config.to_str().unwrap());
    let out = plugin(&a, &pinned(&a, ""), &[config_setting]);
    let line = a.assert_refused_before_any_request(&out, "config");
    assert!(line.contains("config: the operator policy"), "{line}");

    // Allowed to bring a config, it is still held to the ceiling (the built-in top, 32 GB).
    let out = plugin(
        &a,
        &pinned(&a, ", repository_may_set = ['config]"),
        &[config_setting],
    );
    let line = a.assert_refused_before_any_request(&out, "ceiling");
    assert!(line.contains("at most 32 GB memory"), "{line}");

    // A spec naming a server above the operator's own lower ceiling.
    std::fs::write(a.ctx.path().join(".build-spec.ncl"), GREEDY_SPEC).unwrap();
    let out = plugin(&a, &pinned(&a, ", max_memory_gb = 8"), &[]);
    let line = a.assert_refused_before_any_request(&out, "spec above the ceiling");
    assert!(line.contains("at most 8 GB memory"), "{line}");
}

#[test]
fn credentials_go_only_to_the_registries_of_the_policy() {
    let a = Attack::new();
    let policy = pinned(&a, ", registries = [\"zot.internal:5000\"]");
    let out = plugin(
        &a,
        &policy,
        &[
            ("PLUGIN_USERNAME", "ci"),
            ("PLUGIN_PASSWORD", "fake-registry-password"),
        ],
    );
    let line = a.assert_refused_before_any_request(&out, "registry");
    assert!(line.contains("registry 127.0.0.1:9"), "{line}");
    assert!(line.contains("only to zot.internal:5000"), "{line}");
    assert!(!line.contains("fake-registry-password"), "{line}");
}

#[test]
fn pull_request_builds_get_no_secrets_unless_the_policy_says_so() {
    let a = Attack::new();
    std::fs::write(a.ctx.path().join(".build-spec.ncl"), "{ memory_gb = 2 }").unwrap();
    let settings = [
        ("CI_PIPELINE_EVENT", "pull_request"),
        ("PLUGIN_SECRETS", "id=npm,env=NPM_TOKEN"),
        ("NPM_TOKEN", "fake-npm-token"),
    ];
    let out = plugin(&a, &pinned(&a, ", build_env = [\"NPM_TOKEN\"]"), &settings);
    let line = a.assert_refused_before_any_request(&out, "pull request");
    assert!(
        line.contains("pull-request build may not use secrets"),
        "{line}"
    );
    assert!(line.starts_with("error: secrets: "), "{line}");
    assert!(line.contains("the secret \"npm\""), "{line}");
}

#[test]
fn a_policy_that_is_itself_wrong_is_exit_2() {
    let a = Attack::new();
    let out = plugin(&a, "{ hcloud_endpoint = \"http://api.example\" }", &[]);
    let line = a.assert_refused_before_any_request(&out, "bad policy");
    assert!(line.contains("policy.ncl"), "{line}");
}

#[test]
fn cache_settings_that_would_write_elsewhere_or_smuggle_attributes_cost_no_server() {
    let a = Attack::new();
    // (setting, value, what the one line says); the build's registry is 127.0.0.1:9 and its
    // image 127.0.0.1:9/org/attack:latest.
    let cases = [
        (
            "PLUGIN_CACHE_TO",
            "type=local,dest=/etc",
            "type=\"local\" is not accepted",
        ),
        (
            "PLUGIN_CACHE_FROM",
            "type=local,src=/root/.ssh",
            "type=\"local\" is not accepted",
        ),
        (
            "PLUGIN_CACHE_TO",
            "type=gha,url=http://203.0.113.7/",
            "type=\"gha\" is not accepted",
        ),
        (
            "PLUGIN_CACHE_TO",
            "type=registry,ref=127.0.0.1:9/c,dest=/x",
            "unknown key \"dest\"",
        ),
        (
            "PLUGIN_CACHE_TO",
            "type=registry,\"ref=127.0.0.1:9/c,registry.insecure=true\"",
            "quotes are not accepted",
        ),
        (
            "PLUGIN_CACHE_TO",
            "127.0.0.1:9/c$(touch /tmp/bkl-pwned)",
            "not a repository path",
        ),
        (
            "PLUGIN_CACHE_TO",
            "127.0.0.1:9/c\nerror: a forged line",
            "not a repository path",
        ),
        (
            "PLUGIN_CACHE_TO",
            "evil.example:5000/loot",
            "not in the build's registry 127.0.0.1:9",
        ),
        (
            "PLUGIN_CACHE_TO",
            "127.0.0.1:9/org/attack",
            "would overwrite the image",
        ),
        (
            "PLUGIN_CACHE_TO",
            "127.0.0.1:9/cache/buildkit-launcher/history/org/attack",
            "inside the history namespace",
        ),
        (
            "PLUGIN_CACHE_FROM",
            "org/app:cache",
            "would mean Docker Hub",
        ),
        (
            "PLUGIN_CACHE_FROM",
            "type=registry,ref=127.0.0.1:9/c,mode=max",
            "mode is for cache_to",
        ),
    ];
    for (key, value, expect) in cases {
        let out = plugin(&a, &pinned(&a, ""), &[(key, value)]);
        let line = a.assert_refused_before_any_request(&out, value);
        let setting = if key == "PLUGIN_CACHE_TO" {
            "cache_to"
        } else {
            "cache_from"
        };
        assert!(line.contains(setting), "{value}: {line}");
        assert!(line.contains(expect), "{value}: {line}");
    }
    // The same at the command line, and a list far longer than any build needs.
    let out = a.build(&["--cache-to", "type=local,dest=/tmp/x"]);
    let line = a.assert_refused_before_any_request(&out, "--cache-to");
    assert!(line.starts_with("error: --cache-to (cache_to) "), "{line}");
    let many = (0..20)
        .map(|i| format!("127.0.0.1:9/c{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let out = a.build(&["--cache-from", &many]);
    let line = a.assert_refused_before_any_request(&out, "many");
    assert!(line.contains("at most 8 extra caches, got 20"), "{line}");
}
