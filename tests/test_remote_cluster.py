"""A real Dask cluster that has nothing of the user's (SPEC §7b): a ``dask scheduler``
and two ``dask worker`` processes started once for this module in their own folder,
with a PYTHONPATH without this checkout (the fixture proves a worker cannot import
flowing). The script runs in another folder, in fresh processes, with tasks in
``__main__`` and in a module beside it, a package only on the script's PYTHONPATH,
a ``local=True`` step that writes the outputs, and a journal.

Every body records ``os.getpid()``: the workers' pids prove where bodies ran."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

from dask_cluster import clean_env, external_cluster  # noqa: E402

REPO = str(Path(__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    with external_cluster(folder, workers=2) as address:
        import importlib

        with distributed.Client(address, timeout=30) as client:
            # nothing of ours is importable there
            tried = client.submit(importlib.import_module, "flowing", pure=False)
            assert isinstance(tried.exception(timeout=30), ImportError)
            pids = set(client.run(os.getpid).values())
        assert len(pids) == 2
        yield address, pids, folder


STEPS = '''\
import os

from flowing import task


@task
def load():
    return {"pid": os.getpid(), "numbers": list(range(10))}
'''

MAIN = '''\
import json
import os
import sys

import onlyhere  # a package found on the script's PYTHONPATH alone
from distributed import Client
from flowing import Flow, task

from steps import load


@task(depends_on=[load])
def square(load):
    return {"pid": os.getpid(), "squares": [n * n for n in load["numbers"]]}


@task
def needs_onlyhere():
    return onlyhere.answer()


@task(depends_on=[load, square], local=True)
def write(load, square):
    with open("scores.json", "w") as f:
        json.dump(square["squares"], f)
    return {"pid": os.getpid(), "cwd": os.getcwd()}


if __name__ == "__main__":
    with Client(sys.argv[1], timeout=30) as client:
        results = Flow(write, executor=client, journal_path="run.jsonl", log=False).run()
        other = Flow(needs_onlyhere, executor=client, log=False).run()["needs_onlyhere"]
    report = {name: {"state": str(r.state), "value": r.value, "cached": r.cached,
                     "error": None if r.error is None else repr(r.error)}
              for name, r in results.items()}
    report["needs_onlyhere"] = {"state": str(other.state), "attempts": other.attempts,
                                "error": type(other.error).__name__, "text": str(other.error)}
    report["pid"] = os.getpid()
    print("REPORT " + json.dumps(report))
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    script, extra = root / "script", root / "extra" / "onlyhere"
    script.mkdir()
    extra.mkdir(parents=True)
    (extra / "__init__.py").write_text("def answer():\n    return 42\n")
    (script / "steps.py").write_text(STEPS)
    (script / "flow.py").write_text(MAIN)
    return script


def run_script(script: Path, address: str) -> dict:
    env = clean_env()
    env["PYTHONPATH"] = os.pathsep.join([REPO, str(script.parent / "extra")])
    proc = subprocess.run([sys.executable, "flow.py", address], cwd=script, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = [x for x in proc.stdout.splitlines() if x.startswith("REPORT ")]
    assert line, proc.stdout + proc.stderr
    return json.loads(line[0][len("REPORT "):])


@pytest.fixture(scope="module")
def first_run(cluster, project):
    return run_script(project, cluster[0])


def test_bodies_run_on_the_workers_with_nothing_installed_there(cluster, first_run):
    _, workers, _ = cluster
    r = first_run
    assert r["load"]["state"] == "succeeded", r["load"]  # a task of the script's module
    assert r["square"]["state"] == "succeeded", r["square"]  # a task of __main__
    assert r["load"]["value"]["pid"] in workers
    assert r["square"]["value"]["pid"] in workers
    assert r["square"]["value"]["squares"] == [n * n for n in range(10)]


def test_a_local_step_runs_in_the_script_and_writes_its_folder(cluster, project, first_run):
    _, _, cluster_folder = cluster
    w = first_run["write"]
    assert w["state"] == "succeeded", w
    assert w["value"]["pid"] == first_run["pid"]
    assert Path(w["value"]["cwd"]) == project
    assert json.loads((project / "scores.json").read_text()) == [n * n for n in range(10)]
    assert not list(cluster_folder.rglob("scores.json"))


def test_a_module_the_workers_cannot_import_is_cannot_ship_naming_it(first_run):
    r = first_run["needs_onlyhere"]
    assert r["state"] == "failed" and r["attempts"] == 1
    assert r["error"] == "CannotShip", r  # never WorkerLost: no worker died
    assert "'onlyhere'" in r["text"] and "install" in r["text"]
    assert "local=True" in r["text"]


def test_a_fresh_process_replays_the_journal_and_edited_modules_reach_the_workers(
        cluster, project, first_run):
    address, workers, _ = cluster
    again = run_script(project, address)
    for name in ("load", "square", "write"):
        assert again[name]["state"] == "succeeded" and again[name]["cached"], again[name]
    assert again["square"]["value"] == first_run["square"]["value"]
    # the script's module changes: the workers run the new code (a new bundle)
    steps = project / "steps.py"
    steps.write_text(STEPS.replace("range(10)", "range(3)"))
    edited = run_script(project, address)
    assert not edited["load"]["cached"] and edited["load"]["value"]["numbers"] == [0, 1, 2]
    assert edited["square"]["value"]["squares"] == [0, 1, 4]
    assert edited["square"]["value"]["pid"] in workers
    assert json.loads((project / "scores.json").read_text()) == [0, 1, 4]


def test_a_cluster_that_cannot_deserialize_the_call_is_cannot_ship(cluster):
    """The engine's own refusal to load a call (here: a body shipped by reference
    from a module no worker has, submitted around flowing's shipping) is classified
    as CannotShip by the runner, never as a lost worker."""
    code = textwrap.dedent('''
        import sys
        from distributed import Client
        from flowing import Flow, task
        import flowing.runners.shipping as shipping
        shipping.prepare = lambda client, names=None: None  # as if the workers had all
        @task
        def hello():
            return 42
        with Client(sys.argv[1], timeout=30) as client:
            r = Flow(hello, executor=client, log=False).run()["hello"]
        print(type(r.error).__name__, r.attempts)
        print(r.error)
    ''')
    env = clean_env()
    env["PYTHONPATH"] = REPO
    proc = subprocess.run([sys.executable, "-c", code, cluster[0]], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, text = proc.stdout.split("\n", 1)
    assert first == "CannotShip 1", proc.stdout
    assert "'hello'" in text and "install flowing" in text


BIG = '''\
import os
import sys

from distributed import Client
from flowing import Flow, task

MB = 1 << 20


@task
def load():
    return b"x" * (300 * MB)


@task(depends_on=[load])
def size(load):
    return {"pid": os.getpid(), "size": len(load)}


@task(depends_on=[size], local=True)
def sink(size):
    return {"here": os.getpid(), **size}


if __name__ == "__main__":
    with Client(sys.argv[1], timeout=30) as client:
        results = Flow(sink, executor=client, log=False).run()
        print("SINK", results["sink"].value)
        print("SCRIPT", os.getpid())
        print("LOADED", results["load"].value_loaded)
        # this process's own peak (ru_maxrss would include the parent's at fork time)
        with open("/proc/self/status") as f:
            peak = [int(line.split()[1]) for line in f if line.startswith("VmHWM:")][0]
        print("PEAK_MB", peak // 1024)
        print("READ", len(results["load"].value))  # on first access, while the client is open
'''


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM")
def test_a_300mb_value_stays_on_the_workers(cluster, project):
    address, workers, _ = cluster
    (project / "big.py").write_text(BIG)
    env = clean_env()
    env["PYTHONPATH"] = REPO
    proc = subprocess.run([sys.executable, "big.py", address], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    sink = ast.literal_eval(out["SINK"])
    assert sink["size"] == 300 << 20 and sink["pid"] in workers
    assert sink["here"] == int(out["SCRIPT"])
    assert out["LOADED"] == "False"  # never fetched by the run itself
    assert int(out["PEAK_MB"]) < 150, proc.stdout + proc.stderr[-3000:]  # the 300 MB never came here
    assert int(out["READ"]) == 300 << 20  # and can still be read when asked for
