//! Test fixtures: a tiny busybox image root (with a static probe program)
//! and a backend on its own data directory that cleans up after itself.
#![allow(dead_code)]

mod shared;
#[allow(unused_imports)]
pub use shared::{agent_binary, host_usr_root};
#[allow(unused_imports)] // each test crate uses its own subset
pub use test_support::poll::{eventually, stays};
use test_support::requirements;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sandbox_container::{
    BackendConfig, ContainerBackend, CreateRequest, ExecRequest, Limits, SandboxInfo,
};

/// Build (once per host) a busybox-static root with `/bin/probe`.
pub fn busybox_root() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(build_busybox_root).clone()
}

fn build_busybox_root() -> PathBuf {
    let probe_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/probe.c");
    let source = fs::read(&probe_src).expect("probe.c");
    // The cache is keyed by the probe's source, so edits rebuild it.
    let hash = source.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    let root = PathBuf::from(format!(
        "/tmp/sandbox-container-test-image-{:08x}",
        hash as u32
    ));
    if root.join(".complete").exists() {
        return root;
    }
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "tests need a static busybox at /bin/busybox (Debian package busybox-static)"
    );
    let tmp = PathBuf::from(format!("{}.tmp{}", root.display(), std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    for dir in [
        "bin", "etc", "tmp", "proc", "sys", "dev", "run", "root", "mnt", "data",
    ] {
        fs::create_dir_all(tmp.join(dir)).expect("create image dir");
    }
    fs::copy(busybox, tmp.join("bin/busybox")).expect("copy busybox");
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            symlink("busybox", tmp.join("bin").join(applet)).expect("applet link");
        }
    }
    fs::write(
        tmp.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n",
    )
    .expect("passwd");
    fs::write(tmp.join("etc/group"), "root:x:0:\nuser:x:1000:\n").expect("group");
    let status = Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(tmp.join("bin/probe"))
        .arg(&probe_src)
        .status()
        .expect("gcc runs (tests need gcc with static libc)");
    assert!(status.success(), "compiling probe.c failed");
    fs::write(tmp.join(".complete"), "").expect("marker");
    // Another test process may have won the race; either root is complete.
    if fs::rename(&tmp, &root).is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    root
}

/// A backend on a private data directory under /tmp.
pub struct TestBackend {
    pub backend: Option<ContainerBackend>,
    pub data_dir: PathBuf,
    pub image: PathBuf,
}

impl TestBackend {
    pub fn start(name: &str) -> Self {
        Self::start_with(name, |_| {})
    }

    /// A backend whose configuration `adjust` changed first.
    pub fn start_with(name: &str, adjust: impl FnOnce(&mut BackendConfig)) -> Self {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "container tests need root"
        );
        let image = busybox_root();
        let data_dir = PathBuf::from(format!("/tmp/sbx-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&data_dir);
        fs::create_dir_all(&data_dir).expect("data dir");
        let mut config = BackendConfig::new(&data_dir);
        config.launcher = PathBuf::from(env!("CARGO_BIN_EXE_sandbox-init"));
        config.layer_image_gib = 8;
        adjust(&mut config);
        let backend = ContainerBackend::open(config).expect("backend opens");
        Self {
            backend: Some(backend),
            data_dir,
            image,
        }
    }

    /// A second backend on the same data directory (a restarted forge).
    pub fn reopen(other: &TestBackend) -> ContainerBackend {
        let mut config = BackendConfig::new(&other.data_dir);
        config.launcher = PathBuf::from(env!("CARGO_BIN_EXE_sandbox-init"));
        config.layer_image_gib = 8;
        ContainerBackend::open(config).expect("backend reopens")
    }

    /// Whether this backend checkpoints (CRIU); when it cannot, the test
    /// fails under CI and is skipped (and recorded) elsewhere.
    pub fn require_criu(&self) -> bool {
        let missing = (!self.backend().checkpoints())
            .then(|| "no CRIU >= 4.0 passing `criu check`".to_owned());
        requirements::met(requirements::Requirement::Criu, missing)
    }

    pub fn backend(&self) -> &ContainerBackend {
        self.backend.as_ref().expect("backend open")
    }

    pub fn request(&self, limits: Limits) -> CreateRequest {
        CreateRequest {
            image_root: self.image.clone(),
            limits,
            init: Vec::new(),
            env: Vec::new(),
            hostname: None,
            binds: Vec::new(),
            agent: false,
        }
    }

    pub fn create(&self) -> SandboxInfo {
        self.create_with(Limits::default())
    }

    pub fn create_with(&self, limits: Limits) -> SandboxInfo {
        self.backend()
            .create(self.request(limits))
            .expect("sandbox creates")
    }

    /// Run a shell script inside as root.
    pub fn sh(&self, id: &str, script: &str) -> Output {
        self.backend()
            .exec(id, &ExecRequest::new(["/bin/sh", "-c", script]))
            .expect("exec runs")
    }

    /// Run a shell script and return its stdout, asserting success.
    pub fn sh_ok(&self, id: &str, script: &str) -> String {
        let out = self.sh(id, script);
        assert!(
            out.status.success(),
            "`{script}` failed: {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        if let Some(backend) = self.backend.take() {
            if let Ok(list) = backend.list() {
                for sandbox in list {
                    let _ = backend.destroy(&sandbox.id);
                }
            }
            let parent = sandbox_container::backend::cgroup_parent(&self.data_dir);
            let result = backend.close();
            // Only assert when the test itself passed, to keep its message.
            if !std::thread::panicking() {
                result.expect("close the backend");
                let leftovers: Vec<_> = fs::read_dir("/sys/fs/cgroup")
                    .expect("cgroup root")
                    .flatten()
                    .map(|h| h.path().join(&parent))
                    .filter(|p| p.exists())
                    .collect();
                assert!(
                    leftovers.is_empty(),
                    "cgroups left after close: {leftovers:?}"
                );
                let mounted = fs::read_to_string("/proc/self/mountinfo")
                    .expect("mountinfo")
                    .contains(&self.data_dir.to_string_lossy().into_owned());
                assert!(!mounted, "layer store still mounted after close");
            }
        }
        let _ = fs::remove_dir_all(&self.data_dir);
    }
}

/// What a data directory's sandboxes leave on the host: mounts that name
/// the data dir or are overlays, cgroup dirs under its parent, processes in
/// those cgroups, and loop devices backed by files in the data dir.
#[derive(Debug, PartialEq, Eq)]
pub struct HostFootprint {
    pub mounts: usize,
    pub cgroups: usize,
    pub processes: usize,
    pub loop_devices: usize,
}

pub fn host_footprint(data_dir: &Path) -> HostFootprint {
    let parent = sandbox_container::backend::cgroup_parent(data_dir);
    let data = data_dir.to_string_lossy().into_owned();
    let mounts = fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(&data) || l.contains(" overlay "))
        .count();
    let mut cgroups = 0;
    for hierarchy in fs::read_dir("/sys/fs/cgroup")
        .expect("cgroup root")
        .flatten()
    {
        if let Ok(entries) = fs::read_dir(hierarchy.path().join(&parent)) {
            cgroups += entries.flatten().filter(|e| e.path().is_dir()).count();
        }
    }
    let needle = format!("/{parent}/");
    let processes = fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| fs::read_to_string(e.path().join("cgroup")).is_ok_and(|c| c.contains(&needle)))
        .count();
    let loop_devices = fs::read_dir("/sys/block")
        .expect("sys block")
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("loop/backing_file")).ok())
        .filter(|backing| backing.starts_with(&data))
        .count();
    HostFootprint {
        mounts,
        cgroups,
        processes,
        loop_devices,
    }
}

/// Where the agent binary appears inside a sandbox.
pub const GUEST_AGENT: &str = "/run/sandbox-agent";

impl TestBackend {
    /// A create request whose PID 1 is the agent, on `image_root` (with the
    /// host's /usr bound in when `host_usr` is set).
    pub fn agent_request(&self, image_root: PathBuf, host_usr: bool) -> CreateRequest {
        let mut binds = vec![sandbox_container::Bind {
            source: agent_binary(),
            target: PathBuf::from(GUEST_AGENT),
            read_only: true,
        }];
        if host_usr {
            binds.push(sandbox_container::Bind {
                source: PathBuf::from("/usr"),
                target: PathBuf::from("/usr"),
                read_only: true,
            });
        }
        CreateRequest {
            image_root,
            limits: Limits::default(),
            init: vec![GUEST_AGENT.to_owned()],
            env: Vec::new(),
            hostname: None,
            binds,
            agent: true,
        }
    }
}
