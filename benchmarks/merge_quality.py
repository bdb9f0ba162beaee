#!/usr/bin/env python3
"""Replace rows of a quality table (benchmarks/results/quality-<model>-c<ctx>.json, from
bench_quality.py) with the rows of a newer run over the same model, text, context and chunks, and
rewrite its .md/.json/.png. For re-measuring only the cache types a change affects: the other rows
keep their earlier run (the f16 reference, text and chunks are the same; the table says which rows
came from which run).

    python benchmarks/merge_quality.py OLD.json NEW.json [--drop TYPES] [--note TEXT] [--old-how TEXT]

--drop removes rows that the change affected but the newer run did not measure again.
"""
import argparse
import json
from pathlib import Path

from tq_llamacpp import compare as cmp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--drop", default="", help="comma-separated row types to leave out")
    ap.add_argument("--note", default="")
    ap.add_argument("--old-how", default=None, help="what the other rows are, instead of the old table's description")
    a = ap.parse_args()
    old, new = json.loads(Path(a.old).read_text()), json.loads(Path(a.new).read_text())
    for key in ("model", "ctx", "chunks"):
        if old["meta"][key] != new["meta"][key]:
            raise SystemExit(f"{key} differs: {old['meta'][key]} vs {new['meta'][key]}")
    fresh = {r["type"]: r for r in new["results"]}
    drop = set(filter(None, a.drop.split(",")))
    rows = [fresh.pop(r["type"], r) for r in old["results"] if r["type"] not in drop or r["type"] in fresh]
    rows += list(fresh.values())
    meta = dict(old["meta"])
    other = a.old_how if a.old_how is not None else old["meta"]["how"]
    kept = [r["type"] for r in rows if r["type"] not in {x["type"] for x in new["results"]}]
    meta["how"] = (f"Rows {', '.join(r['type'] for r in new['results'])}: {new['meta']['how']} "
                   + (f"Rows {', '.join(kept)}: {other} " if kept else "") + a.note).strip()
    results = [cmp.Result(**r) for r in rows]
    out = Path(a.old)
    for p in cmp.write_outputs(results, out.parent, meta, stem=out.stem):
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
