//! Child processes that cannot outlive the test process.
//!
//! Every control-plane process is started by one long-lived supervisor thread with
//! `PR_SET_PDEATHSIG`: the kernel sends it SIGKILL when that thread ends, which happens only
//! when the test process exits, whichever way it exits (a failed assertion, a timeout kill,
//! Ctrl-C). Orderly teardown still goes through [`Component::stop`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

fn supervisor() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SUPERVISOR: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SUPERVISOR.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("controlplane-supervisor".into())
            .spawn(move || {
                // The sender lives in a static, so this loop ends only with the process.
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("cannot start the control-plane supervisor thread");
        Mutex::new(tx)
    })
}

/// Ties the child's life to its parent thread (the supervisor).
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls async-signal-safe
    // functions (prctl, getppid), as `pre_exec` requires.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("parent exited before exec"));
            }
            Ok(())
        });
    }
}

/// One running control-plane process with its log file.
#[derive(Debug)]
pub struct Component {
    pub name: &'static str,
    pub log: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    child: Child,
}

impl Component {
    /// Starts `program args` with stdout and stderr appended to `log`.
    pub(crate) fn start(name: &'static str, program: &Path, args: &[String], log: PathBuf) -> Result<Self> {
        let child = spawn(name, program, args, &log)?;
        Ok(Self {
            name,
            log,
            program: program.to_path_buf(),
            args: args.to_vec(),
            child,
        })
    }

    /// Starts the stopped process again with the same arguments (its log goes on).
    pub(crate) fn start_again(&mut self) -> Result<()> {
        anyhow::ensure!(self.exited().is_some(), "{} is still running", self.name);
        self.child = spawn(self.name, &self.program, &self.args, &self.log)?;
        Ok(())
    }

    /// Kills the process at once, as a crash would (no shutdown of its own).
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `Some(status)` once the process has exited.
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub(crate) fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            send_signal(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

/// Starts `program args` from the supervisor thread, stdout and stderr appended to `log`.
fn spawn(name: &'static str, program: &Path, args: &[String], log: &Path) -> Result<Child> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    die_with_parent(&mut command);
    let (reply_tx, reply_rx) = mpsc::channel();
    supervisor()
        .lock()
        .expect("supervisor lock")
        .send((command, reply_tx))
        .context("the control-plane supervisor thread is gone")?;
    reply_rx
        .recv()
        .context("the control-plane supervisor thread is gone")?
        .with_context(|| format!("starting {name} ({})", program.display()))
}

impl Drop for Component {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Fails, with its log's tail, when one of `components` has exited (`dir` holds the logs).
pub(crate) fn fail_if_any_exited(components: &mut [Component], dir: &Path) -> Result<()> {
    for component in components {
        if let Some(status) = component.exited() {
            anyhow::bail!(
                "{} exited with {status}; logs kept in {}:\n{}",
                component.name,
                dir.display(),
                component.log_tail(40)
            );
        }
    }
    Ok(())
}

#[allow(unsafe_code)]
fn send_signal(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child's.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Whether a process with this pid exists (used to sweep directories of dead runs).
#[allow(unsafe_code)]
pub(crate) fn alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid, 0) == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) }
}
