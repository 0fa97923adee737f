"""Peak memory of a process, and measurements run in a fresh process of their own."""

import json
import os
import resource
import subprocess
import sys

MB = 1024.0 * 1024.0


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MiB.

    Linux: VmHWM of /proc/self/status, which starts afresh at exec; getrusage's
    ru_maxrss would carry over the parent's peak into a probe subprocess.
    Elsewhere ru_maxrss (KiB, bytes on macOS).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024.0


def run_probes(script: str, argvs: list[list[str]]) -> list[dict]:
    """Runs `script` once per argument list in `argvs`, each in a fresh process
    of its own and all at once (a process's peak memory is its own), and
    returns the JSON each printed on its last line, in order."""
    procs = [subprocess.Popen([sys.executable, os.path.abspath(script)] + argv,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=os.environ.copy())
             for argv in argvs]
    results = []
    for argv, proc in zip(argvs, procs):
        out, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"probe {' '.join(argv)} failed: {err.strip()[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results
