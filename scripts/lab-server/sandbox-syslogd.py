#!/usr/bin/python3
"""A tiny syslog daemon for one lab sandbox (started by sandbox-boot.sh, chrooted).

Listens on /dev/log (the sandbox's own /dev, a tmpfs) and appends each message as rsyslog
would on Debian: auth and authpriv to /var/log/auth.log, everything else to /var/log/syslog,
in the traditional "Mmm dd HH:MM:SS host tag[pid]: message" format. So `sudo` and PAM log
their lines to the instance's disk, and images made from it keep them.
"""

import os
import socket
import time

AUTH = {4, 10}  # auth, authpriv
HOST = socket.gethostname().split(".")[0]


def main() -> None:
    path = "/dev/log"
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    os.chmod(path, 0o666)
    files = {}
    while True:
        data = s.recv(65536)
        if not data:
            continue
        msg = data.decode("utf-8", "replace").rstrip("\n\x00")
        pri = 13  # user.notice
        if msg.startswith("<") and ">" in msg[:5]:
            try:
                pri = int(msg[1:msg.index(">")])
            except ValueError:
                pass
            msg = msg[msg.index(">") + 1:]
        # glibc sends "Mmm dd HH:MM:SS tag: msg"; insert the host name after the time stamp
        if len(msg) > 16 and msg[3] == " " and msg[6] == " " and msg[9] == ":":
            line = f"{msg[:15]} {HOST} {msg[16:]}"
        else:
            line = f"{time.strftime('%b %e %H:%M:%S')} {HOST} {msg}"
        name = "/var/log/auth.log" if (pri >> 3) in AUTH else "/var/log/syslog"
        f = files.get(name)
        if f is None:
            f = files[name] = open(name, "a", buffering=1)
        f.write(line + "\n")


if __name__ == "__main__":
    main()
