//! Supervision of the appliance process: start, restart with backoff, crash-loop detection,
//! signal forwarding and a graceful stop.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// First restart delay; doubles per consecutive failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest regular restart delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run this long counts as healthy and resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// This many exits within `CRASH_WINDOW` is a crash loop.
const CRASH_LIMIT: usize = 5;
/// Window for crash-loop detection.
const CRASH_WINDOW: Duration = Duration::from_secs(120);
/// Delay between tries while crash-looping.
const CRASH_LOOP_BACKOFF: Duration = Duration::from_secs(60);
/// File descriptor number the child finds its control socket on.
pub const CHILD_CONTROL_FD: RawFd = 3;
/// The appliance's open-file limit (soft and hard): its connections, database, models and
/// agents, with room to spare over its own connection cap.
pub const APPLIANCE_OPEN_FILES: libc::rlim_t = 65536;

/// Restart bookkeeping, separate from process handling so it can be tested.
#[derive(Debug)]
pub struct RestartPolicy {
    backoff: Duration,
    exits: VecDeque<Instant>,
    /// Restarts so far.
    pub restarts: u32,
    /// Exits are coming too fast.
    pub crash_loop: bool,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            backoff: FIRST_BACKOFF,
            exits: VecDeque::new(),
            restarts: 0,
            crash_loop: false,
        }
    }
}

impl RestartPolicy {
    /// Records an exit after a run of `ran`; returns how long to wait before restarting.
    pub fn on_exit(&mut self, now: Instant, ran: Duration) -> Duration {
        if ran >= HEALTHY_RUN {
            self.backoff = FIRST_BACKOFF;
            self.crash_loop = false;
        }
        self.exits.push_back(now);
        while self
            .exits
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            self.exits.pop_front();
        }
        self.restarts = self.restarts.saturating_add(1);
        if self.exits.len() >= CRASH_LIMIT {
            self.crash_loop = true;
        }
        let wait = if self.crash_loop {
            CRASH_LOOP_BACKOFF
        } else {
            self.backoff
        };
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        wait
    }
}

/// The supervised appliance.
pub struct Supervisor {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pid: Option<libc::pid_t>,
    started: Instant,
    next_start: Option<Instant>,
    control: Option<OwnedFd>,
    stopping: bool,
    /// Restart policy state.
    pub policy: RestartPolicy,
    /// The user and group the appliance runs as (`None`: init's own, root).
    user: Option<(u32, u32)>,
}

impl Supervisor {
    /// A supervisor for `program args...` with extra environment.
    pub fn new(program: &str, args: Vec<String>, env: Vec<(String, String)>) -> Supervisor {
        Supervisor {
            program: program.to_string(),
            args,
            env,
            pid: None,
            started: Instant::now(),
            next_start: Some(Instant::now()),
            control: None,
            stopping: false,
            policy: RestartPolicy::default(),
            user: None,
        }
    }

    /// Runs the appliance as `uid:gid` with no supplementary groups.
    pub fn run_as(mut self, uid: u32, gid: u32) -> Supervisor {
        self.user = Some((uid, gid));
        self
    }

    /// Process id of the running appliance.
    pub fn pid(&self) -> Option<libc::pid_t> {
        self.pid
    }

    /// Init's end of the control socket of the running appliance.
    pub fn control_fd(&self) -> Option<RawFd> {
        self.control.as_ref().map(|f| f.as_raw_fd())
    }

    /// Drops the control socket after the peer closed it.
    pub fn close_control(&mut self) {
        self.control = None;
    }

    fn spawn(&mut self) -> Result<(), String> {
        let (ours, theirs) =
            crate::sys::seqpacket_pair().map_err(|e| format!("control socket: {e}"))?;
        let child_fd = theirs.as_raw_fd();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .env("PATH", "/bin")
            .env(crate::layout::CONTROL_FD_ENV, CHILD_CONTROL_FD.to_string())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        let user = self.user;
        // SAFETY: the closure only makes async-signal-safe calls (dup2, fcntl, sigprocmask,
        // setsid, setrlimit, prctl, and the raw setgroups/setgid/setuid system calls) between
        // fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Room for the appliance's connections (it caps them itself, docs/init.md).
                // Raised while still root: the hard limit cannot be raised afterwards.
                let files = libc::rlimit {
                    rlim_cur: APPLIANCE_OPEN_FILES,
                    rlim_max: APPLIANCE_OPEN_FILES,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &files);
                // The appliance's own user. Raw system calls: the child has one thread, and
                // the C library's wrappers would signal threads that only the parent has.
                if let Some((uid, gid)) = user {
                    let null: *const libc::gid_t = std::ptr::null();
                    if libc::syscall(libc::SYS_setgroups, 0, null) != 0
                        || libc::syscall(libc::SYS_setgid, gid) != 0
                        || libc::syscall(libc::SYS_setuid, uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Nothing the appliance executes gains privileges (it confines itself further).
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if child_fd == CHILD_CONTROL_FD {
                    libc::fcntl(child_fd, libc::F_SETFD, 0);
                } else if libc::dup2(child_fd, CHILD_CONTROL_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                crate::sys::unblock_all_signals();
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.program))?;
        drop(theirs);
        self.pid = Some(child.id() as libc::pid_t);
        self.control = Some(ours);
        self.started = Instant::now();
        info!("appliance started (pid {})", child.id());
        Ok(())
    }

    /// Starts the appliance if a start is due.
    pub fn tick(&mut self, now: Instant) {
        if self.stopping || self.pid.is_some() {
            return;
        }
        if self.next_start.is_some_and(|t| t <= now) {
            self.next_start = None;
            if let Err(e) = self.spawn() {
                error!("{e}");
                let wait = self.policy.on_exit(now, Duration::ZERO);
                self.next_start = Some(now + wait);
            }
        }
    }

    /// How long until the next scheduled start.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.next_start.map(|t| t.saturating_duration_since(now))
    }

    /// Handles a reaped child; returns true if it was the appliance.
    pub fn child_exited(&mut self, pid: libc::pid_t, status: libc::c_int, now: Instant) -> bool {
        if self.pid != Some(pid) {
            return false;
        }
        self.pid = None;
        self.control = None;
        if self.stopping {
            return true;
        }
        let how = if libc::WIFSIGNALED(status) {
            format!("killed by signal {}", libc::WTERMSIG(status))
        } else {
            format!("exited with status {}", libc::WEXITSTATUS(status))
        };
        let ran = now.duration_since(self.started);
        let wait = self.policy.on_exit(now, ran);
        if self.policy.crash_loop {
            error!(
                "appliance {how} after {} ms; crash loop ({} restarts): next try in {} s. \
                 The console shows its last messages above.",
                ran.as_millis(),
                self.policy.restarts,
                wait.as_secs()
            );
        } else {
            warn!(
                "appliance {how} after {} ms; restarting in {} ms",
                ran.as_millis(),
                wait.as_millis()
            );
        }
        self.next_start = Some(now + wait);
        true
    }

    /// Forwards a signal to the appliance.
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid {
            let _ = crate::sys::kill(pid, sig);
        }
    }

    /// Stops the appliance: SIGTERM, up to `grace` to exit, then SIGKILL. Reaps any child.
    pub fn stop(&mut self, grace: Duration) {
        self.stopping = true;
        self.next_start = None;
        let Some(pid) = self.pid else {
            return;
        };
        let _ = crate::sys::kill(pid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            while let Some((p, _)) = crate::sys::reap_one() {
                if p == pid {
                    self.pid = None;
                    info!("appliance stopped");
                    return;
                }
            }
            crate::sys::sleep(Duration::from_millis(20));
        }
        warn!(
            "appliance did not stop within {} s; killing it",
            grace.as_secs()
        );
        let _ = crate::sys::kill(pid, libc::SIGKILL);
        for _ in 0..100 {
            if crate::sys::reap_one().is_some_and(|(p, _)| p == pid) {
                break;
            }
            crate::sys::sleep(Duration::from_millis(10));
        }
        self.pid = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        let mut p = RestartPolicy::default();
        let t0 = Instant::now();
        let mut waits = Vec::new();
        for i in 0..4u64 {
            waits.push(p.on_exit(t0 + Duration::from_secs(40 * i), Duration::from_secs(1)));
        }
        assert_eq!(waits[0], FIRST_BACKOFF);
        assert_eq!(waits[1], FIRST_BACKOFF * 2);
        assert_eq!(waits[2], FIRST_BACKOFF * 4);
        assert!(!p.crash_loop, "exits 40 s apart are not a loop");
        assert_eq!(p.restarts, 4);
    }

    #[test]
    fn fast_exits_are_a_crash_loop_and_a_healthy_run_clears_it() {
        let mut p = RestartPolicy::default();
        let t0 = Instant::now();
        let mut last = Duration::ZERO;
        for i in 0..CRASH_LIMIT as u64 {
            last = p.on_exit(t0 + Duration::from_secs(i), Duration::from_millis(100));
        }
        assert!(p.crash_loop);
        assert_eq!(last, CRASH_LOOP_BACKOFF);
        let w = p.on_exit(t0 + Duration::from_secs(600), HEALTHY_RUN);
        assert!(!p.crash_loop);
        assert_eq!(w, FIRST_BACKOFF);
    }

    #[test]
    fn restarts_a_process_that_dies() {
        // Runs on the host: supervise `sh -c 'exit 3'` and see the restart scheduled.
        let mut s = Supervisor::new("/bin/sh", vec!["-c".into(), "exit 3".into()], vec![]);
        s.tick(Instant::now());
        let pid = s.pid().expect("started");
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        let now = Instant::now();
        assert!(s.child_exited(pid, status, now));
        assert!(s.pid().is_none());
        assert_eq!(s.policy.restarts, 1);
        assert!(s.timeout(now).is_some_and(|d| d <= FIRST_BACKOFF));
        assert!(!s.child_exited(pid + 1_000_000, 0, now), "not ours");
    }
}
