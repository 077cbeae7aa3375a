//! Soak (issue 5 "What must show"): 100 mixed hostile executions back to
//! back, four at a time, on runc. Afterwards nothing is left (containers,
//! socket dirs), every execution ended with its case's expected status, and
//! the controller's RSS and the disk are recorded before and after (written
//! to `target/security-soak.md` for docs/benchmarks.md).

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kiln_e2e::server::used_bytes;
use kiln_e2e::workspace_root;

use super::cases::{CASES, Case};
use super::runner::{dir_bytes, recipe_of};
use super::{Runtime, SUITE_LOCK, start_server};

const N_EXECUTIONS: usize = 100;
const PARALLEL: usize = 4;
/// Hostile cases that end fast: fork bomb, memory bomb, tmpfs fill,
/// stdout flood, nofile, timeout, kill the agent, capabilities, seccomp,
/// rootfs, artifact links, zombies, artifact count.
const MIX: &[u32] = &[1, 3, 5, 6, 8, 10, 13, 16, 20, 28, 44, 12, 45];
/// Controller RSS may not grow more than this over the soak.
const RSS_GROWTH_LIMIT_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_mixed_hostile_executions_leave_nothing_and_memory_stays_flat() {
    let _suite = SUITE_LOCK.lock().await;
    let server = start_server("kiln-soak").await;
    let mix: Vec<Case> = MIX
        .iter()
        .map(|number| {
            *CASES
                .iter()
                .find(|case| case.number == *number)
                .expect("mix cases exist")
        })
        .collect();

    let rss_before = server.rss_kib().expect("controller RSS");
    let docker_before = used_bytes(Path::new("/var/lib/docker")).expect("statvfs docker root");
    let data_before = dir_bytes(&server.data_dir);
    let started = Instant::now();

    let jobs: Vec<Case> = (0..N_EXECUTIONS).map(|idx| mix[idx % mix.len()]).collect();
    let outcomes: Vec<(u32, String, String)> = futures::stream::iter(jobs)
        .map(|case| {
            let server = &server;
            async move {
                let expected = case.runc.status.to_owned();
                let status = match server
                    .submit(&recipe_of(&case), Runtime::Runc.class())
                    .await
                {
                    Ok(id) => match server
                        .wait(&id, Duration::from_secs(case.step_timeout_secs + 150))
                        .await
                    {
                        Ok(execution) => execution["status"].as_str().unwrap_or("?").to_owned(),
                        Err(error) => format!("no final status: {error:#}"),
                    },
                    Err(error) => format!("not submitted: {error:#}"),
                };
                (case.number, expected, status)
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let elapsed = started.elapsed();

    let leftovers = server.wait_for_no_leftovers(Duration::from_secs(60)).await;
    let rss_after = server.rss_kib().expect("controller RSS");
    let docker_after = used_bytes(Path::new("/var/lib/docker")).expect("statvfs docker root");
    let data_after = dir_bytes(&server.data_dir);
    let docker_delta = i128::from(docker_after) - i128::from(docker_before);
    let (healthy, _) = server.healthz().await;

    let wrong: Vec<String> = outcomes
        .iter()
        .filter(|(_, expected, status)| !expected.split('|').any(|accepted| accepted == status))
        .map(|(number, expected, status)| format!("case {number}: {status}, expected {expected}"))
        .collect();
    let report = format!(
        "# Security soak\n\n{N_EXECUTIONS} mixed hostile executions (cases {MIX:?}), {PARALLEL} at a time, runc, in {:.1} s.\n\n\
         | figure | before | after | delta |\n|---|---|---|---|\n\
         | controller RSS (KiB) | {rss_before} | {rss_after} | {} |\n\
         | Docker root fs used (bytes, shared machine) | {docker_before} | {docker_after} | {docker_delta} |\n\
         | data dir (bytes: store, artifacts) | {data_before} | {data_after} | {} |\n\n\
         Leftover containers/socket dirs after: {}. Executions with an unexpected status: {}.\n",
        elapsed.as_secs_f64(),
        i128::from(rss_after) - i128::from(rss_before),
        i128::from(data_after) - i128::from(data_before),
        match &leftovers {
            Ok(()) => "0".to_owned(),
            Err(error) => format!("{error:#}"),
        },
        wrong.len()
    );
    eprintln!("{report}");
    let path = workspace_root().join("target").join("security-soak.md");
    std::fs::write(&path, &report).expect("write target/security-soak.md");

    assert!(
        wrong.is_empty(),
        "unexpected statuses:\n{}",
        wrong.join("\n")
    );
    leftovers.expect("no leftovers after the soak");
    assert!(healthy, "/healthz answers after the soak");
    assert!(
        rss_after < rss_before + RSS_GROWTH_LIMIT_KIB,
        "controller RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}
