"""Scaling: synthetic classification data of 10k, 100k and 1M rows × 20 columns through the whole pipeline
(`mlops-nb run --config` with data.source a generated Parquet file): wall time and peak memory per stage, where the
time goes inside each stage (py-spy, innermost mlops_nb function), and a log-log plot. Writes results/scaling.json
and results/scaling.png.
"""
from __future__ import annotations

import json, sys, tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import GIB, HERE, parser, write_result  # noqa: E402
from bench_pipeline import PY_SPY, STAGES, pipeline_run  # noqa: E402
from datagen import classification_frame  # noqa: E402

TARGETS = {"max_growth_exponent": 1.0, "seconds_at_1m": 1200, "peak_gib_at_1m": 6}


def write_project(folder: Path, n: int, seed: int = 0) -> Path:
    "The Parquet data and a config that points at it (own SQLite store in the folder)."
    classification_frame(n, seed).to_parquet(folder / "data.parquet")
    cfg = {"name": f"scale_{n}", "data": {"source": "data.parquet", "target": "released", "positive_label": "Yes",
                                          "sensitive_features": ["colour", "sex"], "time_column": "year"},
           "tracking": {"uri": "sqlite:///mlruns.db"}, "pipeline": {"stage_timeout": 3600}}
    path = folder / "config.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def one_size(n: int, tmp: Path, profile: bool, stages: str | None = None) -> dict:
    folder = tmp / f"rows_{n}"; folder.mkdir()
    config = write_project(folder, n)
    raw = folder / "profile.txt" if profile and PY_SPY.exists() else None
    r = pipeline_run(folder, config, profile=raw, timeout=4 * 3600, stages=stages)
    peaks = dict(zip(r["stage_seconds"], r["peak_rss_by_kernel_bytes"]))
    return {"rows": n, "status": r["status"], "wall_seconds": r["wall_seconds"], "stage_seconds": r["stage_seconds"],
            "stage_peak_rss_bytes": peaks, "peak_tree_rss_bytes": r["peak_tree_rss_bytes"], "peak_rss_cli_bytes": r["peak_rss_cli_bytes"],
            "render_seconds": {k: v["seconds"] for k, v in r["render"]["stages"].items()}, "breakdown": r["breakdown"],
            "outside_stages_seconds": r["outside_stages_seconds"], "profiled": raw is not None,
            "profile_by_stage": r["profile_by_stage"]}


def growth(results: list[dict]) -> dict:
    "Log-log slope between consecutive sizes, per stage and overall (1 = linear in rows)."
    out = {}
    import math
    for a, b in zip(results, results[1:]):
        key = f"{a['rows']}->{b['rows']}"
        k = math.log(b["rows"] / a["rows"])
        out[key] = {"wall": math.log(b["wall_seconds"] / a["wall_seconds"]) / k,
                    **{s: math.log(b["stage_seconds"][s] / a["stage_seconds"][s]) / k for s in a["stage_seconds"] if s in b["stage_seconds"]}}
    return out


def plot(results: list[dict], path: Path) -> Path:
    "Seconds and peak memory per stage against rows, log-log, with a slope-1 guide."
    import matplotlib
    matplotlib.use("Agg")  # a script, not library code: no kernel backend to keep
    import matplotlib.pyplot as plt
    rows = [r["rows"] for r in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in STAGES:
        if all(s in r["stage_seconds"] for r in results):
            a.loglog(rows, [r["stage_seconds"][s] for r in results], "o-", label=s)
            b.loglog(rows, [r["stage_peak_rss_bytes"][s] / GIB for r in results], "o-", label=s)
    a.loglog(rows, [r["wall_seconds"] for r in results], "k^-", label="whole run")
    a.loglog(rows, [results[0]["wall_seconds"] * x / rows[0] for x in rows], "k:", lw=1, label="linear from the smallest")
    a.set_xlabel("rows"); a.set_ylabel("seconds"); a.set_title("time per stage", fontsize=10); a.legend(fontsize=7)
    b.set_xlabel("rows"); b.set_ylabel("peak RSS of the stage's kernel (GiB)"); b.set_title("peak memory per stage", fontsize=10)
    b.legend(fontsize=7)
    for ax in (a, b): ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout(); fig.savefig(path, dpi=90); plt.close(fig)
    return path


def main(argv=None) -> Path:
    p = parser(__doc__)
    p.add_argument("--sizes", default="10000,100000,1000000", help="rows, comma-separated")
    p.add_argument("--no-profile", action="store_true", help="no py-spy (it samples without pausing; overhead is small)")
    a = p.parse_args(argv)
    sizes = [500, 1000] if a.smoke else [int(s) for s in a.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        for n in sizes:
            results.append(one_size(n, Path(tmp), profile=not a.smoke and not a.no_profile, stages="eda" if a.smoke else None))
            print(f"{n:>9,} rows: {results[-1]['wall_seconds']:.1f}s {results[-1]['stage_seconds']}", file=sys.stderr)
    a.out.mkdir(parents=True, exist_ok=True)
    png = plot(results, a.out / "scaling.png")
    return write_result("scaling", {"smoke": a.smoke, "targets": TARGETS, "sizes": results, "growth": growth(results),
                                    "plot": png.name}, a.out)


if __name__ == "__main__":
    print(main())
