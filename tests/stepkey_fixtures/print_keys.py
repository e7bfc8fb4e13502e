"""Print the step keys of every task in a module file as JSON ``{task name: key}``.

Usage: ``python3 print_keys.py REPO MODULE_FILE [import|main]``

``import`` loads the file as module ``flowmod``; ``main`` runs it as ``__main__``,
like ``python3 flowmod.py`` would. Keys chain through dependencies exactly as a
run does: a task's dependency keys are computed first.
"""

import importlib.util
import json
import os
import runpy
import sys


def load(path: str, mode: str) -> dict:
    if mode == "main":
        return runpy.run_path(path, run_name="__main__")
    spec = importlib.util.spec_from_file_location("flowmod", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["flowmod"] = module
    spec.loader.exec_module(module)
    return vars(module)


def main() -> None:
    repo, path = sys.argv[1], sys.argv[2]
    mode = sys.argv[3] if len(sys.argv) > 3 else "import"
    sys.path.insert(0, repo)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    from flowing.keys.stepkey import compute_step_key
    from flowing.tasks import TaskDef

    namespace = load(path, mode)
    keys: dict[str, str] = {}

    def key(td) -> str:
        if td.name not in keys:
            keys[td.name] = compute_step_key(td, [key(dep) for dep in td.depends_on])
        return keys[td.name]

    for value in list(namespace.values()):
        if isinstance(value, TaskDef):
            key(value)
    print(json.dumps(keys, sort_keys=True))


if __name__ == "__main__":
    main()
