"""One entry point for the benchmarks and evaluations in bench/.

    python -m bench list               # every benchmark: its name, the BENCHMARKS.md section it owns, what it measures
    python -m bench run NAME [ARGS]    # run one (ARGS go to the script: python -m bench run NAME --help)

NAME is the script's file name without ``bench_`` (bench_img2img.py -> img2img, eval_tiny_shapes.py ->
eval_tiny_shapes, gpu_bench.py -> gpu). Each script names its section in ``SECTION``; the ones that
write it do so through bench.common.update_section, with the command that regenerates it.
"""
from __future__ import annotations

import ast
import importlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
NOT_BENCHES = {"__init__", "__main__", "common"}


def name_of(stem: str) -> str:
    return {"gpu_bench": "gpu"}.get(stem, stem.removeprefix("bench_"))


def benches() -> dict[str, str]:
    """name -> module stem, for every script in bench/."""
    stems = sorted(f[:-3] for f in os.listdir(HERE) if f.endswith(".py") and f[:-3] not in NOT_BENCHES)
    return {name_of(stem): stem for stem in stems}


def describe(stem: str) -> tuple[str, str]:
    """(section, first docstring line) read from the source, without importing it (no torch)."""
    tree = ast.parse(open(os.path.join(HERE, stem + ".py"), encoding="utf-8").read())
    doc = (ast.get_docstring(tree) or "").strip().splitlines()
    section = ""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "SECTION" for t in node.targets):
            section = ast.literal_eval(node.value)
    return section, doc[0] if doc else ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    table = benches()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    if argv[0] == "list":
        width = max(map(len, table))
        for name, stem in table.items():
            section, summary = describe(stem)
            print(f"{name:<{width}}  [{section or '-'}]  {summary}")
        return 0
    if argv[0] == "run":
        name = argv[1] if len(argv) >= 2 else ""
        if name not in table:
            print(f"bench: error: name={name!r} is not a benchmark; one of: {', '.join(table)}", file=sys.stderr)
            return 2
        module = importlib.import_module(f"bench.{table[name]}")
        sys.argv = [f"python -m bench run {name}", *argv[2:]]  # the script's own parser reads its flags
        result = module.main()
        return result if isinstance(result, int) else 0
    print(f"bench: error: command={argv[0]!r} is not known; use `list` or `run NAME [ARGS]`", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
