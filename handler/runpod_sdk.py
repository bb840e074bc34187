"""The RunPod SDK, imported without the processor probe its debugger runs at import.

`runpod.serverless.utils.rp_debugger` asks py-cpuinfo for the processor's name when it is imported;
py-cpuinfo answers by starting a second Python that starts a third and busy-waits on it: measured,
1.2 CPU-seconds and 1.3 s of every worker's start, for a name only the SDK's debug output prints.
Here the name is read from /proc/cpuinfo instead, for that one import.
"""

from __future__ import annotations

import cpuinfo

UNKNOWN_PROCESSOR = "Unable to get processor info."


def processor_name() -> str:
    """The first `model name` of /proc/cpuinfo (Linux); elsewhere the SDK's own words for an unknown one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return UNKNOWN_PROCESSOR


_probe = cpuinfo.get_cpu_info
cpuinfo.get_cpu_info = lambda: {"brand_raw": processor_name()}
try:
    import runpod as runpod
finally:
    cpuinfo.get_cpu_info = _probe
