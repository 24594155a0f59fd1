"""One of the concurrent writers of test_store: claims shared jobs by key and saves an evaluation
for each job it wins, plus evaluations of its own; prints the keys it ran, one per line."""

from __future__ import annotations

import sys
import time

from bench.claims import claim_job
from results.store import Store
from test_store import EVAL, EXAMPLE, attack_row, checkpoint_row


def main(url: str, name: str, shared: int, own: int) -> None:
    store = Store(url)
    checkpoint = checkpoint_row(store)
    store.dataset_id("e" * 64, {"name": "shared", "n_train": 1, "n_test": 1})  # both insert it at once
    examples = [{**EXAMPLE, "example_index": i} for i in range(50)]
    ran = []
    for key in [f"shared-{i}" for i in range(shared)] + [f"{name}-{i}" for i in range(own)]:
        with claim_job(store, key, "evaluate", key, lambda: store.has_evaluation(key), poll_seconds=0.05) as mine:
            if mine:
                time.sleep(0.02)  # hold the claim a moment, so that the other writer meets it
                store.save_evaluation({**EVAL, "key": key, "checkpoint_id": checkpoint},
                                      [attack_row(50, examples)])
                ran.append(key)
    print("\n".join(ran))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
