//! `kiln-agent`: PID 1 of every Kiln sandbox container.
//!
//! The startup story, in order:
//! 1. parse the command line (exit 64 on a bad one); the internal trampoline
//!    modes `--exec-step` and `--collect-artifacts` branch off here;
//! 2. mark the process non-dumpable (`PR_SET_DUMPABLE=0`): a step cannot
//!    ptrace it or read its `/proc/1/mem` and `environ` (catalogue case 14);
//!    and become a child subreaper, so orphans are reaped even when the agent
//!    is not PID 1 (tests);
//! 3. read the one-time token from `/run/kiln/token` (never from the
//!    environment; exit 66 if unusable);
//! 4. run [`agent::run`] on a single-threaded tokio runtime: reaper, signal
//!    watcher, link, job, engine, artifacts, done, close.
//!
//! Exit codes: see [`agent`] (0 ok, 64 usage, 66 token, 69 link lost,
//! 70 internal, 75 stopped before job, 77 rejected, 125 trampoline setup).
//!
//! No `unsafe` anywhere: privilege dropping happens in a re-executed
//! trampoline (see [`trampoline`]) with nix's safe wrappers, not in `pre_exec`.

mod agent;
mod artifacts;
mod backoff;
mod chunker;
mod cli;
mod link;
mod reaper;
mod runners;
mod step_process;
mod step_spec;
mod trampoline;

use std::process::ExitCode;

use cli::Mode;

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn main() -> ExitCode {
    let mut args = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.into_string() {
            Ok(arg) => args.push(arg),
            Err(arg) => {
                eprintln!("kiln-agent: argument {arg:?} is not utf-8");
                return exit(agent::EXIT_USAGE);
            }
        }
    }
    let mode = match cli::parse(&args) {
        Ok(mode) => mode,
        Err(error) => {
            eprintln!("kiln-agent: {error}");
            return exit(agent::EXIT_USAGE);
        }
    };
    match mode {
        Mode::ExecStep => exit(trampoline::exec_step()),
        Mode::CollectArtifacts => exit(trampoline::collect_artifacts()),
        Mode::Version => {
            println!(
                "kiln-agent {} (protocol {})",
                env!("CARGO_PKG_VERSION"),
                protocol::PROTOCOL_VERSION
            );
            exit(agent::EXIT_OK)
        }
        Mode::Agent(args) => exit(agent_main(args)),
    }
}

fn agent_main(args: cli::AgentArgs) -> i32 {
    // Both are process attributes the kernel keeps; failure is not expected
    // and is reported but not fatal for the subreaper (PID 1 reaps anyway).
    if let Err(errno) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("kiln-agent: set non-dumpable: {errno}");
        return agent::EXIT_INTERNAL;
    }
    if let Err(errno) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("kiln-agent: set child subreaper: {errno}");
    }
    let execution_id = match args
        .execution_id
        .clone()
        .or_else(|| std::env::var("KILN_EXECUTION_ID").ok())
    {
        Some(id) if !id.is_empty() && id.len() <= protocol::MAX_EXECUTION_ID_BYTES => id,
        _ => {
            eprintln!("kiln-agent: no execution id (--execution-id or KILN_EXECUTION_ID)");
            return agent::EXIT_USAGE;
        }
    };
    let token = match agent::read_token(&args.token_file) {
        Ok(token) => token,
        Err(message) => {
            eprintln!("kiln-agent: {message}");
            return agent::EXIT_NO_TOKEN;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kiln-agent: start runtime: {error}");
            return agent::EXIT_INTERNAL;
        }
    };
    runtime.block_on(agent::run(args, token, execution_id))
}
