"""The three gates: when (skip), validate (fail before the body), retry_until
(retry until the value is acceptable). Run it: python3 examples/gates.py"""

import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowing import Flow, task  # noqa: E402


@task
def question():
    return {"text": "What is the capital of France?", "lang": "en"}


def has_text(question):
    if not question["text"].strip():
        raise ValueError("empty question: nothing to answer")


drafts = itertools.count(1)


@task(depends_on=[question], validate=has_text, retry=4, retry_backoff_base_ms=10,
      retry_until=lambda answer: "Paris" in answer)
def answer(question):
    n = next(drafts)  # stands for a model call that gets it right on the third try
    return "Paris is the capital." if n >= 3 else f"draft {n}: not sure"


@task(depends_on=[question], when=lambda question: question["lang"] != "en")
def translate(question):
    return "translated"  # skipped: the question is already in English


@task(depends_on=[answer])
def publish(answer):
    return f"published: {answer}"


if __name__ == "__main__":
    flow = Flow(publish, translate, log=False)
    flow.run()
    print(flow.summary())
    print(flow.results["translate"].reason)   # when() returned False
    print(flow.value(publish))
