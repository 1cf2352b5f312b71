#!/usr/bin/env python3
"""Runs a notebook's code cells in order in one namespace and prints their output, for
machines without Jupyter (the GPU machine): python3 scripts/run_notebook.py NOTEBOOK.ipynb
Settings travel as environment variables (e.g. MAMBATRON_PAPER_FIGURE for paper_findings)."""
import json
import os
import sys
import time


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    path = sys.argv[1]
    with open(path, encoding="utf-8") as f:
        cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
    os.environ.setdefault("MPLBACKEND", "Agg")  # plt.show() without a display
    namespace = {"__name__": "__main__"}
    for i, cell in enumerate(cells, 1):
        source = "".join(cell["source"])
        t0 = time.perf_counter()
        print(f"---- cell {i}/{len(cells)}", flush=True)
        exec(compile(source, f"{os.path.basename(path)}[cell {i}]", "exec"), namespace)
        print(f"---- cell {i} done in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
