"""Continue a failed run in a fresh process, from the journal.

The script runs itself twice as a child process: the first time the `parse`
step is broken and fails; the second time it is fixed, and only `parse` and
what depends on it run - `download` is replayed from the journal.
Run it: python3 examples/resume_journal.py
"""

import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowing import Flow, task  # noqa: E402


@task
def download():
    time.sleep(0.5)  # expensive: we don't want to pay for it twice
    print("  download ran")
    return [5, 3, 8, 1]


@task(depends_on=[download])
def parse(download):
    print("  parse ran")
    if os.environ.get("PARSER_BROKEN") == "1":
        raise ValueError("parser bug")
    return sorted(download)


@task(depends_on=[parse])
def report(parse):
    print("  report ran")
    return f"min {parse[0]}, max {parse[-1]}"


def child(journal):
    flow = Flow(report, journal_path=journal, log=False)
    flow.run()
    print(flow.summary())
    return 0 if flow.ok else 1


def main():
    journal = os.path.join(tempfile.mkdtemp(), "run.jsonl")
    for attempt, broken in ((1, "1"), (2, "0")):
        print(f"== process {attempt}: parser {'broken' if broken == '1' else 'fixed'} ==")
        env = dict(os.environ, PARSER_BROKEN=broken)
        code = subprocess.run([sys.executable, __file__, journal], env=env).returncode
        print(f"   exit status {code}\n")
    subprocess.run([sys.executable, "-m", "flowing", "journal", "show", journal],
                   env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
                       os.path.abspath(__file__))) + os.pathsep + os.environ.get("PYTHONPATH", "")))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit(child(sys.argv[1]))
    main()
