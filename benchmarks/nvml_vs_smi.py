"""NVML readings (through seekwatch's GpuCollector) beside nvidia-smi's, during a GPU load.

Why: the GPU-utilisation alert (> 90 % for 5 min) and the dashboard trust
``seekwatch_gpu_*``; this shows they agree with the tool ops already trust. Each tick takes
a collector snapshot and runs ``nvidia-smi --query-gpu=... --format=csv`` right after, and
the script prints one markdown table row per GPU per tick plus a summary of differences.

Load: ``--load torch`` (default when torch sees CUDA) runs bf16 matmuls on every GPU in a
pattern idle → full → half duty → idle, so utilisation, power and temperature move;
``--load none`` just samples; ``--load-cmd "..."`` runs your own command meanwhile.

    python benchmarks/nvml_vs_smi.py --seconds 40 --interval 1 > nvml_vs_smi.md
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.gpu import GpuCollector  # noqa: E402

SMI_FIELDS = "index,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw"


def smi_query() -> dict[int, dict[str, float | None]]:
    out = subprocess.run(["nvidia-smi", f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=20, check=True).stdout
    rows: dict[int, dict[str, float | None]] = {}
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]

        def num(s: str) -> float | None:
            try:
                return float(s)
            except ValueError:  # "[N/A]", "[Not Supported]"
                return None

        idx = int(parts[0])
        rows[idx] = {"util": num(parts[1]), "mem_used_mib": num(parts[2]), "mem_total_mib": num(parts[3]),
                     "temp": num(parts[4]), "power": num(parts[5])}
    return rows


def torch_load(stop: threading.Event, seconds: float) -> list[threading.Thread]:
    import torch

    threads = []
    t0 = time.monotonic()

    def phase() -> float:
        """Duty cycle by elapsed fraction: 0 → 1 → 0.5 → 0."""
        f = (time.monotonic() - t0) / seconds
        return 0.0 if f < 0.15 else 1.0 if f < 0.55 else 0.5 if f < 0.85 else 0.0

    def work(dev: int) -> None:
        torch.cuda.set_device(dev)
        a = torch.randn(8192, 8192, device=f"cuda:{dev}", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device=f"cuda:{dev}", dtype=torch.bfloat16)
        while not stop.is_set():
            duty = phase()
            start = time.monotonic()
            if duty > 0:
                while time.monotonic() - start < 0.1 * duty:
                    (a @ b).sum()
                    torch.cuda.synchronize(dev)
            time.sleep(0.1 * (1 - duty))

    for dev in range(torch.cuda.device_count()):
        th = threading.Thread(target=work, args=(dev,), daemon=True)
        th.start()
        threads.append(th)
    return threads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--load", choices=["auto", "torch", "none"], default="auto")
    ap.add_argument("--load-cmd", default=None, help="a shell command to run as the load instead")
    args = ap.parse_args(argv)

    if shutil.which("nvidia-smi") is None:
        print("nvidia-smi not found", file=sys.stderr)
        return 2
    gpu = GpuCollector(interval_s=args.interval).start()
    if not gpu.available:
        print("NVML unavailable: seekwatch_gpu_available would be 0; nothing to compare", file=sys.stderr)
        return 2

    stop = threading.Event()
    proc = None
    load = args.load
    if args.load_cmd:
        proc = subprocess.Popen(shlex.split(args.load_cmd))
        load = f"cmd: {args.load_cmd}"
    elif load in ("auto", "torch"):
        try:
            import torch
            ok = torch.cuda.is_available()
        except Exception:
            ok = False
        if ok:
            torch_load(stop, args.seconds)
            load = "torch bf16 8192² matmul, duty 0→1→0.5→0"
        elif load == "torch":
            print("torch with CUDA not available", file=sys.stderr)
            return 2
        else:
            load = "none"

    rows = []
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < args.seconds:
            tick = time.monotonic()
            s = gpu.sample_once()
            smi = smi_query()
            for r in s.gpus if s else ():
                o = smi.get(r.index, {})
                rows.append((round(tick - t0, 1), r, o))
            time.sleep(max(0.0, args.interval - (time.monotonic() - tick)))
    finally:
        stop.set()
        if proc is not None:
            proc.terminate()
        gpu.stop()

    def f(v, nd=1):
        return "–" if v is None else f"{v:.{nd}f}"

    name = rows[0][1].name if rows else "?"
    print(f"NVML (seekwatch GpuCollector) vs `nvidia-smi --query-gpu={SMI_FIELDS}` on {name}; "
          f"load: {load}; {args.seconds:.0f} s, every {args.interval:g} s.\n")
    print("| t (s) | gpu | util % NVML | util % smi | mem used MiB NVML | mem used MiB smi | temp °C NVML | temp °C smi | power W NVML | power W smi |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    diffs: dict[str, list[float]] = {"util": [], "mem": [], "temp": [], "power": []}
    for t, r, o in rows:
        util = None if r.utilization_ratio is None else r.utilization_ratio * 100
        mem = None if r.memory_used_bytes is None else r.memory_used_bytes / 2**20
        print(f"| {t} | {r.index} | {f(util, 0)} | {f(o.get('util'), 0)} | {f(mem, 0)} | {f(o.get('mem_used_mib'), 0)} "
              f"| {f(r.temperature_celsius, 0)} | {f(o.get('temp'), 0)} | {f(r.power_watts)} | {f(o.get('power'))} |")
        for key, a, b in (("util", util, o.get("util")), ("mem", mem, o.get("mem_used_mib")),
                          ("temp", r.temperature_celsius, o.get("temp")), ("power", r.power_watts, o.get("power"))):
            if a is not None and b is not None:
                diffs[key].append(abs(a - b))
    print("\n| field | samples | mean abs diff | max abs diff |")
    print("|---|---:|---:|---:|")
    for key, unit in (("util", "pp"), ("mem", "MiB"), ("temp", "°C"), ("power", "W")):
        d = diffs[key]
        if d:
            print(f"| {key} | {len(d)} | {statistics.fmean(d):.2f} {unit} | {max(d):.2f} {unit} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
