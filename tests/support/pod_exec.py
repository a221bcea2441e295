"""Start one container process for the node agent (support/node_agent.py): `python -I -S pod_exec.py SPEC.json`.

Standard library only and no imports beyond it, so it starts in milliseconds. In order, it joins the
container's memory cgroup (when it has a memory limit), the Pod's network namespace (setns), enters a private mount namespace of its own (unshare) and bind-mounts the
container's volumes and termination-message file at their paths, makes `/` read-only when the container
asks for readOnlyRootFilesystem, drops capabilities and sets no_new_privs as the securityContext asks,
changes to the working folder and finally replaces itself with the container's command (execve), which
keeps this process's pid. Mount points are created by the node agent beforehand.

When something fails before the command runs, it writes one line to SPEC's `error_file` and exits 128,
which the node agent reports as the runtime's StartError.
"""

import ctypes
import json
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38

CAPABILITIES = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
]

libc = ctypes.CDLL(None, use_errno=True)


def _check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source, target, flags):
    _check(libc.mount(source.encode() if source else None, target.encode(), None, ctypes.c_ulong(flags), None),
           f"mount {source or ''} {target}")


def main(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    try:
        if spec.get("cgroup"):  # join the container's memory cgroup first: what it starts is limited too
            with open(spec["cgroup"], "w") as f:
                f.write(str(os.getpid()))
        if spec.get("netns"):
            fd = os.open(spec["netns"], os.O_RDONLY)
            _check(libc.setns(fd, CLONE_NEWNET), "setns " + spec["netns"])
            os.close(fd)
        _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _mount(None, "/", MS_REC | MS_PRIVATE)
        for mount in spec.get("mounts", []):
            _mount(mount["source"], mount["target"], MS_BIND | MS_REC)
            if mount.get("readOnly"):
                _mount(None, mount["target"], MS_BIND | MS_REMOUNT | MS_RDONLY)
        if spec.get("readOnlyRoot"):
            _mount(None, "/", MS_BIND | MS_REMOUNT | MS_RDONLY)
        keep = set(spec.get("keepCapabilities") or [])
        if spec.get("dropCapabilities") is not None:
            drop = spec["dropCapabilities"]
            with open("/proc/sys/kernel/cap_last_cap") as f:
                last = int(f.read())
            for number in range(last + 1):
                name = CAPABILITIES[number] if number < len(CAPABILITIES) else str(number)
                if ("ALL" in drop or name in drop) and name not in keep:
                    _check(libc.prctl(PR_CAPBSET_DROP, number, 0, 0, 0), f"drop CAP_{name}")
        if spec.get("noNewPrivs"):
            _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        os.chdir(spec.get("workingDir") or "/")
        argv, env = spec["argv"], spec["env"]
    except OSError as error:
        _fail(spec, f"failed to create the container: {error}")
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as error:
        what = "executable file not found in $PATH" if error.errno == 2 else error.strerror
        _fail(spec, f'exec: "{argv[0]}": {what}')


def _fail(spec, message):
    try:
        with open(spec["error_file"], "w") as f:
            f.write(message + "\n")
    finally:
        sys.stderr.write(message + "\n")
        os._exit(128)


if __name__ == "__main__":
    main(sys.argv[1])
