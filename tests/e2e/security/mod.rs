//! The hostile-recipe security suite (issue 5): every case of
//! `shared/spec/security-catalogue.md` section 3, run as a real recipe
//! through a real `kiln serve` process on real Docker, on runc and on runsc.
//!
//! - `cases`: the catalogue as data (script + expected outcome per runtime).
//! - `runner`: runs one case with the base invariants (victim execution,
//!   `/healthz`, disk, leftovers, persisted events = WebSocket events).
//! - `table`: the generated results table (`target/security-results.md`, and
//!   SECURITY.md between its markers when `KILN_WRITE_SECURITY_TABLE=1`).
//! - `protocol`: a hostile client on the host against a live execution's socket.
//! - `soak`: 100 mixed hostile executions back to back.
//!
//! The suites share one lock: each starts its own server, and running them
//! one at a time keeps a 2-core machine responsive.

mod cases;
mod protocol;
mod runner;
mod soak;
mod table;

use std::time::Duration;

use kiln_e2e::server::{CANARY_KEY, KilnServer, require_docker_and_images};

/// One suite at a time.
static SUITE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Execution classes of the suite's server: the probe image on each runtime,
/// small limits so cases end fast. runsc counts host threads in its pids
/// cgroup, so its limit is large (catalogue finding 2).
const SERVER_CONFIG: &str = r#"
[queue]
concurrency = 4

# The gateway loads the canary key (catalogue case 35) as an operator's
# would; it must never reach a sandbox, an event or the log. Nothing listens
# on the discard port: no case calls a model.
[gateway]
[[gateway.providers]]
name = "canary"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
default_model = "canary-model"
api_key_env = "OPENAI_API_KEY"

[limits]
max_artifact_bytes = 1048576

[sandbox]
default_class = "probe"

[sandbox.classes.probe]
image = "kiln-probe"
runtime = "runc"
memory_mib = 128
pids = 64
work_mib = 64
tmp_mib = 16
shm_mib = 16
output_cap_bytes = 1048576
wall_timeout_secs = 120

[sandbox.classes.probe-runsc]
image = "kiln-probe"
runtime = "runsc"
memory_mib = 256
pids = 1024
work_mib = 64
tmp_mib = 16
shm_mib = 16
output_cap_bytes = 1048576
wall_timeout_secs = 120

[sandbox.classes.probe-deadline]
image = "kiln-probe"
runtime = "runc"
memory_mib = 128
pids = 64
wall_timeout_secs = 8

[sandbox.classes.probe-runsc-deadline]
image = "kiln-probe"
runtime = "runsc"
memory_mib = 256
pids = 1024
wall_timeout_secs = 8
"#;

/// The two runtimes and their classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Runc,
    Runsc,
}

impl Runtime {
    pub fn class(self) -> &'static str {
        match self {
            Runtime::Runc => "probe",
            Runtime::Runsc => "probe-runsc",
        }
    }

    /// The same class with an 8 s wall deadline.
    pub fn deadline_class(self) -> &'static str {
        match self {
            Runtime::Runc => "probe-deadline",
            Runtime::Runsc => "probe-runsc-deadline",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Runsc => "runsc",
        }
    }
}

async fn start_server(label: &str) -> KilnServer {
    require_docker_and_images(&["kiln-probe", "kiln-minimal"])
        .expect("the security suite needs Docker and the kiln images");
    KilnServer::start(label, SERVER_CONFIG)
        .await
        .expect("start kiln serve")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_catalogue_is_contained_on_runc_and_runsc() {
    let _suite = SUITE_LOCK.lock().await;
    let server = start_server("kiln-sec").await;
    let results = runner::run_all(&server, cases::CASES, 2).await;
    table::write(&results).expect("write the results table");
    let failures: Vec<String> = results
        .iter()
        .flat_map(|result| result.failures())
        .collect();
    server
        .wait_for_no_leftovers(Duration::from_secs(60))
        .await
        .expect("no container or socket dir left after the suite");
    // Neither the canary model key nor the admin token is ever logged.
    let log = server.log_text();
    assert!(
        !log.contains(CANARY_KEY),
        "the controller log holds the canary key"
    );
    assert!(
        !log.contains(&server.token),
        "the controller log holds the admin token"
    );
    assert!(
        failures.is_empty(),
        "{} of {} case runs failed:\n{}",
        failures.len(),
        results.iter().map(|result| result.n_runs()).sum::<usize>(),
        failures.join("\n\n")
    );
}
