//! What the soak runs and breaks: `clover` servers as child processes on fixed ports (so that a
//! restarted one is found where it was), a PostgreSQL cluster of the soak's own, and a small
//! filesystem (tmpfs) for the SQLite gateway's data directory.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a server may take to say where it serves.
const START_PATIENCE: Duration = Duration::from_secs(90);
/// Lines of a server's stderr kept for the report of a failure.
const TAIL_LINES: usize = 40;

/// A free port on loopback, chosen by the kernel (let go at once: the server binds it itself).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("choosing a port")?;
    Ok(listener.local_addr()?.port())
}

/// Runs `command` to completion; its standard output, or an error with its standard error.
pub(crate) fn output_of(mut command: Command) -> anyhow::Result<String> {
    let output = command.stdin(Stdio::null()).output().with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A `clover` server (a gateway or the custodian) run by the soak: started, killed with
/// SIGKILL, started again on the same port and directory.
pub(crate) struct Server {
    /// Its name in the report (`pg-a`, `custodian`, ...).
    pub(crate) name: String,
    /// Its base URL (`http://127.0.0.1:PORT`).
    pub(crate) url: String,
    command: Box<dyn Fn() -> Command + Send>,
    /// Where its stderr goes too, across restarts.
    log: PathBuf,
    child: Option<Child>,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// How many times it was started.
    pub(crate) starts: u32,
}

impl Server {
    /// A server made by `command` (which must make it listen on `port`), not started yet; its
    /// stderr is appended to `log`.
    pub(crate) fn new(name: &str, port: u16, log: PathBuf, command: impl Fn() -> Command + Send + 'static) -> Self {
        Self {
            name: name.to_owned(),
            url: format!("http://127.0.0.1:{port}"),
            command: Box::new(command),
            log,
            child: None,
            tail: Arc::new(Mutex::new(VecDeque::new())),
            starts: 0,
        }
    }

    /// Starts it and waits for the line in which it says where it serves.
    pub(crate) fn start(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "{} is already running", self.name);
        let mut command = (self.command)();
        // A process group of its own: a Ctrl-C at the terminal stops the soak (which then
        // checks and cleans up), not the servers under it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, rx) = mpsc::channel();
        let tail = Arc::clone(&self.tail);
        let url = self.url.clone();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {:?}", self.log))?;
        std::thread::spawn(move || {
            let mut said = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if !said && line.starts_with("clover: ") && line.contains(&format!(" on {url}")) {
                    said = true;
                    let _ = tx.send(());
                }
                let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        self.child = Some(child);
        self.starts += 1;
        match rx.recv_timeout(START_PATIENCE) {
            Ok(()) => Ok(()),
            Err(_) => {
                let status = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                self.kill();
                bail!("{} did not serve on {} ({status:?}); its last words:\n{}", self.name, self.url, self.tail())
            }
        }
    }

    /// SIGKILL, and waits until it is gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and waits (at most 30 s, then SIGKILL).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its process id while it runs (and has not exited by itself).
    pub(crate) fn pid(&mut self) -> Option<u32> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            _ => None,
        }
    }

    /// Its resident memory in KiB.
    pub(crate) fn rss_kib(&mut self) -> Option<u64> {
        clover_bench::http::baseline::resident_bytes(self.pid()?).map(|bytes| bytes / 1024)
    }

    /// The last lines of its stderr.
    pub(crate) fn tail(&self) -> String {
        self.tail.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PostgreSQL cluster of the soak's own (initdb in its directory, on a port of its own), so
/// that restarting it touches no one else's database. Run as the `postgres` user when the soak
/// runs as root (PostgreSQL refuses to run as root).
pub(crate) struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
}

impl Postgres {
    /// Makes the cluster in `dir` (which must not exist) and starts it.
    pub(crate) fn create(bin: Option<PathBuf>, dir: &Path) -> anyhow::Result<Self> {
        let bin = match bin {
            Some(bin) => bin,
            None => find_pg_bin()?,
        };
        let as_postgres = is_root();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {dir:?}"))?;
        if as_postgres {
            output_of({
                let mut c = Command::new("chown");
                c.args(["postgres:postgres"]).arg(dir);
                c
            })
            .context("giving the cluster's directory to the postgres user")?;
        }
        let mut pg = Self { bin, dir: dir.to_owned(), port: free_port()?, as_postgres, running: false };
        let mut initdb = pg.program("initdb");
        initdb.args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-instructions", "-D"]).arg(&pg.dir);
        output_of(initdb).context("initdb")?;
        pg.start()?;
        Ok(pg)
    }

    fn program(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        };
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        command
    }

    /// Its URL.
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts it and waits until it accepts connections.
    pub(crate) fn start(&mut self) -> anyhow::Result<()> {
        let mut start = self.program("pg_ctl");
        let options =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200", self.port, self.dir.display());
        start.args(["-w", "-t", "60", "-l"]).arg(self.dir.join("server.log")).arg("-D").arg(&self.dir);
        start.args(["-o", &options, "start"]);
        output_of(start).context("starting PostgreSQL")?;
        self.running = true;
        Ok(())
    }

    /// Stops it at once, as a crash would (`pg_ctl stop -m immediate`: no checkpoint, recovery
    /// from the write-ahead log at the next start).
    pub(crate) fn crash(&mut self) -> anyhow::Result<()> {
        let mut stop = self.program("pg_ctl");
        stop.args(["-w", "-m", "immediate", "-D"]).arg(&self.dir).arg("stop");
        output_of(stop).context("stopping PostgreSQL")?;
        self.running = false;
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let mut stop = self.program("pg_ctl");
            stop.args(["-w", "-m", "fast", "-D"])
                .arg(&self.dir)
                .arg("stop")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = stop.status();
        }
    }
}

fn is_root() -> bool {
    let mut id = Command::new("id");
    id.arg("-u");
    output_of(id).is_ok_and(|uid| uid == "0")
}

/// The newest `/usr/lib/postgresql/N/bin` with `initdb` in it.
fn find_pg_bin() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no --pg-bin, and no /usr/lib/postgresql to find PostgreSQL's programs in")?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .context("no PostgreSQL server programs (initdb) under /usr/lib/postgresql; pass --pg-bin")
}

/// A small filesystem of its own (tmpfs) for the SQLite gateway's data directory, which the
/// soak can fill to the last byte and empty again. Unmounted when dropped.
pub(crate) struct SmallDisk {
    /// Where it is mounted.
    pub(crate) path: PathBuf,
    mounted: bool,
}

/// The file that fills the disk.
const FILLER: &str = "soak-filler";

impl SmallDisk {
    /// Mounts a tmpfs of `mib` MiB at `path` (created).
    pub(crate) fn mount(path: &Path, mib: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {path:?}"))?;
        let mut mount = Command::new("mount");
        mount.args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"]).arg(path);
        output_of(mount).context("mounting a tmpfs for the SQLite gateway (the soak needs root for it)")?;
        Ok(Self { path: path.to_owned(), mounted: true })
    }

    /// Writes a file until the filesystem is full; returns the bytes written.
    pub(crate) fn fill(&self) -> anyhow::Result<u64> {
        let mut file = std::fs::File::create(self.path.join(FILLER)).context("creating the filler")?;
        let block = vec![0u8; 1 << 16];
        let mut written = 0u64;
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => return Err(e).context("filling the disk"),
            }
        }
        // The last bytes a partial block could still take.
        for _ in 0..4096 {
            if file.write(&[0u8; 16]).map_or(true, |n| n == 0) {
                break;
            }
            written += 16;
        }
        Ok(written)
    }

    /// Removes the filler.
    pub(crate) fn empty(&self) -> anyhow::Result<()> {
        std::fs::remove_file(self.path.join(FILLER)).context("removing the filler")
    }

    /// Bytes used on it.
    pub(crate) fn used_bytes(&self) -> u64 {
        output_of({
            let mut df = Command::new("df");
            df.args(["--output=used", "-B1"]).arg(&self.path);
            df
        })
        .ok()
        .and_then(|out| out.lines().last().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}
