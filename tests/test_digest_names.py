"""Classes, functions and enums inside values are named by module and qualified
name (a script's ``__main__`` as the module its file would be imported as), so
two of one name in two modules are different values (SPEC §6)."""

import json
import subprocess
import sys
import textwrap

import pytest

MODULE = textwrap.dedent("""
    import enum

    class Engine:
        def __init__(self):
            self.power = 3

    def make():
        return 1

    class Mode(enum.Enum):
        ON = 1

    if __name__ == "__main__":
        import json, sys
        from flowing.keys.digest import value_digest
        print(json.dumps([value_digest(Engine()), value_digest(make), value_digest(Mode.ON)]))
""")

FLOW = textwrap.dedent("""
    import json, sys
    from flowing import Flow, task
    import fast, slow

    KIND = sys.argv[2]

    @task(cache=False)
    def source():
        module = fast if open("which.txt").read() == "fast" else slow
        return {"engine": module.Engine(), "function": module.make,
                "enum": module.Mode.ON}[KIND]

    @task(depends_on=[source])
    def origin(source):
        return getattr(source, "__module__", None) or type(source).__module__

    flow = Flow(origin, journal_path=sys.argv[1], log=False)
    flow.run()
    print(json.dumps([flow.value(origin), flow.results["origin"].cached]))
""")


@pytest.fixture
def project(tmp_path):
    for name in ("fast", "slow"):
        (tmp_path / f"{name}.py").write_text(MODULE)
    (tmp_path / "flow.py").write_text(FLOW)
    return tmp_path


def _python(project, env, *args):
    out = subprocess.run([sys.executable, *args], cwd=project, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_one_name_in_two_modules_digests_differently(project, repo_env):
    code = ("import json, fast, slow\nfrom flowing.keys.digest import value_digest\n"
            "print(json.dumps([[value_digest(v) for v in (m.Engine(), m.make, m.Mode.ON)] "
            "for m in (fast, slow)]))")
    fast, slow = _python(project, repo_env, "-c", code)
    assert None not in fast + slow
    assert all(f != s for f, s in zip(fast, slow))


def test_a_script_and_its_import_agree(project, repo_env):
    as_script = _python(project, repo_env, "fast.py")
    imported = _python(project, repo_env, "-c", (
        "import json, fast\nfrom flowing.keys.digest import value_digest\n"
        "print(json.dumps([value_digest(fast.Engine()), value_digest(fast.make), "
        "value_digest(fast.Mode.ON)]))"))
    assert as_script == imported == _python(project, repo_env, "-m", "fast")
    assert None not in as_script


@pytest.mark.parametrize("kind", ["engine", "function", "enum"])
def test_a_dependent_of_a_value_from_another_module_runs_again(project, repo_env, kind):
    journal = str(project / "run.jsonl")
    (project / "which.txt").write_text("fast")
    assert _python(project, repo_env, "flow.py", journal, kind) == ["fast", False]
    assert _python(project, repo_env, "flow.py", journal, kind) == ["fast", True]  # same value
    (project / "which.txt").write_text("slow")
    assert _python(project, repo_env, "flow.py", journal, kind) == ["slow", False]
