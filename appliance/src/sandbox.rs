//! The service's own confinement, set up at start before any thread exists: the open-file limit
//! raised to what the system allows, and (in the image) `PR_SET_NO_NEW_PRIVS` plus a seccomp
//! filter refusing, with `EPERM`, the system calls the service never makes.
//!
//! The filter is a deny list (everything else is allowed) so that no legitimate path of the
//! service, its agent runtime or its inference back ends can break. The calls it refuses belong
//! to init (mounts, swap, power: `reboot` goes through init's control socket; the clock and
//! the host name are set by init too) or to no one here (kernel modules and kexec, tracing,
//! BPF, perf, keyrings, userfaultfd, file handles, io_uring, namespaces, chroot, `personality`).
//! System calls of another ABI (i386, x32) are refused as a whole.

/// Raises the soft open-file limit to the hard limit; returns the new soft limit.
pub fn raise_open_files() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

#[cfg(target_os = "linux")]
pub use linux::{confine, filter, install};

#[cfg(target_os = "linux")]
mod linux {
    /// The system calls the filter refuses, by this architecture's numbers.
    #[cfg(target_arch = "x86_64")]
    const ARCH_ONLY: &[libc::c_long] = &[
        libc::SYS_kexec_file_load,
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_uselib,
    ];
    /// The system calls the filter refuses, by this architecture's numbers (musl's `libc` lacks
    /// `SYS_kexec_file_load` on aarch64: it is 294 in the kernel's generic table).
    #[cfg(target_arch = "aarch64")]
    const ARCH_ONLY: &[libc::c_long] = &[294];

    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xC000_00B7;

    const DENIED: &[libc::c_long] = &[
        libc::SYS_kexec_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_reboot,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_userfaultfd,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_personality,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_quotactl_fd,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
        libc::SYS_chroot,
        libc::SYS_setns,
        libc::SYS_unshare,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_syslog,
        libc::SYS_vhangup,
        libc::SYS_lookup_dcookie,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ];

    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
    const SECCOMP_FILTER_FLAG_TSYNC: libc::c_ulong = 1;
    /// `seccomp_data.nr` and `seccomp_data.arch`.
    const OFFSET_NR: u32 = 0;
    const OFFSET_ARCH: u32 = 4;
    /// x32 system calls have this bit set on x86_64.
    #[cfg(target_arch = "x86_64")]
    const X32_BIT: u32 = 0x4000_0000;

    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    #[cfg(target_arch = "x86_64")]
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;

    fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
        libc::sock_filter { code, jt, jf, k }
    }

    /// The filter program: foreign ABIs and the denied calls get `EPERM`, the rest runs.
    pub fn filter() -> Vec<libc::sock_filter> {
        let deny = SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let calls: Vec<u32> = DENIED.iter().chain(ARCH_ONLY).map(|&n| n as u32).collect();
        let mut p = vec![
            op(LD_W_ABS, 0, 0, OFFSET_ARCH),
            op(JEQ_K, 1, 0, AUDIT_ARCH),
            op(RET_K, 0, 0, deny),
            op(LD_W_ABS, 0, 0, OFFSET_NR),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            p.push(op(JGE_K, 0, 1, X32_BIT));
            p.push(op(RET_K, 0, 0, deny));
        }
        // Each comparison jumps to the final "deny" on a match; the one before it allows.
        let n = calls.len();
        for (i, nr) in calls.into_iter().enumerate() {
            let to_deny = (n - i) as u8;
            p.push(op(JEQ_K, to_deny, 0, nr));
        }
        p.push(op(RET_K, 0, 0, SECCOMP_RET_ALLOW));
        p.push(op(RET_K, 0, 0, deny));
        p
    }

    /// Sets `PR_SET_NO_NEW_PRIVS` and installs [`filter`] on every thread of the process.
    pub fn confine() -> std::io::Result<()> {
        install(&filter())
    }

    /// Sets `PR_SET_NO_NEW_PRIVS` and installs `prog` on every thread of the process (no
    /// allocation: callable in a forked child).
    pub fn install(prog: &[libc::sock_filter]) -> std::io::Result<()> {
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel copies the program `fprog` points to (alive for this call).
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                SECCOMP_FILTER_FLAG_TSYNC,
                &fprog as *const libc::sock_fprog,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// In a forked child: confine, then report how a denied and an allowed call fare.
    #[test]
    fn the_filter_refuses_denied_calls_and_allows_the_rest() {
        // The program is built before the fork so the child only makes system calls.
        let prog = filter();
        // SAFETY: the child makes only system calls (no allocation) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let code = (|| {
                if install(&prog).is_err() {
                    return 10;
                }
                // SAFETY: prctl/syscall with integer arguments only.
                unsafe {
                    if libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1 {
                        return 11;
                    }
                    // personality(0xffffffff) only reads the persona: it succeeds unless denied.
                    let r = libc::syscall(libc::SYS_personality, 0xffff_ffffu32 as libc::c_long);
                    if r != -1 || *libc::__errno_location() != libc::EPERM {
                        return 12;
                    }
                    if libc::syscall(libc::SYS_getpid) != libc::getpid() as libc::c_long {
                        return 13;
                    }
                    #[cfg(target_arch = "x86_64")]
                    {
                        let r = libc::syscall(libc::SYS_getpid | 0x4000_0000);
                        if r != -1 || *libc::__errno_location() != libc::EPERM {
                            return 14;
                        }
                    }
                }
                0
            })();
            // SAFETY: leaves the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        assert!(libc::WIFEXITED(status), "child status {status}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "child check failed");
        // Unconfined, the same call succeeds: the refusal above is the filter's.
        // SAFETY: syscall with an integer argument.
        let r = unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffffu32 as libc::c_long) };
        assert!(r >= 0);
    }

    #[test]
    fn the_open_file_limit_reaches_the_hard_limit() {
        let soft = raise_open_files().unwrap();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(lim.rlim_cur, soft);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
    }
}
