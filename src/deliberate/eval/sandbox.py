"""Run model-written code in a contained child process (the ``code`` scorer, ``humaneval``).

:func:`run_code` writes the program (the code, then its tests) into a fresh temporary directory
and runs it with ``sys.executable -I -B`` under a small bootstrap (:data:`_BOOTSTRAP`), in a
new session (its process group is killed at the end, and on timeout), with stdin on /dev/null,
stdout and stderr into files (only their tails come back, scrubbed of known secret values) and
an environment of PATH, LANG, and HOME and TMPDIR pointing into the directory: none of the
parent's variables, so no API key.

Where ``unshare --user --map-root-user --net --mount --pid --fork`` works (probed once, see
:func:`isolation_problem`), the child also runs in new namespaces:

- network: a new network namespace with only a loopback that is down: no socket reaches anything,
  127.0.0.1 and the host's other services included; names do not resolve (beyond /etc/hosts);
- processes: a new pid namespace with /proc remounted; the child cannot see or signal anything
  outside it, and everything in it dies with its first process;
- files: every mount is remounted read-only and nodev (the user namespace cannot undo that once
  the seccomp filter below forbids mount calls; /dev/null, zero, full, random and urandom stay
  usable), and the working directory is a fresh 64 MiB tmpfs: nothing outside it can be
  written, not even where the caller's user could write, and no disk device can be opened.

Measured on the development machine (Linux 6.18, util-linux 2.38, running as root):
``unshare -rn true``, ``unshare -n true`` and the full flag set above all work; a run costs
about 70 ms. RLIMIT_NPROC does not bind root (the kernel exempts uid 0, in a user namespace
mapped to root too), which is why the seccomp filter, not the limit, stops new processes.

Always (with or without namespaces), the bootstrap then sets hard resource limits (RLIMIT_CPU
about the timeout, RLIMIT_AS ``memory_bytes``, RLIMIT_FSIZE 16 MiB (a file, stdout and stderr
included), RLIMIT_CORE 0, RLIMIT_NOFILE 256, RLIMIT_NPROC the user's current processes + 32)
and installs a seccomp filter (x86_64 and aarch64) with no_new_privs that refuses: fork, vfork,
clone without CLONE_THREAD (threads still work) and clone3 (so no new process: a fork bomb fails
at its first fork); setrlimit/prlimit64; signals to other processes (kill, tkill, tgkill,
rt_(tg)sigqueueinfo to another pid; pidfd_open and pidfd_send_signal); ptrace and cross-process memory access; mount, unshare, setns, chroot,
pivot_root and the new mount API; io_uring, bpf, userfaultfd and perf_event_open.

What is not contained: reads. The code can read any file the caller's user can read (on this
machine, where the tests run as root in a user namespace mapped to root, that is nearly every
file); with no network and a scrubbed output, it has no way to send what it reads anywhere but
its own stdout and stderr. Where the namespaces are unavailable, :func:`run_code` refuses (status
``refused``) unless ``allow_network=True`` (``--allow-network-code``); then the code has the
network, may write wherever the caller's user may (only HOME and TMPDIR point into its
directory), and may signal the caller's processes; the limits and the seccomp filter still hold.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import scrub

MiB = 1024 * 1024
#: Largest file the code may write; stdout and stderr are files too, so this caps a flood.
FILE_LIMIT_BYTES = 16 * MiB
#: Size of the tmpfs working directory (namespaces only).
WORKDIR_BYTES = 64 * MiB
#: Characters of stdout and stderr kept in the result.
TAIL_CHARS = 2000
NAMESPACE_FLAGS = ["--user", "--map-root-user", "--net", "--mount", "--pid", "--fork", "--kill-child",
                   "--mount-proc"]

# Runs in the child before the program: namespaces' finishing touches, limits, seccomp, then
# the program with runpy. It may only use the standard library. It writes "1" to the ``ready``
# pipe just before the program starts: a child that exits without it is a sandbox error.
_BOOTSTRAP = r'''
# pkgutil now: runpy imports it later, under the memory limit
import ctypes, json, os, pkgutil, platform, re, resource, runpy, struct, sys
cfg = json.loads(sys.argv[1])
work, ready = cfg["work"], cfg["ready"]
libc = ctypes.CDLL(None, use_errno=True)

def fail(what):
    sys.stderr.write("sandbox setup failed: %s: %s\n" % (what, os.strerror(ctypes.get_errno())))
    os._exit(121)

if cfg["namespaces"] and os.getpid() == 1:
    # pid 1 of a namespace ignores its own default signals: run the program in a child of it
    child = os.fork()
    if child:
        os.close(ready)
        _, status = os.waitpid(child, 0)
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))

if cfg["namespaces"]:
    with open(os.path.join(work, "program.py"), "rb") as f:
        source = f.read()
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    if libc.mount(b"tmpfs", work.encode(), b"tmpfs", 2 | 4, b"size=%d,mode=700" % cfg["workdir_bytes"]):
        fail("tmpfs")
    with open(os.path.join(work, "program.py"), "wb") as f:
        f.write(source)
    # the usual device nodes stay usable through bind mounts of their own; every other mount
    # loses its devices (nodev), so no disk or other device node can be opened
    devices = [b"/dev/null", b"/dev/zero", b"/dev/full", b"/dev/random", b"/dev/urandom"]
    for node in devices:
        libc.mount(node, node, None, 4096, None)
    flags = {"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048,
             "relatime": 1 << 21, "strictatime": 1 << 24}
    with open("/proc/self/mountinfo", "rb") as f:
        mounts = [line.split() for line in f]
    for fields in reversed(mounts):
        point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), fields[4])
        if point == os.fsencode(work):
            continue
        keep = sum(flags.get(o, 0) for o in set(fields[5].decode().split(",")))
        keep |= 0 if point in devices else 4
        # MS_BIND | MS_REMOUNT | MS_RDONLY; a mount hidden under another one fails, harmlessly
        if libc.mount(None, point, None, 4096 | 32 | 1 | keep, None) and ctypes.get_errno() not in (2, 13, 22):
            fail("read-only remount of %r" % point)

os.chdir(work)
for name, value in cfg["limits"].items():
    resource.setrlimit(getattr(resource, name), tuple(value))

arch = platform.machine()
NR = {"x86_64": dict(arch=0xC000003E, clone=56, clone3=435, kill=(62, 200, 234, 129, 297), deny=(424, 434, 438,
          57, 58, 160, 302, 101, 310, 311, 165, 166, 155, 161, 272, 308, 428, 429, 430, 431, 432, 433,
          442, 425, 426, 427, 321, 323, 298)),
      "aarch64": dict(arch=0xC00000B7, clone=220, clone3=435, kill=(129, 130, 131, 138, 240), deny=(424, 434, 438,
          164, 261, 117, 270, 271, 40, 39, 41, 51, 97, 268, 428, 429, 430, 431, 432, 433,
          442, 425, 426, 427, 280, 282, 241))}.get(arch)
if NR is None:
    sys.stderr.write("sandbox setup failed: no seccomp filter for %s\n" % arch)
    os._exit(121)
LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
ALLOW, EPERM, ENOSYS = 0x7FFF0000, 0x50000 | 1, 0x50000 | 38
prog = [(LD, 0, 0, 4), (JEQ, 1, 0, NR["arch"]), (RET, 0, 0, 0x80000000), (LD, 0, 0, 0)]
if arch == "x86_64":  # the x32 ABI numbers would slip past the list below
    prog += [(JGE, 0, 1, 0x40000000), (RET, 0, 0, EPERM)]
prog += [(JEQ, 0, 1, NR["clone3"]), (RET, 0, 0, ENOSYS)]  # glibc falls back to clone
for nr in NR["deny"]:
    prog += [(JEQ, 0, 1, nr), (RET, 0, 0, EPERM)]
prog += [(JEQ, 0, 3, NR["clone"]), (LD, 0, 0, 16), (JSET, 1, 0, 0x10000), (RET, 0, 0, EPERM)]
prog += [(LD, 0, 0, 0)]
for nr in NR["kill"]:  # signals only to itself (pid or own group 0)
    prog += [(JEQ, 0, 5, nr), (LD, 0, 0, 16), (JEQ, 2, 0, os.getpid()), (JEQ, 1, 0, 0), (RET, 0, 0, EPERM),
             (RET, 0, 0, ALLOW)]
prog += [(RET, 0, 0, ALLOW)]
blob = b"".join(struct.pack("HBBI", *ins) for ins in prog)
buf = ctypes.create_string_buffer(blob)
fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
fbuf = ctypes.create_string_buffer(fprog)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.addressof(fbuf), 0, 0):
    fail("seccomp")
os.write(ready, b"1")
os.close(ready)
del cfg, libc, buf, fbuf, blob, prog, NR
sys.argv = [os.path.join(work, "program.py")]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


@dataclass(frozen=True)
class SandboxResult:
    """How a program fared: ``status`` is "passed", "failed" (an exception, an assertion, a
    limit hit), "timeout" (wall clock or CPU time), "error" (the sandbox itself could not run
    it) or "refused" (no isolation here and network not allowed); ``reason`` is one line."""

    passed: bool
    status: str
    reason: str
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0


@functools.cache
def isolation_problem() -> str | None:
    """None when the namespaces work on this machine, else one line saying why not (probed once)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "the unshare command is not installed"
    try:
        done = subprocess.run([unshare, *NAMESPACE_FLAGS, "--", "true"], capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=10, env={"PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        return f"unshare failed: {detail[-1] if detail else f'exit {done.returncode}'}"
    return None


def _user_processes() -> int:
    """Processes (and threads) of this user now, the base of RLIMIT_NPROC."""
    uid = os.getuid()
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == uid
            except OSError:
                continue
    return count


def _limits(timeout_s: float, memory_bytes: int) -> dict[str, tuple[int, int]]:
    cpu = max(1, math.ceil(timeout_s))
    return {
        "RLIMIT_CPU": (cpu, cpu + 1),
        "RLIMIT_AS": (memory_bytes, memory_bytes),
        "RLIMIT_FSIZE": (FILE_LIMIT_BYTES, FILE_LIMIT_BYTES),
        "RLIMIT_CORE": (0, 0),
        "RLIMIT_NOFILE": (256, 256),
        "RLIMIT_NPROC": (_user_processes() + 32,) * 2,
    }


def _tail(path: Path) -> str:
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 4 * TAIL_CHARS))
        text = f.read().decode(errors="replace")
    return scrub(text[-TAIL_CHARS:])


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _verdict(code: int, stderr: str, timed_out: bool) -> tuple[str, str]:
    """(status, reason) of a finished program from its exit status and stderr."""
    if timed_out:
        return "timeout", "wall-clock time limit exceeded"
    if code == 0:
        return "passed", "all tests passed"
    signum = -code if code < 0 else code - 128 if code > 128 else 0
    if signum == signal.SIGXCPU:
        return "timeout", "CPU time limit exceeded"
    if signum:
        try:
            return "failed", f"killed by {signal.Signals(signum).name}"
        except ValueError:
            return "failed", f"killed by signal {signum}"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return "failed", (lines[-1][:200] if lines else f"exit status {code}")


def run_code(
    source: str,
    *,
    tests: str = "",
    timeout_s: float = 10,
    memory_bytes: int = 512 * MiB,
    allow_network: bool = False,
) -> SandboxResult:
    """Run ``source`` followed by ``tests`` (e.g. HumanEval's test code and ``check(entry)``) as
    one program in the sandbox; passed when it exits 0 within ``timeout_s``. Never raises for
    anything the program does. ``allow_network`` only matters where the namespaces are
    unavailable: it runs the code there anyway, with the network (``--allow-network-code``)."""
    problem = isolation_problem()
    if problem and not allow_network:
        return SandboxResult(False, "refused", f"no network isolation on this machine ({problem}); "
                             "pass --allow-network-code to run model-written code anyway")
    start = time.monotonic()
    outer = Path(tempfile.mkdtemp(prefix="deliberate-sandbox-"))
    try:
        work = outer / "work"
        work.mkdir(mode=0o700)
        (work / "program.py").write_text(f"{source}\n\n{tests}\n" if tests else source, encoding="utf-8")
        read_ready, write_ready = os.pipe()
        config = {"work": str(work), "ready": write_ready, "namespaces": problem is None,
                  "workdir_bytes": WORKDIR_BYTES, "limits": _limits(timeout_s, memory_bytes)}
        command = [sys.executable, "-I", "-B", "-c", _BOOTSTRAP, json.dumps(config)]
        if problem is None:
            command = [shutil.which("unshare") or "unshare", *NAMESPACE_FLAGS, "--", *command]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
               "LC_ALL": "C.UTF-8"}
        with (outer / "stdout").open("wb") as out, (outer / "stderr").open("wb") as err:
            try:
                child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                         cwd=work, start_new_session=True, pass_fds=(write_ready,))
            except OSError as exc:
                return SandboxResult(False, "error", f"could not start the sandbox: {exc}")
            finally:
                os.close(write_ready)
            timed_out = False
            try:
                child.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(child.pid)  # the program, and anything it left behind in its group
                child.wait()
        with os.fdopen(read_ready, "rb") as ready:
            was_ready = ready.read() == b"1"
        stdout, stderr = _tail(outer / "stdout"), _tail(outer / "stderr")
        status, reason = _verdict(child.returncode, stderr, timed_out)
        if not was_ready and not timed_out:
            status, reason = "error", _verdict(1, stderr, False)[1]
        return SandboxResult(status == "passed", status, reason, stdout, stderr, time.monotonic() - start)
    finally:
        shutil.rmtree(outer, ignore_errors=True)
