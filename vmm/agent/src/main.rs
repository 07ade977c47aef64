//! `sandbox-agent`: parse the command line, do PID 1 start-up when PID 1,
//! listen, serve until power-off.
//!
//! ```text
//! sandbox-agent [--listen unix:PATH|vsock:PORT] [--files-root DIR]
//!               [--cwd DIR] [--manage-system]
//! ```
//!
//! As PID 1 the default is `--listen vsock:1024` when the kernel offers
//! vsock, else `unix:/run/sandbox/agent.sock`, with the file root `/`; as
//! PID 1 it serves only peers outside the sandbox (the host). With
//! `SANDBOX_AGENT_TOKEN` set it serves only clients that present that
//! secret in their `Hello`, and removes it from its environment first.
//!
//! Ways to run it:
//! - microVM: the guest kernel starts `/sbin/init` (this binary); the host
//!   reaches it with `Client::connect_vsock_proxy(vsock_uds, 1024)`.
//! - container: the launcher bind-mounts a host directory at
//!   `/run/sandbox` (the agent never mounts over it) and execs
//!   `/sbin/init --listen unix:/run/sandbox/agent.sock` as PID 1 of the new
//!   PID namespace; pass `--listen` explicitly, since a host with vsock
//!   shows `/dev/vsock` inside the container too.
//! - tests: `sandbox-agent --listen unix:PATH --files-root DIR` as a plain
//!   process (no mounts, no system changes; it becomes a child subreaper so
//!   killed grandchildren are reaped).
//!
//! Processes an exec leaves running in the background after its leader
//! exited (a dev server started with `&`) keep running; those still running
//! when an exec times out, is cancelled or loses its connection are killed
//! with its process group. A descendant that calls `setsid` itself leaves
//! the group and is not killed (the container backend's cgroup is the
//! complete answer there).

use std::path::PathBuf;
use std::sync::Arc;

use sandbox_agent::listen::{Address, Listener};
use sandbox_agent::{Agent, Config, system};

struct Args {
    listen: Option<Address>,
    files_root: PathBuf,
    cwd: Option<PathBuf>,
    manage_system: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: None,
        files_root: PathBuf::from("/"),
        cwd: None,
        manage_system: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--listen" => args.listen = Some(value("--listen")?.parse()?),
            "--files-root" => args.files_root = PathBuf::from(value("--files-root")?),
            "--cwd" => args.cwd = Some(PathBuf::from(value("--cwd")?)),
            "--manage-system" => args.manage_system = true,
            "--version" => {
                println!("sandbox-agent {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            // The kernel passes unknown boot parameters to init.
            other if std::process::id() == 1 => eprintln!("sandbox-agent: ignoring {other:?}"),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() {
    let pid1 = std::process::id() == 1;
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sandbox-agent: {e}");
            std::process::exit(2);
        }
    };
    if pid1 {
        system::init_pid1();
    } else {
        sandbox_agent::reaper::become_subreaper();
    }
    let listen = args.listen.unwrap_or_else(|| {
        if std::path::Path::new("/dev/vsock").exists() {
            Address::Vsock(agent_proto::DEFAULT_VSOCK_PORT)
        } else {
            Address::Unix(PathBuf::from("/run/sandbox/agent.sock"))
        }
    });
    let default_cwd = args.cwd.unwrap_or_else(|| {
        if std::path::Path::new("/workspace").is_dir() {
            PathBuf::from("/workspace")
        } else {
            PathBuf::from("/")
        }
    });
    let token = std::env::var(agent_proto::TOKEN_ENV).ok();
    // SAFETY: no other thread exists yet (the runtime starts below), so
    // nothing reads the environment concurrently. Removed so that no
    // command the agent runs inherits the secret.
    unsafe { std::env::remove_var(agent_proto::TOKEN_ENV) };
    let config = Config {
        pid1,
        manage_system: pid1 || args.manage_system,
        files_root: args.files_root,
        default_cwd,
        token,
        host_peers_only: pid1,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().min(4)))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandbox-agent: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        if let Address::Unix(path) = &listen
            && let Some(dir) = path.parent()
        {
            let _ = std::fs::create_dir_all(dir);
        }
        let listener = Listener::bind(&listen).map_err(|e| format!("listen on {listen:?}: {e}"))?;
        let agent = Agent::new(config).map_err(|e| format!("open the file root: {e}"))?;
        eprintln!(
            "sandbox-agent {} listening on {listen:?}",
            env!("CARGO_PKG_VERSION")
        );
        sandbox_agent::serve(listener, Arc::new(agent)).await;
        Ok::<(), String>(())
    });
    if let Err(e) = result {
        eprintln!("sandbox-agent: {e}");
        if !pid1 {
            std::process::exit(1);
        }
    }
    system::poweroff(pid1)
}
