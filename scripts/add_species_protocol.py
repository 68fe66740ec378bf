"""Adding a species without retraining, measured (issue 15): train the bench recipe without two
species, add one of them from k photos with ``jianmu add-species`` and keep the other unseen.

    python scripts/add_species_protocol.py [--data ../shared/datasets/wood-swfu5]
        [--out runs/add-species] [--k 1,3,5,10] [--pairs 5] [--epochs 20]

The split is by pseudo-specimen (ten consecutive numbers, datasets/wood-swfu5.md), so the added
photos and the test photos of the added species never share a specimen. The k photos come from
the added species' training photos, one per pseudo-specimen in turn (a handful of specimens, as a
lab gets them). Pair i holds out species i and i+1 (5 species: each is added once and kept
unseen once). Per pair and k, on the test split:

- the added species' top-1 (top class), and its share answered "species, correct";
- the known species' top-1 before and after (the change, in points);
- the still-unseen species (all its photos): the share rejected (unknown, or a correct higher
  rank) before and after.

Trained runs are reused. Writes ``add-species.json`` and ``add-species.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from jianmu.bundle import load_model
from jianmu.calibration.apply import calibrated_views
from jianmu.config import load_config
from jianmu.data.samples import find_samples, natural_key
from jianmu.data.split import split_samples, write_manifest
from jianmu.engine.add_species import add_species
from jianmu.engine.export import export
from jianmu.engine.train import train
from jianmu.rundir import RunDir

RECIPE = Path(__file__).resolve().parents[1] / "configs/bench/wood-swfu5.yaml"
PSEUDO_SPECIMENS = r"^(?P<specimen>.+\D\d\d)\d$"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/wood-swfu5"))
    parser.add_argument("--out", type=Path, default=Path("runs/add-species"))
    parser.add_argument("--k", default="1,3,5,10")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    ks = [int(k) for k in args.k.split(",")]
    overrides = [
        f"data.root={args.data}",
        f"data.specimen_pattern={PSEUDO_SPECIMENS}",
        f"train.epochs={args.epochs}",
    ]
    config = load_config(RECIPE, overrides)
    samples = find_samples(args.data, config.data.extensions, config.data.specimen_pattern)
    rows = split_samples(samples, None, config.data, seed=config.seed, root=args.data).rows
    classes = sorted({row.label for row in rows}, key=natural_key)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for pair in range(min(args.pairs, len(classes))):
        added, unseen = classes[pair], classes[(pair + 1) % len(classes)]
        results += run_pair(config, args, rows, classes, added, unseen, ks)
        (args.out / "add-species.json").write_text(json.dumps(results, indent=2))
    (args.out / "add-species.md").write_text(table(results, ks))
    print(table(results, ks))


def run_pair(config, args, rows, classes, added, unseen, ks) -> list[dict]:
    folder = args.out / f"without-{added}-{unseen}"
    run = RunDir(folder / "run")
    known_rows = [row for row in rows if row.label not in (added, unseen)]
    if not run.is_finished():
        manifest = write_manifest(folder / "manifest.csv", known_rows)
        data = config.data.model_copy(update={"manifest": manifest})
        train(config.model_copy(update={"out": run.path, "data": data}))
    onnx = folder / "model.onnx"
    if not onnx.is_file():
        export(load_config(None, [f"out={onnx}"]), run.path)
    base = load_model(onnx)
    views = calibrated_views(base.meta)
    root = Path(args.data)
    test_known = [row for row in known_rows if row.split == "test"]
    test_added = [root / row.path for row in rows if row.label == added and row.split == "test"]
    unseen_photos = [root / row.path for row in rows if row.label == unseen]
    before_known = top1(base, [root / r.path for r in test_known], [r.label for r in test_known])
    before_unseen = rejected(base, unseen_photos, unseen, views)
    train_added = [row for row in rows if row.label == added and row.split == "train"]
    found = []
    for k in ks:
        chosen = pick(train_added, k)
        species_folder = folder / f"k{k}" / added
        for row in chosen:
            link = species_folder / row.specimen.split("/", 1)[-1] / Path(row.path).name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to((root / row.path).resolve())
        started = time.perf_counter()
        settings = load_config(None, [f"out={folder / f'k{k}.onnx'}"])
        result = add_species(settings, onnx, [species_folder])
        seconds = time.perf_counter() - started
        model = load_model(result.path)
        index = model.classes.index(added)
        outputs = model.run([(p, index) for p in test_added], views)
        prediction = model.predict_outputs(outputs.logits, outputs.embeddings, views)
        added_top1 = float(np.mean(outputs.logits.argmax(1) == index))
        added_species = float(
            np.mean([r == "species" and t == model.species[index]
                     for r, t in zip(prediction.rank, prediction.taxon, strict=True)])
        )  # fmt: skip
        after_known = top1(
            model, [root / r.path for r in test_known], [r.label for r in test_known]
        )
        found.append(
            {
                "added": added,
                "unseen": unseen,
                "k": k,
                "specimens": len({row.specimen for row in chosen}),
                "added_test_photos": len(test_added),
                "added_top1": added_top1,
                "added_answered_species": added_species,
                "known_top1_before": before_known,
                "known_top1_after": after_known,
                "known_drop_points": 100 * (before_known - after_known),
                "unseen_rejected_before": before_unseen,
                "unseen_rejected_after": rejected(model, unseen_photos, unseen, views),
                "add_seconds": seconds,
            }
        )
        print(json.dumps(found[-1]))
    return found


def pick(rows, k: int) -> list:
    """k photos, one per pseudo-specimen in turn (specimens in natural order)."""
    by_specimen: dict[str, list] = {}
    for row in sorted(rows, key=lambda r: natural_key(r.path)):
        by_specimen.setdefault(row.specimen, []).append(row)
    groups = [by_specimen[name] for name in sorted(by_specimen, key=natural_key)]
    chosen, turn = [], 0
    while len(chosen) < k and any(groups):
        group = groups[turn % len(groups)]
        if group:
            chosen.append(group.pop(0))
        turn += 1
    return chosen


def top1(model, paths, labels) -> float:
    """Top-1 (top class) of photos of known classes, with the views the model was calibrated for."""
    index = {name: i for i, name in enumerate(model.classes)}
    items = [(p, index[label]) for p, label in zip(paths, labels, strict=True)]
    outputs = model.run(items, calibrated_views(model.meta))
    return float(np.mean(outputs.logits.argmax(1) == outputs.targets))


def rejected(model, paths, species_folder: str, views: int) -> float:
    """Share of photos of a species the model does not know answered unknown, or at a higher
    rank with the right taxon."""
    from jianmu.taxonomy import lineage_of, load_taxonomy

    taxonomy = load_taxonomy(model.meta["taxonomy"]["domain"])
    truth = lineage_of(species_folder, taxonomy).to_dict()
    outputs = model.run([(p, -1) for p in paths], views)
    prediction = model.predict_outputs(outputs.logits, outputs.embeddings, views)
    good = [
        rank == "unknown" or (rank != "species" and taxon == truth.get(rank))
        for rank, taxon in zip(prediction.rank, prediction.taxon, strict=True)
    ]
    return float(np.mean(good))


def worst(rows: list[dict]) -> float:
    return max(r["known_drop_points"] for r in rows)


def table(results: list[dict], ks: list[int]) -> str:
    lines = [
        "| k | pairs | added top-1 | added answered species | known top-1 drop (points) | "
        "unseen rejected before | after | add-species s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k in ks:
        rows = [r for r in results if r["k"] == k]
        if not rows:
            continue

        def mean(key: str, rows=rows) -> float:
            return float(np.mean([r[key] for r in rows]))

        lines.append(
            f"| {k} | {len(rows)} | {mean('added_top1'):.1%} | {mean('added_answered_species'):.1%}"
            f" | {mean('known_drop_points'):.2f} (max {worst(rows):.2f})"
            f" | {mean('unseen_rejected_before'):.1%} | {mean('unseen_rejected_after'):.1%}"
            f" | {mean('add_seconds'):.1f} |"
        )
    lines += ["", "Per pair:", ""]
    lines += ["| added | unseen | k | added top-1 | known drop | unseen before -> after |"]
    lines += ["|---|---|---:|---:|---:|---|"]
    for r in results:
        lines.append(
            f"| {r['added']} | {r['unseen']} | {r['k']} | {r['added_top1']:.1%} | "
            f"{r['known_drop_points']:.2f} | {r['unseen_rejected_before']:.1%} -> "
            f"{r['unseen_rejected_after']:.1%} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
