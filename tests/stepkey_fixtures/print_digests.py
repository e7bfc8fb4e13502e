"""Print ``value_digest`` of every value in a pickled list, as a JSON list.

Usage: ``python3 print_digests.py REPO CORPUS.pickle``
"""

import json
import os
import pickle
import sys


def main() -> None:
    repo, path = sys.argv[1], sys.argv[2]
    sys.path.insert(0, repo)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from flowing.keys.digest import value_digest

    with open(path, "rb") as f:
        corpus = pickle.load(f)
    print(json.dumps([value_digest(v) for v in corpus]))


if __name__ == "__main__":
    main()
