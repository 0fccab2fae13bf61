"""Instance-initiated shutdown (lab/shutdown.py): poweroff / shutdown inside an instance end it
per its InstanceInitiatedShutdownBehavior, as on EC2; a scheduled shutdown can be cancelled;
other systemctl uses still reach the real systemctl; nothing of the shim lands in an image."""

from __future__ import annotations

import time

from conftest import describe, lab_api, wait_state


def _exec(iid: str, cmd: str) -> dict:
    lab_api(f"wait/{iid}")
    return lab_api("exec", {"instance_id": iid, "command": cmd, "timeout": 20})


def test_poweroff_terminates_with_behaviour_terminate(ec2, res, debian_ami):
    iid = res.run(debian_ami, InstanceInitiatedShutdownBehavior="terminate")["InstanceId"]
    r = _exec(iid, "(poweroff >/dev/null 2>&1 &); echo asked")
    assert r["code"] == 0 and "asked" in r["stdout"], r
    # Looked at as often as we can while it goes: no answer may give moto's own
    # "UserInitiatedShutdown" (once set after the call, a Describe in between saw it).
    seen = set()
    deadline = time.monotonic() + 30
    while True:
        inst = describe(ec2, iid)
        seen.add((inst["State"]["Name"], inst.get("StateReason", {}).get("Code")))
        if inst["State"]["Name"] == "terminated" or time.monotonic() > deadline:
            break
    assert inst["State"]["Name"] == "terminated", seen
    assert inst["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown", inst["StateReason"]
    assert not any(code == "Client.UserInitiatedShutdown" for _, code in seen), seen


def test_shutdown_now_stops_by_default(ec2, res, debian_ami):
    iid = res.run(debian_ami)["InstanceId"]
    _exec(iid, "(shutdown -h now >/dev/null 2>&1 &); true")
    wait_state(ec2, iid, "stopped")


def test_scheduled_shutdown_fires_and_can_be_cancelled(ec2, res, debian_ami):
    # +1 minute is the smallest shutdown(8) delay; a sleeping poweroff stands in for it here.
    iid = res.run(debian_ami, InstanceInitiatedShutdownBehavior="terminate")["InstanceId"]
    r = _exec(iid, "shutdown -h +1 && test -s /run/lab-shutdown.pid && shutdown -c && test ! -e /run/lab-shutdown.pid && echo cancelled")
    assert "cancelled" in r["stdout"], r
    r = _exec(iid, "systemctl --version | head -1")
    assert r["code"] == 0 and "systemd" in r["stdout"], r
    _exec(iid, "nohup sh -c 'sleep 1; poweroff' >/dev/null 2>&1 &")
    assert describe(ec2, iid)["State"]["Name"] == "running"
    wait_state(ec2, iid, "terminated", timeout=30)


def test_the_shim_is_not_in_an_image(ec2, res, debian_ami):
    iid = res.run(debian_ami)["InstanceId"]
    _exec(iid, "true")
    ami = res.image(iid)
    deadline = time.monotonic() + 30
    while ec2.describe_images(ImageIds=[ami])["Images"][0]["State"] != "available":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    iid2 = res.run(ami)["InstanceId"]
    # The new instance's systemctl is the shim of *its* boot (naming itself), not a baked copy.
    r = _exec(iid2, f"grep -c {iid} /usr/bin/systemctl; grep -c {iid2} /usr/bin/systemctl")
    assert r["stdout"].split() == ["0", "1"], r
