//! `cargo xtask`: build, run, test and bench automation for Kiln.
//!
//! Every command says what it is doing and installs or starts what it needs,
//! so that a fresh Debian machine needs only the two README commands:
//!
//! - `cargo xtask run`:  host setup → static agent → images → `kiln serve`
//! - `cargo xtask test`: host setup → static agent + probe → images →
//!   fmt check → clippy → the whole test suite against real Docker
//!
//! `cargo xtask ci` is the same as `cargo xtask test`; `.ci/run` calls it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup         install and start what Kiln needs on this host (docker, runsc, ...)
  build-agent   build the static sandbox agent and the static probe
  images        build the runtime images (cached by a hash of their inputs)
  run [ARGS]    setup + build-agent + images, then `kiln serve [ARGS]`
  test          setup + build + fmt check + clippy + the whole test suite
  ci            exactly what CI runs (same as `test`)
  bench         criterion benchmarks and the end-to-end figures
";

/// The target triple of the static agent. A static glibc build works here;
/// musl is not always installable (see engineering-facts.md).
const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        eprint!("{USAGE}");
        std::process::exit(2);
    };
    let rest = &args[1..];
    let root = workspace_root();
    std::env::set_current_dir(&root).context("cd to the workspace root")?;
    match command.as_str() {
        "setup" => setup(&root),
        "build-agent" => build_agent(&root).map(|_| ()),
        "images" => {
            setup(&root)?;
            let artifacts = build_agent(&root)?;
            build_images(&root, &artifacts)
        }
        "run" => run(&root, rest),
        "test" | "ci" => test(&root),
        "bench" => bench(&root),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("unknown command `{other}`\n\n{USAGE}");
            std::process::exit(2);
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn step(message: &str) {
    eprintln!("\n==> {message}");
}

/// Runs a command, echoing it first, and fails with its exit status.
fn sh(command: &mut Command) -> Result<()> {
    eprintln!("    $ {}", render(command));
    let started = Instant::now();
    let status = command
        .status()
        .with_context(|| format!("could not start `{}`", render(command)))?;
    if !status.success() {
        bail!("`{}` failed with {status}", render(command));
    }
    eprintln!("    ({:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}

fn render(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

/// Host setup: docker.io, runsc, busybox-static, debootstrap; runsc registered;
/// dockerd started when no init system manages it.
fn setup(root: &Path) -> Result<()> {
    step("host setup (deploy/host-setup.sh): docker, runsc, busybox-static, debootstrap");
    sh(Command::new("bash").arg(root.join("deploy/host-setup.sh")))
}

/// Paths of the binaries that go into the runtime images.
struct Artifacts {
    agent: PathBuf,
    probe: PathBuf,
}

fn build_agent(root: &Path) -> Result<Artifacts> {
    step("building the static sandbox agent (release, +crt-static)");
    sh(cargo()
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "sandbox-agent",
            "--target",
            AGENT_TARGET,
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static"))?;
    let agent = root.join(format!("target/{AGENT_TARGET}/release/kiln-agent"));
    if !agent.is_file() {
        bail!("the agent build did not produce {}", agent.display());
    }

    step("building the static security probe (gcc -static)");
    let probe = root.join("target/kiln-probe");
    sh(Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&probe)
        .arg(root.join("runtime-image/probe/probe.c")))?;
    Ok(Artifacts { agent, probe })
}

fn kiln_binary(root: &Path) -> Result<PathBuf> {
    step("building the kiln controller binary");
    sh(cargo().args(["build", "--locked", "-p", "controller", "--bin", "kiln"]))?;
    Ok(root.join("target/debug/kiln"))
}

fn build_images(root: &Path, artifacts: &Artifacts) -> Result<()> {
    let kiln = kiln_binary(root)?;
    step(
        "building runtime images kiln-minimal and kiln-standard (cached by a hash of their inputs)",
    );
    sh(Command::new(&kiln)
        .args(["image", "build", "--agent"])
        .arg(&artifacts.agent)
        .arg("--runtime-image-dir")
        .arg(root.join("runtime-image")))?;
    step("building the test image kiln-probe (kiln-minimal + the static probe)");
    sh(Command::new(&kiln)
        .args(["image", "build", "--kind", "probe", "--agent"])
        .arg(&artifacts.agent)
        .arg("--probe")
        .arg(&artifacts.probe)
        .arg("--runtime-image-dir")
        .arg(root.join("runtime-image")))
}

fn run(root: &Path, serve_args: &[String]) -> Result<()> {
    setup(root)?;
    let artifacts = build_agent(root)?;
    build_images(root, &artifacts)?;
    let kiln = root.join("target/debug/kiln");
    let mut command = Command::new(kiln);
    command.arg("serve").args(serve_args);
    // Defaults for a checkout: data and sockets next to the source tree unless
    // the operator's environment or --config says otherwise.
    let data_dir = root.join(".kiln-data");
    for (key, value) in [
        ("KILN_SERVER__DATA_DIR", data_dir.join("db")),
        ("KILN_SERVER__RUN_DIR", data_dir.join("run")),
        ("KILN_SERVER__GALLERY_DIR", root.join("gallery")),
    ] {
        if std::env::var_os(key).is_none() {
            command.env(key, value);
        }
    }
    step("starting kiln serve (Ctrl-C to stop)");
    sh(&mut command)
}

fn test(root: &Path) -> Result<()> {
    let started = Instant::now();
    setup(root)?;
    let artifacts = build_agent(root)?;
    build_images(root, &artifacts)?;

    step("cargo fmt --check");
    sh(cargo().args(["fmt", "--all", "--check"]))?;

    step("cargo clippy --workspace --all-targets -- -D warnings");
    sh(cargo().args([
        "clippy",
        "--locked",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    step("the whole test suite (unit, integration, end-to-end against real Docker)");
    let mut command = cargo();
    command
        .args(["test", "--locked", "--workspace", "--no-fail-fast"])
        .env("KILN_AGENT_BINARY", &artifacts.agent)
        .env("KILN_PROBE_BINARY", &artifacts.probe)
        .env("KILN_RUNTIME_IMAGE_DIR", root.join("runtime-image"))
        .env("KILN_GALLERY_DIR", root.join("gallery"));
    sh(&mut command)?;

    step("checking that no test left a container behind");
    leftover_check()?;

    eprintln!(
        "\nall checks passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Fails when any container labelled by Kiln or its tests is still present.
fn leftover_check() -> Result<()> {
    for label in ["kiln.execution", "kiln.test"] {
        let output = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label={label}")])
            .output()
            .context("docker ps")?;
        let ids = String::from_utf8_lossy(&output.stdout);
        let n_left = ids.lines().filter(|line| !line.trim().is_empty()).count();
        if n_left > 0 {
            bail!(
                "{n_left} container(s) labelled {label} were left behind: {}",
                ids.trim()
            );
        }
    }
    Ok(())
}

fn bench(root: &Path) -> Result<()> {
    step("criterion benchmarks of the recipe crate");
    sh(cargo().args([
        "bench",
        "--locked",
        "-p",
        "recipe",
        "--",
        "--warm-up-time",
        "1",
        "--measurement-time",
        "3",
    ]))?;
    step("criterion benchmarks of the model gateway (scripted provider on loopback)");
    sh(cargo().args([
        "bench",
        "--locked",
        "-p",
        "controller",
        "--bench",
        "gateway",
        "--",
        "--warm-up-time",
        "1",
        "--measurement-time",
        "3",
    ]))?;
    let _ = root;
    Ok(())
}
