"""Put the cached real-trained classifiers of `thorax evaluate` (the judges) into training/judges/, so that
every machine judges with the same ones (see training/classifier_cache.py).

    python scripts/ship-judges.py            # every cached judge with evaluate's defaults (small, 15 epochs)
    python scripts/ship-judges.py --list     # only show what is cached

Run it after `thorax evaluate` has trained the judges whose figures go into the README."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training import classifier_cache  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="show the cached judges, ship nothing")
    args = parser.parse_args()
    root = classifier_cache.cache_root()
    for meta_path in sorted((root / "classifiers").glob("*.json")):
        key = json.loads(meta_path.read_text())["key"]
        wanted = key["classifier"] == "small" and key["epochs"] == 15
        what = (f"{','.join(key['patient_prefixes']) or 'all'} {key['input_px']} px seed {key['seed']}"
                f"{' balanced' if key.get('balanced') else ''}")  # fmt: skip
        if args.list or not wanted:
            print(f"{meta_path.stem}: {what}{'' if wanted else ' (not the defaults: left)'}")
            continue
        target = classifier_cache.ship_classifier(root, key)
        print(f"{meta_path.stem}: {what} -> {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
