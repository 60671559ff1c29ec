"""``db``: look at the review database and apply a batch of reviewed labels from a CSV (each an audited edit)."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.cohort.cohort_file import default_cohort_path, load_cohort
from core.cohort.labels import read_labels
from core.errors import InputError
from core.review.queue import open_cohort_store


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="review database: status, history, apply a CSV of reviewed labels")
    dsub = p.add_subparsers(dest="db_command", metavar="ACTION")
    dsub.required = True
    s = dsub.add_parser("status", help="slides, reviewed slides, flags and audit rows")
    s.set_defaults(func=cmd_status)
    h = dsub.add_parser("history", help="the audit trail of one slide")
    h.add_argument("image_id")
    h.set_defaults(func=cmd_history)
    a = dsub.add_parser("apply", help="relabel slides from a CSV image_id,label[,is_outlier,exclude] (audited)")
    a.add_argument("csv", type=Path)
    a.add_argument("--reviewer", required=True, help="who is making these edits")
    a.add_argument("--reason", required=True, help="why (kept in the audit log)")
    a.set_defaults(func=cmd_apply)
    for q in (s, h, a):
        q.add_argument("--cohort", type=Path, default=None, help="cohort TOML (default: $SLIDELENS_COHORT or demo)")


def _store(args: argparse.Namespace):  # noqa: ANN202 - Store
    return open_cohort_store(load_cohort(args.cohort or default_cohort_path()))


def cmd_status(args: argparse.Namespace) -> int:
    store = _store(args)
    states, max_id, reviewers = store.snapshot()
    vals = list(states.values())
    print(f"database:  {store.url}")
    print(f"slides:    {len(vals)} ({sum(s.label is not None for s in vals)} labelled)")
    print(f"reviewed:  {sum(s.updated_by not in (None, 'import') for s in vals)}")
    print(f"flags:     outlier {sum(s.outlier for s in vals)}, exclude {sum(s.exclude for s in vals)}, "
          f"second opinion {sum(s.second_opinion for s in vals)}")
    print(f"audit log: {max_id} rows; edits by " + (", ".join(f"{k} {v}" for k, v in sorted(reviewers.items()))
                                                   or "nobody yet"))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    store = _store(args)
    store.state(args.image_id)  # a clear error for an unknown id
    for r in store.history(args.image_id):
        print(f"#{r.id} v{r.state_version} {r.describe()}" + (f" [model {r.model_version}]" if r.model_version else ""))
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    store = _store(args)
    states = store.states()
    table = read_labels(args.csv, classes=store.classes() or None, slide_ids=list(states))  # validates everything
    todo = []
    for rec in table.df.to_dict("records"):
        cur = states[rec["image_id"]]
        changes: dict[str, object] = {}
        if rec["label"] and rec["label"] != cur.label:
            changes["label"] = rec["label"]
        for col, flag in (("is_outlier", "outlier"), ("exclude", "exclude")):
            if col in rec:
                val = str(rec[col]).strip().lower() in {"1", "true", "yes", "y", "t"}
                if val != getattr(cur, flag):
                    changes[flag] = val
        if changes:
            todo.append((cur, changes))
    if not args.reviewer.strip():
        raise InputError("--reviewer must not be empty")
    # one transaction: if anyone changed one of these slides since they were read, nothing is applied
    store.edit_many([(cur.image_id, changes, cur.version) for cur, changes in todo], args.reviewer, args.reason)
    print(f"{len(todo)} slide(s) changed, {len(table.df) - len(todo)} already as in {args.csv}")
    return 0
