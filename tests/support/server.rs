//! A real `kiln serve` process for end-to-end suites.
//!
//! [`KilnServer::start`] writes a temp config (the caller's execution classes,
//! a free port, temp data and run directories), pre-seeds the data dir's
//! `instance-id` with a unique label so every container this server creates
//! carries `kiln.instance=<label>`, starts `target/<profile>/kiln serve`, reads
//! the admin token it prints once, and waits for `/readyz`.
//!
//! It then offers the calls a test makes: submit, wait, events (paged, all of
//! them), artifacts, `/healthz`, a WebSocket watcher that collects every
//! event, leftovers (containers labelled with the instance, socket dirs under
//! the run dir), the controller's RSS, and free bytes of a filesystem.
//!
//! `Drop` kills the server, force-removes every container labelled with the
//! instance, and the temp directories go with their `TempDir`s, so a failed
//! test leaves nothing behind.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use serde_json::{Value, json};

/// Statuses after which an execution never changes again.
pub const FINAL_STATUSES: [&str; 9] = [
    "succeeded",
    "failed",
    "timed_out",
    "oom",
    "cancelled",
    "agent_lost",
    "sandbox_crashed",
    "protocol_error",
    "denied",
];

/// The fake model key the harness puts in the controller's environment.
pub const CANARY_KEY: &str = "sk-kiln-canary-7f3c9a";

/// The `kiln` binary next to the running test binary (`target/<profile>/kiln`).
pub fn kiln_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the test binary")?;
    // target/<profile>/deps/e2e-<hash> → target/<profile>/kiln
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary lives in target/<profile>/deps")?;
    let kiln = profile_dir.join("kiln");
    if !kiln.is_file() {
        bail!(
            "{} is missing: build it first with `cargo build -p controller --bin kiln`",
            kiln.display()
        );
    }
    Ok(kiln)
}

/// Fails loudly when Docker, or one of `images`, is not there.
pub fn require_docker_and_images(images: &[&str]) -> Result<()> {
    let output = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .context("run `docker version` (is Docker installed?)")?;
    if !output.status.success() {
        bail!(
            "dockerd is not reachable: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for image in images {
        let inspect = Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Id}}", image])
            .output()
            .context("run `docker image inspect`")?;
        if !inspect.status.success() {
            bail!(
                "image {image} is missing: build it with `cargo xtask build-agent` and `kiln image build --kind all`"
            );
        }
    }
    Ok(())
}

/// One running `kiln serve`.
pub struct KilnServer {
    child: Option<Child>,
    pub base_url: String,
    pub token: String,
    /// The `kiln.instance` label of every container this server creates.
    pub instance: String,
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub http: reqwest::Client,
    /// Everything the server wrote on stderr (logs), collected by a thread.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _dirs: tempfile::TempDir,
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A label unique to this process and call.
pub fn unique_label(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl KilnServer {
    /// Starts `kiln serve` with `extra_toml` appended to a generated config
    /// (`[server]` is generated; pass `[queue]`, `[sandbox]`, classes...).
    pub async fn start(label_prefix: &str, extra_toml: &str) -> Result<KilnServer> {
        let kiln = kiln_binary()?;
        let dirs = tempfile::Builder::new()
            .prefix("kiln-e2e-")
            .tempdir()
            .context("create the temp dir")?;
        let data_dir = dirs.path().join("data");
        let run_dir = dirs.path().join("run");
        std::fs::create_dir_all(&data_dir)?;
        let instance = unique_label(label_prefix);
        // The controller keeps its instance id here; seeding it gives this
        // test a label of its own to filter containers by.
        std::fs::write(data_dir.join("instance-id"), &instance)?;
        let port = free_port()?;
        let gallery = crate::gallery_dir();
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nrun_dir = \"{}\"\ngallery_dir = \"{}\"\nws_heartbeat_secs = 5\n\n{extra_toml}\n",
            data_dir.display(),
            run_dir.display(),
            gallery.display()
        );
        let config_path = dirs.path().join("kiln.toml");
        std::fs::write(&config_path, &config)?;

        let mut child = Command::new(&kiln)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env_remove("KILN_CONFIG")
            .env("RUST_LOG", "info")
            // Secrets canaries: an operator's model keys in the controller's
            // environment must never reach a sandbox (catalogue case 35).
            .env("OPENAI_API_KEY", CANARY_KEY)
            .env("ANTHROPIC_API_KEY", CANARY_KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {} serve", kiln.display()))?;

        // The admin token is printed once on stdout.
        let stdout = child.stdout.take().context("server stdout")?;
        let (token_tx, token_rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(token) = line.strip_prefix("admin token (shown once, keep it): ") {
                    let _ = token_tx.send(token.trim().to_owned());
                }
            }
        });
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().context("server stderr")?;
        let log_writer = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut lines) = log_writer.lock() {
                    lines.push(line);
                }
            }
        });

        let mut server = KilnServer {
            child: Some(child),
            base_url: format!("http://127.0.0.1:{port}"),
            token: String::new(),
            instance,
            data_dir,
            run_dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .context("build the HTTP client")?,
            log,
            _dirs: dirs,
        };
        let started = Instant::now();
        loop {
            if let Some(child) = server.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "kiln serve exited with {status} during start-up:\n{}",
                    server.log_text()
                );
            }
            if server.token.is_empty()
                && let Ok(token) = token_rx.try_recv()
            {
                server.token = token;
            }
            let ready = server
                .http
                .get(format!("{}/readyz", server.base_url))
                .send()
                .await
                .map(|response| response.status().is_success())
                .unwrap_or(false);
            if ready && !server.token.is_empty() {
                return Ok(server);
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "kiln serve not ready after 60 s (token seen: {}):\n{}",
                    !server.token.is_empty(),
                    server.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        self.log
            .lock()
            .map(|lines| lines.join("\n"))
            .unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The controller's resident memory (`VmRSS` of /proc/<pid>/status), in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self.pid().context("the server is not running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .context("VmRSS in /proc/<pid>/status")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    async fn get_json(&self, path: &str) -> Result<Value> {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("GET {path} body"))?;
        if !status.is_success() {
            bail!("GET {path}: {status} {body}");
        }
        Ok(body)
    }

    /// `POST /api/v1/executions`; returns the execution id.
    pub async fn submit(&self, recipe: &str, class: &str) -> Result<String> {
        let response = self
            .http
            .post(self.url("/api/v1/executions"))
            .bearer_auth(&self.token)
            .json(&json!({ "recipe": recipe, "class": class }))
            .send()
            .await
            .context("POST /api/v1/executions")?;
        let status = response.status();
        let body: Value = response.json().await.context("submission answer")?;
        if status.as_u16() != 202 {
            bail!("submission refused: {status} {body}");
        }
        body["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no id in {body}"))
    }

    /// `GET /api/v1/executions/{id}`.
    pub async fn execution(&self, id: &str) -> Result<Value> {
        self.get_json(&format!("/api/v1/executions/{id}")).await
    }

    /// Polls until the execution's status is final; returns the execution.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Value> {
        let started = Instant::now();
        loop {
            let execution = self.execution(id).await?;
            let status = execution["status"].as_str().unwrap_or_default();
            if FINAL_STATUSES.contains(&status) {
                return Ok(execution);
            }
            if started.elapsed() > timeout {
                bail!("execution {id} still {status} after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every stored event of an execution, all pages.
    pub async fn events(&self, id: &str) -> Result<Vec<Value>> {
        let mut events = Vec::new();
        let mut after = 0_u64;
        loop {
            let page = self
                .get_json(&format!(
                    "/api/v1/executions/{id}/events?after={after}&limit=1000"
                ))
                .await?;
            let batch = page["events"].as_array().cloned().unwrap_or_default();
            let n_batch = batch.len();
            events.extend(batch);
            after = page["next_after"].as_u64().unwrap_or(after);
            if n_batch < 1000 {
                return Ok(events);
            }
        }
    }

    /// `GET /api/v1/executions/{id}/artifacts` → the `artifacts` array.
    pub async fn artifacts(&self, id: &str) -> Result<Vec<Value>> {
        let body = self
            .get_json(&format!("/api/v1/executions/{id}/artifacts"))
            .await?;
        Ok(body["artifacts"].as_array().cloned().unwrap_or_default())
    }

    /// `GET /healthz`: whether it answered 200, and how long it took.
    pub async fn healthz(&self) -> (bool, Duration) {
        let started = Instant::now();
        let ok = self
            .http
            .get(self.url("/healthz"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map(|response| response.status().is_success())
            .unwrap_or(false);
        (ok, started.elapsed())
    }

    /// Watches `WS /api/v1/executions/{id}/stream?after=0` until the server
    /// ends it; returns every event it saw, in order.
    pub fn watch(&self, id: &str) -> tokio::task::JoinHandle<Result<Vec<Value>>> {
        let address = self.base_url.trim_start_matches("http://").to_owned();
        let url = format!("ws://{address}/api/v1/executions/{id}/stream?after=0");
        let token = self.token.clone();
        tokio::spawn(async move {
            use tokio_tungstenite::tungstenite::Message;
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut request = url.as_str().into_client_request()?;
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
            let tcp = tokio::net::TcpStream::connect(&address).await?;
            let (mut socket, _) = tokio_tungstenite::client_async(request, tcp).await?;
            let mut seen = Vec::new();
            while let Some(message) = socket.next().await {
                match message? {
                    Message::Text(text) => {
                        let message: Value = serde_json::from_str(text.as_str())?;
                        match message["type"].as_str() {
                            Some("event") => seen.push(message["event"].clone()),
                            Some("end") => return Ok(seen),
                            _ => {}
                        }
                    }
                    Message::Close(frame) => {
                        bail!("stream closed before its end message: {frame:?}")
                    }
                    _ => {}
                }
            }
            bail!("stream ended without an end message")
        })
    }

    /// Containers (any state) labelled with this server's instance.
    pub fn leftover_containers(&self) -> Result<Vec<String>> {
        let output = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=kiln.instance={}", self.instance),
            ])
            .output()
            .context("docker ps")?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// Entries left in the run dir (one socket dir per live execution).
    pub fn leftover_socket_dirs(&self) -> Result<Vec<String>> {
        if !self.run_dir.exists() {
            return Ok(Vec::new());
        }
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.run_dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    /// Polls until no labelled container and no socket dir remain (the
    /// controller removes them right after the final status), or `timeout`.
    pub async fn wait_for_no_leftovers(&self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            let containers = self.leftover_containers()?;
            let dirs = self.leftover_socket_dirs()?;
            if containers.is_empty() && dirs.is_empty() {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "leftovers after {timeout:?}: containers {containers:?}, socket dirs {dirs:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Bytes used on the filesystem holding `path` (statvfs).
pub fn used_bytes(path: &Path) -> Result<u64> {
    let stat =
        nix::sys::statvfs::statvfs(path).with_context(|| format!("statvfs {}", path.display()))?;
    // x86_64 Linux: fsblkcnt_t and c_ulong are u64.
    let fragment: u64 = stat.fragment_size().max(1);
    let total: u64 = stat.blocks();
    let free: u64 = stat.blocks_free();
    Ok(total.saturating_sub(free).saturating_mul(fragment))
}

impl Drop for KilnServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Ok(containers) = self.leftover_containers()
            && !containers.is_empty()
        {
            let _ = Command::new("docker")
                .args(["rm", "-fv"])
                .args(&containers)
                .output();
        }
    }
}
