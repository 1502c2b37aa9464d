"""The ``ginseng`` console script.

Exit codes: 0 success, 2 usage error, 1 any other error (one line on stderr; the
traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ._errors import GinsengError


def _demo(args: argparse.Namespace) -> int:
    """Store round trip and training on scanpy's bundled PBMCs, offline."""
    import anndata as ad
    import numpy as np

    import ginseng as gs

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    adata = gs.datasets.pbmc68k_counts()
    print(f"reference: pbmc68k_reduced counts, {adata.n_obs} cells x {adata.n_vars} genes")

    gs.pp.select_hvgs(adata, n_top_genes=args.n_genes)
    print(f"select_hvgs: {int(adata.var['ginseng_genes'].sum())} genes (seurat_v3)")

    h5ad = out / "pbmc68k_counts.h5ad"
    adata.write_h5ad(h5ad)
    backed = ad.read_h5ad(h5ad, backed="r")
    start = time.perf_counter()
    ds = gs.data.GinsengDataset.create(
        out / "pbmc68k.zarr",
        backed,
        label_key="bulk_labels",
        genes="ginseng_genes",
        overwrite=True,
    )
    print(f"store written in {time.perf_counter() - start:.2f} s from the backed file:\n{ds}")
    realised = ds.make_split(fraction=0.2, seed=0)
    print(f"split: test fraction {realised:.3f}, label-stratified")

    X, _ = zip(*ds.stream(batch_size=128, split="all", shuffle=False), strict=True)
    stored = np.vstack(X)
    source = adata[:, adata.var["ginseng_genes"]].X.toarray()[ds.cell_index]
    exact = np.array_equal(stored, source)
    print(f"round trip exact for all {ds.n_cells} cells: {exact}")

    labels = np.concatenate(
        [y for _, y in ds.stream(batch_size=128, split="train", balance_labels=True, seed=0)]
    )
    share = np.bincount(labels, minlength=ds.label_names.size) / labels.size
    print(f"balanced stream label shares: min {share.min():.3f}, max {share.max():.3f}")
    if not exact:
        return 1

    from .data.io import load_model, save_model
    from .train import GinsengClassifierTrainer, GinsengClassifierTrainerSettings

    settings = GinsengClassifierTrainerSettings(holdout_fraction=0.2, seed=0)
    _, state = GinsengClassifierTrainer(ds, settings).fit(epochs=args.epochs)
    save_model(state, out / "pbmc68k_model.h5")
    print(load_model(out / "pbmc68k_model.h5"))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ginseng", description="Train cell-type classifiers and annotate single-cell data."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="offline demo on scanpy's bundled PBMC data")
    demo.add_argument("--out", default="ginseng-demo", help="output folder (default: %(default)s)")
    demo.add_argument(
        "--n-genes", type=int, default=300, help="genes to select (default: %(default)s)"
    )
    demo.add_argument(
        "--epochs", type=int, default=10, help="training epochs (default: %(default)s)"
    )
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``ginseng`` command line; return its exit code."""
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (GinsengError, OSError) as err:
        if args.debug:
            raise
        print(f"ginseng: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
