"""`python -m benchmarks [--quick] [NAME...]`: run every `benchmarks/bench_*.py` module's `run(quick)`.

NAME picks modules by name (`analyzer` or `bench_analyzer`). Each module runs even when an
earlier one failed; the exit code is 1 when any failed (a missed target or a planted leak not
found raises), else 0.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path


def modules() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, at most about a minute per module (CI)")
    parser.add_argument("--list", action="store_true", help="list the benchmark modules and exit")
    parser.add_argument("names", nargs="*", help="run only these modules (e.g. analyzer)")
    args = parser.parse_args(argv)
    names = modules()
    if args.list:
        print("\n".join(names))
        return 0
    if args.names:
        wanted = {n if n.startswith("bench_") else f"bench_{n}" for n in args.names}
        unknown = wanted - set(names)
        if unknown:
            parser.error(f"no such benchmark: {', '.join(sorted(unknown))} (have: {', '.join(names)})")
        names = [n for n in names if n in wanted]
    failed: list[str] = []
    summary: list[str] = []
    for name in names:
        print(f"\n=== {name} ({'quick' if args.quick else 'full'}) ===", flush=True)
        began = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            module.run(quick=args.quick)
        except Exception:  # report and go on with the next module
            traceback.print_exc()
            failed.append(name)
            outcome = "FAILED"
        else:
            outcome = "ok"
        summary.append(f"{name}: {outcome} in {time.perf_counter() - began:.1f} s")
        sys.stdout.flush()
    print("\n=== summary ===")
    print("\n".join(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
