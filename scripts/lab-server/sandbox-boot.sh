#!/bin/sh
# Boots one lab instance. Runs as pid 1 of a fresh pid + mount namespace made by
#   unshare --mount --pid --fork --kill-child --propagation private
# so every mount below lives only in that namespace (the host never sees it) and
# killing this process (or its unshare parent) kills everything inside.
#
# Inputs (environment, set by the lab agent):
#   LAB_INST_DIR  .lab/instances/<id>   (upper/, work/, merged/, run/ live here)
#   LAB_LOWER     image layers, newest first, ':'-separated (may be empty); / is added below
#   LAB_IP        the instance's private IP (must be inside 127.0.0.0/8)
set -eu

D="$LAB_INST_DIR"
M="$D/merged"

case "$LAB_IP" in
  127.*) ;;
  *) echo "lab: refusing to boot on non-loopback address $LAB_IP" >&2; exit 1 ;;
esac

# The host's / enters as a read-only overlay of its own ("base"): overlayfs refuses layers
# that are subdirectories of another layer of the same mount ("overlapping lowerdir path"),
# and the image layers live under / (in .lab/layers). Through "base", / is a different
# superblock, so image layers and the instance's upper dir can live anywhere under .lab.
mkdir -p "$D/base" "$D/empty"
mount -t tmpfs -o size=4k,mode=755 labempty "$D/empty"
mount -t overlay labbase -o "ro,lowerdir=/:$D/empty" "$D/base"
if [ -n "$LAB_LOWER" ]; then LOWER="$LAB_LOWER:$D/base"; else LOWER="$D/base"; fi
# volatile: overlayfs syncs its whole upper file system -- the host's disk -- whenever an
# instance's overlay goes away (every stop), which after a big upload stalls the stop and the
# host. Lab disks never outlive the lab (moto's state is in memory), so skip that; kernels
# before 5.10 do not know the option.
OPTS="lowerdir=$LOWER,upperdir=$D/upper,workdir=$D/work"
mount -t overlay "lab-overlay" -o "$OPTS,volatile" "$M" 2>/dev/null ||
  mount -t overlay "lab-overlay" -o "$OPTS" "$M"

# /proc for this pid namespace
mount -t proc proc "$M/proc"
# /sys read-only (a plain bind, no submounts)
mount --bind /sys "$M/sys" && mount -o remount,bind,ro "$M/sys" || true

# A minimal /dev: a tmpfs with the usual character devices bound in, and a private devpts.
mount -t tmpfs -o mode=755,size=1m,nosuid labdev "$M/dev"
for n in null zero full random urandom tty; do
  : > "$M/dev/$n"
  mount --bind "/dev/$n" "$M/dev/$n"
done
mkdir -p "$M/dev/pts" "$M/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$M/dev/pts"
ln -s pts/ptmx "$M/dev/ptmx"
ln -s /proc/self/fd "$M/dev/fd"
ln -s /proc/self/fd/0 "$M/dev/stdin"
ln -s /proc/self/fd/1 "$M/dev/stdout"
ln -s /proc/self/fd/2 "$M/dev/stderr"
mount -t tmpfs -o mode=1777,nosuid,nodev labshm "$M/dev/shm"

# private /tmp and /run (like a freshly booted machine)
mount -t tmpfs -o mode=1777,nosuid,nodev labtmp "$M/tmp"
mount -t tmpfs -o mode=755,nosuid,nodev labrun "$M/run"
mkdir -p "$M/run/sshd" "$M/run/lab"
chmod 755 "$M/run/sshd"

# lab-provided files: sshd config, host keys, authorized keys, setup scripts.
# They live on /run (tmpfs); keep.sh copies what a real instance keeps on its disk (host
# keys, user data) to where cloud-init puts it.
cp -a "$D/run/." "$M/run/lab/"
chmod 700 "$M/run/lab"

# cloud-init's job: default user, sudoers, authorized_keys (every boot, idempotent)
chroot "$M" /bin/sh /run/lab/setup.sh
# what cloud-init leaves on the disk: host keys in /etc/ssh, the user data (lab/keep.py)
if [ -f "$M/run/lab/keep.sh" ]; then chroot "$M" /bin/sh /run/lab/keep.sh; fi

# syslog on /dev/log -> /var/log/auth.log, /var/log/syslog (sudo logs there); up before
# anything that may log (user data, sshd sessions)
if [ -f "$M/run/lab/syslogd.py" ] && [ -x "$M/usr/bin/python3" ]; then
  chroot "$M" /bin/sh -c 'nohup /usr/bin/python3 /run/lab/syslogd.py >/dev/null 2>&1 &'
  i=0
  while [ ! -S "$M/dev/log" ] && [ $i -lt 100 ]; do sleep 0.02; i=$((i + 1)); done
fi

# first boot only: user-data scripts / runcmd, in the background like cloud-final
if [ -f "$M/run/lab/firstboot.sh" ]; then
  chroot "$M" /bin/sh -c 'nohup /bin/sh /run/lab/firstboot.sh >/dev/null 2>&1 &'
fi

echo "lab: sshd starting on $LAB_IP:22" >&2
exec chroot "$M" /usr/sbin/sshd -D -e -f /run/lab/sshd_config
