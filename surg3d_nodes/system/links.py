"""What a graph split across machines needs of each machine's network stack.

Across hosts, Fast DDS carries the graph's streams over TCP (the LARGE_DATA transports, config/fastdds.xml). When
the link between the machines is cut, TCP retransmits with exponential backoff (Linux: from 200 ms, doubling, up to
`net.ipv4.tcp_rto_max_ms`, 120 s by default), so after the link returns a stream resumes only at the next
retransmission: seconds after a 5 s cut (9.5 s in one CI run, the robot side's replay blocked in its TCP send for
14 s). Capping the backoff (Linux 6.15 and later; the setting is per network namespace) at 3 s bounds that wait to
3 s: 0.12-0.44 s in the split-graph test. Not at 1 s: with that cap the latency bench across a 1 % lossy link had
its publisher block for good in 3 of 13 runs (not understood; none in 10 runs each without a cap and with 3 s).
"""

from __future__ import annotations

from pathlib import Path

TCP_RTO_MAX_MS = 3000   # the cap on TCP's retransmission backoff a split graph's hosts should have
RTO_MAX_SYSCTL = "net.ipv4.tcp_rto_max_ms"
RTO_MAX_PATH = Path("/proc/sys/net/ipv4/tcp_rto_max_ms")   # this process's network namespace's value


def split_host_warnings() -> list[str]:
    """Sentences on this machine's settings that slow a split graph's recovery from a cut link (empty when all is
    set as it should be)."""
    try:
        value = int(RTO_MAX_PATH.read_text().split()[0])
    except FileNotFoundError:
        return [f"this kernel has no {RTO_MAX_SYSCTL} (Linux 6.15 and later): after a cut of the link between the "
                f"hosts, TCP's retransmission backoff (up to 120 s) decides when the DDS streams resume"]
    except (OSError, ValueError, IndexError) as e:
        return [f"cannot read {RTO_MAX_PATH}: {e}"]
    if value > TCP_RTO_MAX_MS:
        return [f"{RTO_MAX_SYSCTL} is {value}: after a cut of the link between the hosts the DDS streams (TCP) may "
                f"resume only that long after it returns; set `sysctl -w {RTO_MAX_SYSCTL}={TCP_RTO_MAX_MS}` on both "
                f"hosts"]
    return []
