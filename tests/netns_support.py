"""Two "hosts" on one machine for the split-graph test and the latency benchmark: network namespaces `robot` and
`gpu` joined by a veth pair with link-local addresses (a /30 with no route out), random packet loss on that link
with iptables' statistic match (this kernel has no netem). Needs root and iproute2 (iptables for the loss).
Nothing touches the machine's own interfaces, and everything made is removed on exit, also after a failure."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from surg3d_nodes.data.bags import process_alive
from surg3d_nodes.system.links import RTO_MAX_PATH, TCP_RTO_MAX_MS


def ip(*args: str, ns: str | None = None) -> str:
    """`ip ARGS` (in namespace `ns`); its output."""
    cmd = ["ip", *(("netns", "exec", ns, "ip") if ns else ()), *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=10).stdout


def on_host(h: dict[str, str], *cmd: str) -> list[str]:
    """The command line that runs `cmd` on host `h`: in its network namespace, with a /dev/shm of its own. Two
    machines share no memory; namespaces alone share /dev/shm, where Fast DDS keeps its shared-memory ports and
    allocates participant ids across both "hosts". The tmpfs lives in the mount namespace that `ip netns exec`
    makes for this command and its children, and goes with them."""
    return ["ip", "netns", "exec", h["ns"], "sh", "-c", 'mount -t tmpfs -o mode=1777 s3d_shm /dev/shm && exec "$@"',
            "sh", *cmd]


def on_host_output(h: dict[str, str], *cmd: str) -> str:
    """Run `cmd` on host `h` (`on_host`) to its end; its standard output."""
    return subprocess.run(on_host(h, *cmd), check=True, capture_output=True, text=True, timeout=60).stdout


@contextmanager
def two_hosts() -> Iterator[dict[str, dict[str, str]]]:
    """Namespaces robot and gpu: veth ends 169.254.<r>.1/30 and .2/30, loopback up; removed afterwards. Yields
    {role: {"ns", "dev", "addr"}}."""
    tag = secrets.token_hex(3)
    octet = str(secrets.randbelow(250) + 1)
    hosts = {"robot": {"ns": f"s3d_robot_{tag}", "dev": f"s3dr{tag}", "addr": f"169.254.{octet}.1"},
             "gpu": {"ns": f"s3d_gpu_{tag}", "dev": f"s3dg{tag}", "addr": f"169.254.{octet}.2"}}
    try:
        for h in hosts.values():
            ip("netns", "add", h["ns"])
        ip("link", "add", hosts["robot"]["dev"], "type", "veth", "peer", "name", hosts["gpu"]["dev"])
        for h in hosts.values():
            ip("link", "set", h["dev"], "netns", h["ns"])
            ip("addr", "add", f"{h['addr']}/30", "dev", h["dev"], ns=h["ns"])
            ip("link", "set", h["dev"], "up", ns=h["ns"])
            ip("link", "set", "lo", "up", ns=h["ns"])
            # as each host of a split graph is set up (system/links.py): TCP's backoff capped at 3 s (where
            # the kernel has the setting; the launcher warns where it has not)
            if RTO_MAX_PATH.exists():
                subprocess.run(["ip", "netns", "exec", h["ns"], "sh", "-c", f"echo {TCP_RTO_MAX_MS} > {RTO_MAX_PATH}"],
                               check=True, timeout=10)
        yield hosts
    finally:
        for h in hosts.values():     # deleting a namespace deletes its end of the pair, and so the pair
            kill_all(h)              # a process left in it would outlive it, unreachable
            subprocess.run(["ip", "netns", "del", h["ns"]], capture_output=True, timeout=10)


def kill_all(h: dict[str, str]) -> int:
    """SIGKILL every process in host `h`'s namespace at once (a crash of that host) and wait up to 10 s until each
    has ended (gone, or a zombie); returns how many."""
    out = subprocess.run(["ip", "netns", "pids", h["ns"]], capture_output=True, text=True, timeout=10).stdout
    pids = [int(p) for p in out.split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    end = time.monotonic() + 10.0
    while any(map(process_alive, pids)) and time.monotonic() < end:
        time.sleep(0.05)
    return len(pids)


def drop(hosts: dict[str, dict[str, str]], probability: float | None) -> int:
    """Drop incoming packets at random with `probability` in both namespaces (None: remove the rules); returns
    the packets the removed rules dropped."""
    total = 0
    for h in hosts.values():
        ipt = ["ip", "netns", "exec", h["ns"], "iptables"]
        if probability is None:
            out = subprocess.run([*ipt, "-L", "INPUT", "-v", "-n", "-x"], check=True, capture_output=True,
                                 text=True, timeout=10).stdout
            total += sum(int(line.split()[0]) for line in out.splitlines() if "statistic" in line)
            subprocess.run([*ipt, "-F", "INPUT"], check=True, capture_output=True, timeout=10)
        else:
            subprocess.run([*ipt, "-A", "INPUT", "-m", "statistic", "--mode", "random", "--probability",
                            str(probability), "-j", "DROP"], check=True, capture_output=True, timeout=10)
    return total


def rx_bytes(h: dict[str, str]) -> int:
    """Bytes received so far on host `h`'s end of the link."""
    out = ip("-s", "link", "show", h["dev"], ns=h["ns"])
    return int(re.search(r"RX:.*\n\s*(\d+)", out).group(1))
