"""Shared helpers of the benchmarks: machine facts, package versions, child processes, peak memory, results files.

Every measurement runs in its own process (a child `python` that reports its own wall time and peak RSS as JSON), so
one measurement's memory never leaks into the next. The machine may be shared: figures are noisy; ours and the peer
always run back to back in the same invocation.
"""
from __future__ import annotations

import argparse, json, os, platform, subprocess, sys, threading, time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
EVIDENTLY_PYTHON = HERE / ".venv-evidently" / "bin" / "python"
MIB = 1024 ** 2
GIB = 1024 ** 3


def versions(names=("mlops_nb", "mlflow", "pandas", "numpy", "scipy", "scikit-learn", "pyarrow", "papermill", "nbconvert",
                    "fastapi", "uvicorn", "shap", "fairlearn")) -> dict:
    "Installed versions of the packages that matter to the figures (None when absent)."
    out = {}
    for n in names:
        try: out[n] = metadata.version(n)
        except metadata.PackageNotFoundError: out[n] = None
    return out


def machine() -> dict:
    "Cores, memory, Python and load of this machine (the load says how shared it was)."
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(next(line for line in f if line.startswith("MemTotal")).split()[1]) * 1024
    except (OSError, StopIteration): pass
    return {"cores": os.cpu_count(), "memory_gib": round(mem / GIB, 1) if mem else None, "python": platform.python_version(),
            "platform": platform.platform(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def peak_rss() -> int:
    """Peak resident memory of this process so far, in bytes: VmHWM of /proc/self/status.

    Not getrusage's ru_maxrss: Linux carries that across exec from the parent, so a child of a big parent would
    report the parent's memory."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def emit(result: dict) -> None:
    "A worker's last act: print its result (with its peak RSS) as one JSON line."
    print("RESULT " + json.dumps({**result, "peak_rss_bytes": peak_rss()}), flush=True)


def run_worker(argv: list[str], timeout: float = 3600, env: dict | None = None, cwd: Path | None = None) -> dict:
    "Run a worker process; return its RESULT (plus the wall time seen from outside). Raise naming the worker on failure."
    t0 = time.perf_counter()
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)
    wall = time.perf_counter() - t0
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {' '.join(map(str, argv[:3]))} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1][len("RESULT "):]), "process_wall_seconds": wall}


class TreeMemory:
    "Polls a process and its descendants: peak RSS per process (VmHWM, exact), and the peak of their summed RSS."
    def __init__(self, pid: int, interval: float = 0.2):
        import psutil
        self.root, self.interval = psutil.Process(pid), interval
        self.peaks: dict[int, dict] = {}  # pid -> {"cmdline", "first_seen", "hwm"}
        self.peak_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def _hwm(pid: int) -> int | None:
        try:
            with open(f"/proc/{pid}/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))
        except (OSError, StopIteration): return None

    def _poll(self):
        import psutil
        while not self._stop.is_set():
            try: procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess: break
            total = 0
            for p in procs:
                hwm = self._hwm(p.pid)
                if hwm is None: continue
                if p.pid not in self.peaks:
                    try: cmd = " ".join(p.cmdline())[:200]
                    except psutil.Error: cmd = "?"
                    self.peaks[p.pid] = {"cmdline": cmd, "first_seen": time.time(), "hwm": 0}
                self.peaks[p.pid]["hwm"] = max(self.peaks[p.pid]["hwm"], hwm)
                try: total += p.memory_info().rss
                except psutil.Error: pass
            self.peak_total = max(self.peak_total, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start(); return self

    def __exit__(self, *exc):
        self._stop.set(); self._thread.join()


def write_result(name: str, data: dict, out: Path = RESULTS) -> Path:
    "benchmarks/results/<name>.json with the machine and the versions beside the figures."
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), "versions": versions(), **data}, indent=1, default=str))
    return path


def parser(description: str) -> argparse.ArgumentParser:
    "The common options: --smoke (tiny sizes, seconds) and --out (results folder)."
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: a check that the benchmark runs, not a measurement")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    return p


def python() -> str:
    "The interpreter of the project's venv (the one running this)."
    return sys.executable
