//! The automatic engine falls back to positioned writes where io_uring is
//! forbidden, and a forced io_uring says so. io_uring is forbidden for real,
//! per process: the restore runs in a child under a seccomp filter that
//! answers EPERM to the io_uring system calls (as a container runtime's
//! profile or `kernel.io_uring_disabled` would).

use rackcast_writer::EngineChoice;

use crate::child::{wait, ChildOutcome, ChildRestore};
use crate::common::*;

/// `io_uring_setup`, `io_uring_enter`, `io_uring_register` on x86_64.
const IO_URING_SETUP: u32 = 425;
const IO_URING_ENTER: u32 = 426;
const IO_URING_REGISTER: u32 = 427;

#[test]
fn auto_engine_falls_back_to_sync_when_seccomp_forbids_io_uring() {
    let f = Fixture::new(4 << 20, 256 * 1024, 91);
    let dest = f.path("dest");
    let run = ChildRestore::new(&f, &dest, EngineChoice::Auto);
    let Some(out) = run_forbidding(&run, IO_URING_SETUP, IO_URING_REGISTER) else {
        return;
    };
    assert!(out.status.success(), "restore under the filter: {out:#?}");
    assert_eq!(out.field("engine"), "sync pwrite");
    assert_eq!(
        out.field("engine_fallback"),
        "io_uring setup failed: EPERM (Operation not permitted)"
    );
    assert_same(
        &std::fs::read(&dest).expect("read"),
        &f.src,
        "fallback restore",
    );
}

#[test]
fn forced_io_uring_fails_naming_io_uring_when_seccomp_forbids_it() {
    let f = Fixture::new(1 << 20, 256 * 1024, 92);
    let dest = f.path("dest");
    let run = ChildRestore::new(&f, &dest, EngineChoice::Uring);
    let Some(out) = run_forbidding(&run, IO_URING_SETUP, IO_URING_REGISTER) else {
        return;
    };
    assert_eq!(out.status.code(), Some(1), "{out:#?}");
    let err = out.error.as_deref().expect("the child names its error");
    assert!(
        err.starts_with("io_uring setup failed for ") && err.contains("Operation not permitted"),
        "error: {err}"
    );
    assert!(
        err.contains(dest.to_str().expect("utf-8 path")),
        "error: {err}"
    );
}

/// A filter may let a ring be created but not used: the probe request at
/// setup catches that, before any chunk's write depends on the ring.
#[test]
fn auto_engine_falls_back_when_only_io_uring_enter_is_forbidden() {
    let f = Fixture::new(2 << 20, 256 * 1024, 93);
    let dest = f.path("dest");
    let run = ChildRestore::new(&f, &dest, EngineChoice::Auto);
    let Some(out) = run_forbidding(&run, IO_URING_ENTER, IO_URING_ENTER) else {
        return;
    };
    assert!(out.status.success(), "restore under the filter: {out:#?}");
    assert_eq!(out.field("engine"), "sync pwrite");
    assert_eq!(
        out.field("engine_fallback"),
        "io_uring probe request failed: EPERM (Operation not permitted)"
    );
    assert_same(
        &std::fs::read(&dest).expect("read"),
        &f.src,
        "fallback restore",
    );
}

/// Runs `run` in a child whose system calls `first..=last` fail with EPERM;
/// `None` (with the reason printed) where such a filter cannot be had.
#[cfg(target_arch = "x86_64")]
fn run_forbidding(run: &ChildRestore, first: u32, last: u32) -> Option<ChildOutcome> {
    use std::os::unix::process::CommandExt;

    let program = seccomp::errno_for_range(first, last, libc::EPERM as u32);
    let mut cmd = run.command();
    // SAFETY: the hook runs in the forked child before exec and only makes
    // two prctl calls on memory (`program`) that the fork copied; it
    // allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || seccomp::install(&program));
    }
    match cmd.spawn() {
        Ok(child) => Some(wait(child)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            eprintln!("skipping seccomp test: this kernel has no seccomp filters ({e})");
            None
        }
        Err(e) => panic!("spawning the confined restore: {e}"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn run_forbidding(_: &ChildRestore, _: u32, _: u32) -> Option<ChildOutcome> {
    eprintln!("skipping seccomp test: the filter is written for x86_64 system call numbers");
    None
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod seccomp {
    use std::io;

    /// `AUDIT_ARCH_X86_64`: EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    /// Offsets in `struct seccomp_data`.
    const NR: u32 = 0;
    const ARCH: u32 = 4;

    /// A classic BPF program for seccomp: system calls `first..=last` of
    /// x86_64 return `errno`, everything else is allowed.
    pub fn errno_for_range(first: u32, last: u32, errno: u32) -> Vec<libc::sock_filter> {
        let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        };
        let (ld, jeq, jge, jgt, ret) = (
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
            libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K,
            libc::BPF_RET | libc::BPF_K,
        );
        vec![
            op(ld, 0, 0, ARCH),
            op(jeq, 0, 4, AUDIT_ARCH_X86_64), // another ABI: allow
            op(ld, 0, 0, NR),
            op(jge, 0, 2, first), // below the range: allow
            op(jgt, 1, 0, last),  // above the range: allow
            op(ret, 0, 0, libc::SECCOMP_RET_ERRNO | (errno & 0xffff)),
            op(ret, 0, 0, libc::SECCOMP_RET_ALLOW),
        ]
    }

    /// Sets no_new_privs and installs `program` on the calling thread (in a
    /// `pre_exec` hook: the child's only thread, and what it execs).
    pub fn install(program: &[libc::sock_filter]) -> io::Result<()> {
        let prog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_ptr().cast_mut(),
        };
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `prog` points at `program.len()` valid filter instructions
        // that outlive the call; the kernel copies them.
        let r = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
