#!/usr/bin/python3
"""experiments/run and scripts/bench-sweep leave the committed results alone
unless asked (issue 14, item 11): run.py's destination logic with a stub
experiment, so no sweep runs; bench-sweep's default CSV path from its code.

    tests/test_script_outputs.py        (exit 0: pass; 1: fail)
"""
import importlib.util
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_run(here):
    """experiments/run.py as a module whose experiment folder is `here`."""
    spec = importlib.util.spec_from_file_location("experiments_run", ROOT / "experiments" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.HERE = here
    module.GRADNOISE = sys.executable  # exists; the stub never runs it
    return module


def check(condition, message):
    if not condition:
        print(f"FAIL: {message}", file=sys.stderr)
        sys.exit(1)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        here = Path(tmp) / "experiments"
        (here / "stub").mkdir(parents=True)
        (here / "stub" / "config.json").write_text("{}")
        committed = here / "stub" / "results.json"
        committed.write_text('{"committed": true}\n')
        run = load_run(here)
        run.EXPERIMENTS = {"stub": lambda config, out: run.save_results("stub", {"fresh": True})}
        sys.argv = ["experiments/run", "stub"]
        run.main()
        check(json.loads(committed.read_text()) == {"committed": True},
              "experiments/run rewrote the committed results.json without --update-committed")
        check(json.loads((here / "stub" / "out" / "results.json").read_text()) == {"fresh": True},
              "experiments/run did not write out/results.json")
        sys.argv = ["experiments/run", "stub", "--update-committed"]
        run.main()
        check(json.loads(committed.read_text()) == {"fresh": True},
              "--update-committed did not refresh the committed results.json")

    source = (ROOT / "scripts" / "bench-sweep").read_text()
    default = re.search(r'folder = \(([^)]*)\) if args.update_docs else \(([^)]*)\)', source)
    check(default is not None, "scripts/bench-sweep: no default output folder found")
    check('"build"' in default.group(2) and '"docs"' in default.group(1),
          "scripts/bench-sweep writes docs/bench by default")
    print("script outputs: ok")


if __name__ == "__main__":
    main()
