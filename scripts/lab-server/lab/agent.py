"""The instance agent: turns moto's EC2 instances into real SSH hosts.

Every lab instance is a copy-on-write sandbox of this machine:

    .lab/instances/<instance-id>/
        upper/ work/ merged/   overlayfs: lowerdir = image layers (newest first) + "/"
        run/                   sshd_config, host keys, authorized_keys, setup.sh, firstboot.sh
                               (copied to the sandbox's /run/lab, a tmpfs: never on the disk)
        console.log            stderr of the boot script and sshd
        pid                    pid of the `unshare` process (what `scripts/lab down` kills)

    .lab/layers/<ami-id>/      an image's frozen layer (the former upper dir of the instance)

The sandbox runs in its own mount + pid namespace (see sandbox-boot.sh), so all of its
mounts vanish with its processes and the host's mount table never changes.

Operations on one instance are serialised through a one-thread executor per instance;
RunInstances / StartInstances return at once and the boot happens in the background
(sshd is normally listening ~0.2 s later), StopInstances / TerminateInstances /
CreateImage wait for the sandbox to be gone.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import shutdown
from . import keep
from . import timing as lab_timing
from . import userdata as ud

log = logging.getLogger("lab.agent")

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
RESERVED = ipaddress.ip_network("127.0.0.0/24")  # 127.0.0.1 & friends: never handed out

SERVER_DIR = Path(__file__).resolve().parent.parent
BOOT_SCRIPT = SERVER_DIR / "sandbox-boot.sh"

DEFAULT_USER_GROUPS = "adm audio cdrom dialout dip floppy netdev plugdev sudo video"


class LabError(Exception):
    pass


def is_lab_ip(ip: str | None) -> bool:
    if not ip:
        return False
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return a in LOOPBACK and a not in RESERVED


@dataclass
class ImageInfo:
    layers: list[str]  # layer ids, newest first
    user: str


@dataclass
class Sandbox:
    instance_id: str
    ip: str
    layers: list[str]
    user: str
    dir: Path
    executor: ThreadPoolExecutor
    proc: subprocess.Popen | None = None
    pid1: int | None = None
    state: str = "created"  # created|booting|running|failed|stopped|terminated
    error: str | None = None
    booted_at: float | None = None
    ready_at: float | None = None
    boots: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "ip": self.ip,
            "state": self.state,
            "user": self.user,
            "layers": self.layers,
            "pid": self.proc.pid if self.proc else None,
            "pid1": self.pid1,
            "error": self.error,
            "boot_seconds": (
                round(self.ready_at - self.booted_at, 3)
                if self.ready_at and self.booted_at
                else None
            ),
            "dir": str(self.dir),
        }


class Lab:
    def __init__(self, lab_dir: Path):
        self.dir = lab_dir.resolve()
        self.instances_dir = self.dir / "instances"
        self.layers_dir = self.dir / "layers"
        self.trash_dir = self.dir / "trash"
        self.lock = threading.RLock()
        self.sandboxes: dict[str, Sandbox] = {}
        self.images: dict[str, ImageInfo] = {}
        self.base_users: dict[str, str] = {}  # base AMI id -> default user
        self.live_ips: set[str] = set()
        self.boot_timeout = float(os.environ.get("LAB_BOOT_TIMEOUT", "20"))
        # Like EC2, RunInstances/StartInstances/RebootInstances return at once and the instance
        # reports "running" before sshd listens (here ~0.2 s later; on EC2 10-30 s): a client
        # must retry its first connection, and how fast it notices sshd is part of what the
        # lab measures. LAB_SYNC_BOOT=1 makes them return only once sshd answers.
        self.sync_boot = os.environ.get("LAB_SYNC_BOOT", "0") == "1"
        # LAB_PROFILE / LAB_TIME_SCALE: how long EC2's transitions take here (lab/timing.py)
        self.timing = lab_timing.Timing()

    def settle(self, futures: list[Future | None]) -> None:
        futs = [f for f in futures if f is not None]
        if self.sync_boot and futs:
            wait_futures(futs, timeout=self.boot_timeout + 5)

    # ------------------------------------------------------------------ setup
    def prepare(self) -> None:
        """Called once at server start: nothing of a previous run survives (moto's state
        is in memory, so neither may the sandboxes be)."""
        self.kill_stale()
        self.timing.shutdown()  # a previous server's SYN-drop rules
        for d in (self.instances_dir, self.layers_dir, self.trash_dir):
            if d.exists():
                self._rmtree(d)
            d.mkdir(parents=True, exist_ok=True)

    def kill_stale(self) -> None:
        if not self.instances_dir.exists():
            return
        for pidfile in self.instances_dir.glob("*/pid"):
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            if _cmdline_has(pid, str(pidfile.parent)):
                _kill(pid)

    # ------------------------------------------------------------- IP space
    def reserve_ip(self, ip: str) -> bool:
        with self.lock:
            if ip in self.live_ips:
                return False
            self.live_ips.add(ip)
            return True

    def release_ip(self, ip: str | None) -> None:
        with self.lock:
            self.live_ips.discard(ip or "")

    # --------------------------------------------------------------- images
    def image_info(self, ami_id: str | None) -> ImageInfo:
        with self.lock:
            if ami_id and ami_id in self.images:
                return self.images[ami_id]
            return ImageInfo([], self.base_users.get(ami_id or "", "admin"))

    def freeze(self, instance_id: str, ami_id: str, source_image_id: str | None,
               no_reboot: bool = False) -> None:
        """CreateImage: the instance's writable layer becomes the image's newest layer."""
        sb = self.sandboxes.get(instance_id)
        if sb is None:
            # an instance the lab never booted (should not happen): image = its source
            info = self.image_info(source_image_id)
            with self.lock:
                self.images[ami_id] = ImageInfo(list(info.layers), info.user)
            return
        if not no_reboot:  # a boot still waiting for its time (realistic) gives way
            self.timing.abort(sb)
        fut = sb.executor.submit(self._freeze, sb, ami_id, no_reboot)
        fut.result()

    def _freeze(self, sb: Sandbox, ami_id: str, no_reboot: bool = False) -> None:
        was_running = sb.state in ("booting", "running", "rebooting")
        if was_running and no_reboot:
            self._snapshot_live(sb, ami_id)
            return
        if was_running:  # EC2 reboots the instance for a consistent image; so do we
            self._kill(sb)
        layer = self.layers_dir / ami_id
        # O(1): the upper dir *becomes* the layer; the instance continues on a fresh
        # upper dir stacked on it, which shows exactly the same files. Under the lock with
        # the records that name it: a gc_layers() in between (another image deregistered)
        # would otherwise see an unowned layer and trash the image's content.
        with self.lock:
            os.rename(sb.dir / "upper", layer)
            sb.layers = [ami_id] + sb.layers
            self.images[ami_id] = ImageInfo(list(sb.layers), sb.user)
        (sb.dir / "upper").mkdir()
        self._rmtree(sb.dir / "work")
        (sb.dir / "work").mkdir()
        if was_running:
            self.timing.plan(sb, pending=False)
            self._boot(sb)

    def _snapshot_live(self, sb: Sandbox, ami_id: str) -> None:
        """CreateImage with NoReboot of a running instance: EC2 snapshots the disk as it is at
        the call, and the instance runs on. The upper dir is in use by the live overlay, so it
        is copied (whiteouts, opaque-dir xattrs and all: `cp -a` as root), not renamed; the
        copy is the image's layer and the instance keeps its own."""
        layer = self.layers_dir / ami_id
        # Beside the layers, not among them: gc_layers() would trash an unowned layer dir.
        tmp = self.layers_dir.parent / "layer-copies" / ami_id
        tmp.parent.mkdir(parents=True, exist_ok=True)
        self.layers_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", "--reflink=auto", str(sb.dir / "upper"), str(tmp)],
                       check=True, capture_output=True)
        # Under the lock with the record that names it (see _freeze).
        with self.lock:
            os.rename(tmp, layer)
            self.images[ami_id] = ImageInfo([ami_id] + list(sb.layers), sb.user)

    def copy_image(self, source_ami_id: str, new_ami_id: str) -> None:
        info = self.image_info(source_ami_id)
        with self.lock:
            self.images[new_ami_id] = ImageInfo(list(info.layers), info.user)

    def register_image(self, ami_id: str) -> None:
        with self.lock:
            self.images.setdefault(ami_id, ImageInfo([], "admin"))

    def deregister(self, ami_id: str) -> None:
        with self.lock:
            self.images.pop(ami_id, None)
        self.gc_layers()

    def gc_layers(self) -> None:
        """Delete layers no image and no live instance uses any more."""
        with self.lock:
            live: set[str] = set()
            for info in self.images.values():
                live.update(info.layers)
            for sb in self.sandboxes.values():
                if sb.state != "terminated":
                    live.update(sb.layers)
            dead = [p for p in self.layers_dir.iterdir() if p.name not in live] if self.layers_dir.exists() else []
        for p in dead:
            self._trash(p)

    # ------------------------------------------------------------ instances
    def launch(self, instance: Any, backend: Any) -> Future:
        """Called right after moto created an instance (RunInstances, Auto Scaling, ...)."""
        iid = instance.id
        ip = instance.private_ip_address
        info = self.image_info(instance.image_id)
        d = self.instances_dir / iid
        for sub in ("upper", "work", "merged", "run"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        pubkeys: list[str] = []
        if instance.key_name:
            kp = getattr(backend, "key_pairs", {}).get(instance.key_name)
            if kp is not None:
                pub = kp.material_public
                if isinstance(pub, bytes):
                    pub = pub.decode()
                pubkeys.append(pub.strip())
        raw_ud = _user_data_bytes(instance.user_data)
        sb = Sandbox(
            instance_id=iid,
            ip=ip,
            layers=list(info.layers),
            user=info.user,
            dir=d,
            executor=ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sb-{iid}"),
        )
        sb.meta = {"image_id": instance.image_id, "key_name": instance.key_name}
        with self.lock:
            self.sandboxes[iid] = sb
            self.live_ips.add(ip)
        self.timing.plan(sb)
        return sb.executor.submit(self._provision_and_boot, sb, pubkeys, raw_ud)

    def _provision_and_boot(self, sb: Sandbox, pubkeys: list[str], raw_ud: bytes | None) -> None:
        try:
            self._provision(sb, pubkeys, raw_ud)
        except Exception as e:  # noqa: BLE001
            log.exception("provisioning %s failed", sb.instance_id)
            sb.state, sb.error = "failed", f"provision: {e}"
            return
        self._boot(sb)

    def _provision(self, sb: Sandbox, pubkeys: list[str], raw_ud: bytes | None) -> None:
        run = sb.dir / "run"
        data = ud.parse(raw_ud)
        if data.errors:
            _append(sb.dir / "console.log", "lab: user data: " + "; ".join(data.errors) + "\n")
        host_keys: list[str] = []
        for ktype, (priv, pub) in data.host_keys.items():
            path = run / f"ssh_host_{ktype}_key"
            _write(path, priv if priv.endswith("\n") else priv + "\n", 0o600)
            if pub:
                _write(path.with_suffix(".pub"), pub.strip() + "\n", 0o644)
            else:
                r = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True)
                if r.returncode == 0:
                    _write(path.with_suffix(".pub"), r.stdout.strip() + "\n", 0o644)
            host_keys.append(path.name)
        if not host_keys:
            path = run / "ssh_host_ed25519_key"
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{sb.instance_id}", "-f", str(path)],
                check=True, stdin=subprocess.DEVNULL, capture_output=True,
            )
            host_keys.append(path.name)
        keys = pubkeys + [k for k in data.authorized_keys if k not in pubkeys]
        _write(run / "authorized_keys", "".join(k + "\n" for k in keys), 0o644)
        _write(run / "sshd_config", _sshd_config(sb.ip, host_keys), 0o644)
        _write(run / "setup.sh", _setup_script(sb.user), 0o755)
        shutdown.provision(run, sb.instance_id)  # poweroff/shutdown inside reach the lab
        keep.provision(run, sb.instance_id, raw_ud)  # host keys, user data, syslog on the disk
        if data.scripts or data.runcmd:
            for i, s in enumerate(data.scripts):
                _write(run / f"user-script-{i:02d}", s, 0o755)
            _write(run / "firstboot.sh", _firstboot_script(sb.instance_id, len(data.scripts), data.runcmd), 0o755)

    def _boot(self, sb: Sandbox) -> None:
        if not is_lab_ip(sb.ip):
            sb.state, sb.error = "failed", f"refusing to start sshd on non-loopback address {sb.ip!r}"
            log.error("%s: %s", sb.instance_id, sb.error)
            return
        if not self.timing.wait_boot(sb):  # realistic profile: pending, SYNs dropped, port closed
            return
        lower = ":".join(str(self.layers_dir / layer) for layer in sb.layers)
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LAB_INST_DIR": str(sb.dir),
            "LAB_LOWER": lower,
            "LAB_IP": sb.ip,
            "LANG": "C.UTF-8",
        }
        # start with a clean work dir (overlayfs leaves work/work behind)
        if (sb.dir / "work").exists():
            self._rmtree(sb.dir / "work")
        (sb.dir / "work").mkdir(exist_ok=True)
        sb.state, sb.error, sb.pid1, sb.ready_at = "booting", None, None, None
        sb.booted_at = time.monotonic()
        sb.boots += 1
        console = open(sb.dir / "console.log", "ab")
        try:
            sb.proc = subprocess.Popen(
                ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
                 "--", "/bin/sh", str(BOOT_SCRIPT)],
                stdin=subprocess.DEVNULL, stdout=console, stderr=console,
                env=env, start_new_session=True, close_fds=True,
            )
        finally:
            console.close()
        (sb.dir / "pid").write_text(f"{sb.proc.pid}\n")
        deadline = sb.booted_at + self.boot_timeout
        while time.monotonic() < deadline:
            if sb.proc.poll() is not None:
                sb.state = "failed"
                sb.error = f"sandbox exited with {sb.proc.returncode}; see {sb.dir / 'console.log'}"
                log.error("%s: %s", sb.instance_id, sb.error)
                return
            if sb.pid1 is None:
                sb.pid1 = _first_child(sb.proc.pid)
            if _ssh_banner(sb.ip):
                sb.state, sb.ready_at = "running", time.monotonic()
                if sb.pid1 is None:
                    sb.pid1 = _first_child(sb.proc.pid)
                log.info("%s: sshd up on %s:22 after %.3fs", sb.instance_id, sb.ip, sb.ready_at - sb.booted_at)
                return
            time.sleep(0.02)
        sb.state, sb.error = "failed", f"sshd not listening on {sb.ip}:22 after {self.boot_timeout}s"
        log.error("%s: %s", sb.instance_id, sb.error)

    def _kill(self, sb: Sandbox) -> None:
        if sb.proc is None:
            return
        if sb.pid1:
            _kill(sb.pid1)
        _kill(sb.proc.pid)
        try:
            sb.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.error("%s: sandbox pid %s did not exit", sb.instance_id, sb.proc.pid)
        sb.proc, sb.pid1 = None, None
        try:
            (sb.dir / "pid").unlink()
        except FileNotFoundError:
            pass

    def _op(self, instance_id: str, fn: Any, wait: bool = True) -> Future | None:
        sb = self.sandboxes.get(instance_id)
        if sb is None or sb.state == "terminated":
            return None
        fut = sb.executor.submit(fn, sb)
        if wait:
            fut.result()
        return fut

    def start(self, instance_id: str) -> Future | None:
        def op(sb: Sandbox) -> None:
            if sb.proc is None:
                self._boot(sb)
        sb = self.sandboxes.get(instance_id)
        if sb is not None and sb.proc is None and sb.state != "terminated":
            self.timing.plan(sb)
        return self._op(instance_id, op, wait=False)

    def stop(self, instance_id: str) -> None:
        def op(sb: Sandbox) -> None:
            self._kill(sb)
            sb.state = "stopped"
            self.timing.stopped(sb)
        sb = self.sandboxes.get(instance_id)
        if sb is not None:
            self.timing.abort(sb)
        self._op(instance_id, op)

    def reboot(self, instance_id: str) -> Future | None:
        def op(sb: Sandbox) -> None:
            self._kill(sb)
            self._boot(sb)
        # Down from the moment RebootInstances returns (the boot runs in the background): a
        # command or health check that comes right after must not reach the old sshd/agent.
        sb = self.sandboxes.get(instance_id)
        if sb is not None and sb.state == "running":
            sb.state = "rebooting"
        if sb is not None and sb.state != "terminated":
            self.timing.plan(sb, pending=False)
        return self._op(instance_id, op, wait=False)

    def terminate(self, instance_id: str) -> None:
        def op(sb: Sandbox) -> None:
            self._kill(sb)
            sb.state = "terminated"
            self._trash(sb.dir)
        sb = self.sandboxes.get(instance_id)
        if sb is None or sb.state == "terminated":
            return
        self.timing.abort(sb)
        self._op(instance_id, op)
        sb.executor.shutdown(wait=False)
        self.timing.gone(sb.ip)
        self.release_ip(sb.ip)
        self.gc_layers()

    def wait_ready(self, instance_id: str, timeout: float = 30) -> Sandbox:
        deadline = time.monotonic() + timeout
        while True:
            sb = self.sandboxes.get(instance_id)
            if sb is None:
                raise LabError(f"no such lab instance {instance_id}")
            if sb.state in ("running", "failed", "stopped", "terminated"):
                return sb
            if time.monotonic() > deadline:
                return sb
            time.sleep(0.02)

    # ------------------------------------------------------- whole-lab ops
    def shutdown(self) -> None:
        """Kill every sandbox (server exit)."""
        with self.lock:
            sandboxes = list(self.sandboxes.values())
        for sb in sandboxes:
            self.timing.abort(sb)
            self._kill(sb)
            sb.state = "stopped"
        self.timing.shutdown()

    def reset(self) -> None:
        """moto reset: kill all sandboxes, forget everything, delete all disks and layers."""
        self.shutdown()
        with self.lock:
            for sb in self.sandboxes.values():
                sb.executor.shutdown(wait=False)
            self.sandboxes.clear()
            self.images.clear()
            self.live_ips.clear()
            for d in (self.instances_dir, self.layers_dir):
                if d.exists():
                    self._trash(d)
                d.mkdir(parents=True, exist_ok=True)

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {
                "lab_dir": str(self.dir),
                "instances": [sb.info() for sb in self.sandboxes.values() if sb.state != "terminated"],
                "images": {k: {"layers": v.layers, "user": v.user} for k, v in self.images.items()},
                "layers": sorted(p.name for p in self.layers_dir.iterdir()) if self.layers_dir.exists() else [],
            }

    def console_output(self, instance_id: str) -> str | None:
        """What GetConsoleOutput shows: cloud-init's host key block, then the sandbox's log."""
        sb = self.sandboxes.get(instance_id)
        if sb is None or not sb.dir.exists():
            return None
        fps, keys = [], []
        for pub in sorted((sb.dir / "run").glob("ssh_host_*_key.pub")):
            line = pub.read_text().strip()
            keys.append(line)
            r = subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True)
            if r.returncode == 0:
                fps.append(r.stdout.strip())
        try:
            log_tail = (sb.dir / "console.log").read_text(errors="replace")[-32000:]
        except OSError:
            log_tail = ""
        return (
            f"{log_tail}"
            "ci-info: no authorized SSH keys fingerprints found for user root.\n"
            "-----BEGIN SSH HOST KEY FINGERPRINTS-----\n" + "".join(f + "\n" for f in fps)
            + "-----END SSH HOST KEY FINGERPRINTS-----\n"
            "-----BEGIN SSH HOST KEY KEYS-----\n" + "".join(k + "\n" for k in keys)
            + "-----END SSH HOST KEY KEYS-----\n"
        )

    # ------------------------------------------------- exec (future: SSM)
    def exec_in_instance(
        self,
        instance_id: str,
        command: str | list[str],
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        user: str | None = None,
        stdin: bytes | None = None,
        cwd: str | None = None,
    ) -> tuple[int, bytes, bytes]:
        """Run a command inside a running instance's sandbox, as root (or `user`).

        `command` is a shell script (run with /bin/sh -c) or an argv list. Returns
        (exit code, stdout, stderr); exit code 124 on timeout (like timeout(1)).
        This is the hook SSM SendCommand execution will use.
        """
        sb = self.wait_ready(instance_id, timeout=30)
        if sb.state != "running" or not sb.pid1:
            raise LabError(f"instance {instance_id} is not running (lab state {sb.state})")
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
        if cwd:
            argv = ["/bin/sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", cwd] + argv
        if user and user != "root":
            argv = ["/usr/sbin/runuser", "-u", user, "--"] + argv
        envl = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"]
        envl += [f"{k}={v}" for k, v in (env or {}).items()]
        full = ["nsenter", "-t", str(sb.pid1), "-m", "-p", "-r", "-w", "--", "/usr/bin/env", "-i"] + envl + argv
        try:
            p = subprocess.run(full, input=stdin or b"", capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            return 124, e.stdout or b"", (e.stderr or b"") + b"\nlab: timed out\n"
        return p.returncode, p.stdout, p.stderr

    # ------------------------------------------------------------- helpers
    def _trash(self, path: Path) -> None:
        """Delete a directory tree in the background (rename first: instant)."""
        if not path.exists():
            return
        self.trash_dir.mkdir(parents=True, exist_ok=True)
        dst = self.trash_dir / f"{path.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, dst)
        except OSError:
            dst = path
        threading.Thread(target=self._rmtree, args=(dst,), daemon=True).start()

    @staticmethod
    def _rmtree(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():  # e.g. immutable bits or leftovers: last resort
            subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


# ---------------------------------------------------------------- generators
def _sshd_config(ip: str, host_keys: list[str]) -> str:
    lines = [
        "# generated by the bake lab; lives on the sandbox's /run (tmpfs); host keys: /etc/ssh",
        f"ListenAddress {ip}:22",
        # on the disk, where cloud-init puts them (run/keep.sh copies them there)
        *[f"HostKey /etc/ssh/{k}" for k in host_keys],
        "PidFile /run/sshd.pid",
        "UsePAM no",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        # Packer 1.6.6's Go SSH client signs with ssh-rsa (SHA-1), which OpenSSH >= 8.8
        # refuses by default; accept it as an old AMI's sshd would.
        "PubkeyAcceptedAlgorithms +ssh-rsa",
        "AuthorizedKeysFile .ssh/authorized_keys",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UseDNS no",
        "PrintMotd no",
        "AcceptEnv LANG LC_*",
        "MaxStartups 200:30:400",
        "MaxSessions 200",
        "LoginGraceTime 60",
        "Subsystem sftp /usr/lib/openssh/sftp-server",
        "",
    ]
    return "\n".join(lines)


def _setup_script(user: str) -> str:
    u = shlex.quote(user)
    return f"""# cloud-init's per-boot user setup, as the lab does it (runs as root in the chroot)
set -e
U={u}
if ! getent passwd "$U" >/dev/null 2>&1; then
  G=""
  for g in {DEFAULT_USER_GROUPS}; do
    if getent group "$g" >/dev/null 2>&1; then G="$G${{G:+,}}$g"; fi
  done
  useradd -m -U -s /bin/bash -p '*' -c "$U" ${{G:+-G "$G"}} "$U"
fi
mkdir -p /etc/sudoers.d
printf '# Created by the bake lab (as cloud-init does)\\n\\n# User rules for %s\\n%s ALL=(ALL) NOPASSWD:ALL\\n' "$U" "$U" > /etc/sudoers.d/90-cloud-init-users
chmod 0440 /etc/sudoers.d/90-cloud-init-users
H=$(getent passwd "$U" | cut -d: -f6)
mkdir -p "$H/.ssh"
touch "$H/.ssh/authorized_keys"
while IFS= read -r key; do
  [ -n "$key" ] || continue
  grep -qxF "$key" "$H/.ssh/authorized_keys" || printf '%s\\n' "$key" >> "$H/.ssh/authorized_keys"
done < /run/lab/authorized_keys
chown -R "$U:" "$H/.ssh"
chmod 700 "$H/.ssh"
chmod 600 "$H/.ssh/authorized_keys"
"""


def _firstboot_script(instance_id: str, nscripts: int, runcmd: list[str]) -> str:
    marker = f"/var/lib/cloud/instances/{instance_id}/boot-finished"
    parts = [
        "# user data, once per instance (like cloud-init's scripts-user / runcmd)",
        f"M={shlex.quote(marker)}",
        '[ -e "$M" ] && exit 0',
        'mkdir -p "$(dirname "$M")"',
        "exec >>/var/log/cloud-init-output.log 2>&1",
    ]
    for i in range(nscripts):
        parts.append(f"/run/lab/user-script-{i:02d} || echo \"user script {i} failed: $?\"")
    for line in runcmd:
        parts.append(f"/bin/sh -c {shlex.quote(line)} || echo \"runcmd failed: $?\"")
    parts.append('date > "$M"')
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------- utilities
def _user_data_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, list):  # very old moto
        value = value[0] if value else None
        if value is None:
            return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        return base64.b64decode(str(value))
    except Exception:  # noqa: BLE001
        return str(value).encode()


def _write(path: Path, content: str | bytes, mode: int) -> None:
    data = content.encode() if isinstance(content, str) else content
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def _ssh_banner(ip: str) -> bool:
    try:
        with socket.create_connection((ip, 22), timeout=0.5) as s:
            s.settimeout(0.5)
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def _first_child(pid: int) -> int | None:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return int(kids[0]) if kids else None
    except (OSError, ValueError):
        return None


def _cmdline_has(pid: int, needle: str) -> bool:
    try:
        return needle.encode() in Path(f"/proc/{pid}/cmdline").read_bytes() or needle.encode() in Path(
            f"/proc/{pid}/environ"
        ).read_bytes()
    except OSError:
        return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
