//! The local provider and the SSH transport against real sshd, rsync and memory cgroups.

mod support;

use std::sync::Mutex;

use buildkit_launcher::provider::Provider;
use buildkit_launcher::transport::session::{
    ConnectPolicy, Connection, RemoteExit, TransportError,
};
use support::runner::{RunnerGuard, Sandbox, require_local_runner, tier};

fn quiet(_: String) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_runs_commands_with_faithful_status_and_is_destroyed() {
    if !require_local_runner() {
        return;
    }
    let sandbox = Sandbox::new();
    let (spec, keys) = sandbox.spec(tier("cx23", 4096));
    let id = sandbox.provider.create(&spec).await.unwrap();
    let guard = RunnerGuard {
        sandbox: &sandbox,
        id: id.clone(),
    };
    let runner = sandbox.provider.wait_ready(&id).await.unwrap();
    assert!(runner.host.starts_with("127.0.0."), "{}", runner.host);
    let conn = Connection::connect(
        &runner,
        &keys.client.private_openssh,
        &keys.host.public_openssh,
        ConnectPolicy::default(),
        &mut quiet,
    )
    .await
    .unwrap();

    let lines = Mutex::new(Vec::new());
    let sink = |l: &str| lines.lock().unwrap().push(l.to_owned());
    let (exit, _) = conn
        .run("echo out; echo err >&2; echo $HOME", None, &sink)
        .await
        .unwrap();
    assert_eq!(exit, RemoteExit::Code(0));
    let seen = lines.lock().unwrap().clone();
    assert!(
        seen.contains(&"out".to_owned()) && seen.contains(&"err".to_owned()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&runner.home),
        "the runner's HOME is its own: {seen:?}"
    );

    let (exit, _) = conn.run("exit 3", None, &sink).await.unwrap();
    assert_eq!(exit, RemoteExit::Code(3));
    // A child killed by SIGKILL comes back as 137, as the OOM killer's victims do.
    let (exit, _) = conn.run("sh -c 'kill -9 $$'", None, &sink).await.unwrap();
    assert_eq!(exit, RemoteExit::Code(137));

    // Memory: the cgroup is tier ÷ 16 = 256 MiB; a 400 MiB buffer is OOM-killed, and
    // bkl-runner-stats on the runner's PATH reports the kill.
    let (exit, _) = conn
        .run("dd if=/dev/zero of=/dev/null bs=400M count=1", None, &sink)
        .await
        .unwrap();
    assert_eq!(exit, RemoteExit::Code(137));
    let stats = conn
        .run_checked("read runner stats", "bkl-runner-stats", None)
        .await
        .unwrap();
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["oom_kills"], 1, "{stats}");
    assert!(stats["peak_memory_mib"].as_u64().unwrap() >= 200, "{stats}");

    // A file written through stdin is private and exact.
    let path = format!("{}/secrets/token", runner.workdir);
    conn.put_private_file(&path, b"fake-secret-value")
        .await
        .unwrap();
    let mode = conn
        .run_checked("stat", &format!("stat -c %a {path}; cat {path}"), None)
        .await
        .unwrap();
    assert_eq!(mode, "600\nfake-secret-value");

    conn.close().await;
    sandbox.provider.destroy(&id).await.unwrap();
    drop(guard);
    sandbox.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_host_key_is_refused() {
    if !require_local_runner() {
        return;
    }
    let sandbox = Sandbox::new();
    let (spec, keys) = sandbox.spec(tier("cx23", 4096));
    let id = sandbox.provider.create(&spec).await.unwrap();
    let _guard = RunnerGuard {
        sandbox: &sandbox,
        id: id.clone(),
    };
    let runner = sandbox.provider.wait_ready(&id).await.unwrap();
    let other = buildkit_launcher::provider::keys::BuildKeys::generate("other").unwrap();
    let err = Connection::connect(
        &runner,
        &keys.client.private_openssh,
        &other.host.public_openssh,
        ConnectPolicy::default(),
        &mut quiet,
    )
    .await
    .err()
    .expect("connecting with the wrong host key must fail");
    assert!(
        matches!(err, TransportError::HostKeyMismatch { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_runner_is_told_apart_from_a_failed_command() {
    if !require_local_runner() {
        return;
    }
    let sandbox = Sandbox::new();
    let (spec, keys) = sandbox.spec(tier("cx23", 4096));
    let id = sandbox.provider.create(&spec).await.unwrap();
    let _guard = RunnerGuard {
        sandbox: &sandbox,
        id: id.clone(),
    };
    let runner = sandbox.provider.wait_ready(&id).await.unwrap();
    let conn = Connection::connect(
        &runner,
        &keys.client.private_openssh,
        &keys.host.public_openssh,
        ConnectPolicy::default(),
        &mut quiet,
    )
    .await
    .unwrap();
    // Kill every sshd of the runner (listener and session) while a command runs.
    let cgroup = format!("/sys/fs/cgroup/memory/buildkit-launcher/{id}/cgroup.procs");
    let killer = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let procs = std::fs::read_to_string(&cgroup).unwrap();
        for pid in procs.lines() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid.parse().unwrap()),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    });
    let (exit, _) = conn.run("sleep 30", None, &|_| {}).await.unwrap();
    killer.await.unwrap();
    assert!(matches!(exit, RemoteExit::Lost(_)), "{exit:?}");
}
