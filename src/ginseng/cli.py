"""The ``ginseng`` console script: ``train``, ``annotate``, ``info`` and ``demo``.

Exit codes: 0 success, 2 usage error, 1 any other error (one line on stderr; the
traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ._errors import GinsengError, InputError
from ._keys import DEFAULT_KEYS, VAR_GENES

if TYPE_CHECKING:
    import pandas as pd

# Help shared by the subcommands that read data.
_INPUT_HELP = ".h5ad, AnnData .zarr, 10x .h5/folder or URL"
_LAYER_HELP = "layer with raw counts (default: X)"


def _read(path: str, *, backed: bool):
    from .data.io import read_adata

    # .h5ad inputs stay on disk; other formats have no backed mode.
    return read_adata(path, backed="r" if backed and str(path).endswith(".h5ad") else None)


def _read_lazy(path: str, batch_size: int | None):
    """An AnnData whose X and layers are dask arrays read from the file (``--workers``)."""
    import anndata as ad
    from anndata.experimental import read_elem_lazy
    from anndata.io import read_elem

    from ._settings import settings

    if str(path).endswith(".h5ad"):
        import h5py

        group = h5py.File(path, "r")
    elif str(path).rstrip("/").endswith(".zarr"):
        import zarr

        group = zarr.open_group(path, mode="r")
    else:
        raise InputError(f"--workers/--scheduler read an .h5ad or AnnData .zarr file, not {path}.")
    parts = {k: read_elem(group[k]) for k in ("obs", "var", "uns") if k in group}
    rows = batch_size or settings.chunk_size
    n_vars = len(parts["var"]) if "var" in parts else None

    def lazy(elem):
        return read_elem_lazy(elem, chunks=(rows, n_vars) if n_vars else None)

    adata = ad.AnnData(X=lazy(group["X"]) if "X" in group else None, **parts)
    if "layers" in group:
        for name in group["layers"]:
            adata.layers[name] = lazy(group["layers"][name])
    return adata


def _genes(adata, genes: str | None):
    """``--genes``: a boolean var column, or a text file with one gene name per line."""
    if genes is None or genes in adata.var.columns:
        return genes
    path = Path(genes).expanduser()
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return names
    raise InputError(
        f"--genes {genes!r} is neither a column of var ({', '.join(adata.var.columns) or 'none'}) "
        "nor a file of gene names."
    )


def _check_output(path: str | None, option: str) -> None:
    """Refuse an output path in a missing directory before hours of work, not after."""
    if path is None:
        return
    directory = Path(path).expanduser().parent
    if not directory.is_dir():
        raise InputError(f"{option} {path!r}: directory {str(directory)!r} does not exist.")


def _train(args: argparse.Namespace) -> int:
    from . import tl
    from .data.io import save_model

    _check_output(args.out, "--out")
    adata = _read(args.input, backed=True)
    query_genes = None if args.query is None else _read(args.query, backed=True).var_names
    top: dict[str, int | None] = {}  # default: gs.tl.train's
    if args.n_top_genes == 0:
        top["n_top_genes"] = None
    elif args.n_top_genes is not None:
        if not 1 <= args.n_top_genes <= adata.n_vars:  # asked for explicitly: must exist
            raise InputError(
                f"n_top_genes={args.n_top_genes} must be between 1 and the number of genes "
                f"({adata.n_vars})."
            )
        top["n_top_genes"] = args.n_top_genes
        if args.genes is None and VAR_GENES in adata.var.columns:
            # An explicit count wins over a selection stored in the file (read-only here).
            adata.var = adata.var.drop(columns=VAR_GENES)
    state = tl.train(
        adata,
        args.labels,
        layer=args.layer,
        genes=_genes(adata, args.genes),
        **top,  # type: ignore[arg-type]
        query_genes=query_genes,
        group_key=args.group,
        hierarchy=args.hierarchy,
        ontology_key=args.ontology_key,
        group_level=args.group is not None,  # --group promises whole groups held out
        epochs=args.epochs,
        seed=args.seed,
    )
    path = save_model(state, args.out)
    print(state)
    print(f"model written to {path}")
    return 0


def _annotate(args: argparse.Namespace) -> int:
    from . import tl
    from .data import new_file

    _check_output(args.out, "--out")
    _check_output(args.table, "--table")
    dask = args.workers is not None or args.scheduler is not None
    adata = _read_lazy(args.input, args.batch_size) if dask else _read(args.input, backed=True)
    options = {
        "layer": args.layer,
        "gene_key": args.gene_key,
        "min_gene_overlap": args.min_gene_overlap,
        "unassigned_threshold": args.threshold,
        "majority_vote_key": args.majority_vote,
        "novelty_threshold": args.novelty_threshold,
        "prediction_sets": args.prediction_sets,
        "labels": args.only_labels,
        "gene_map": None if args.gene_map is None else _gene_map(args.gene_map),
        "batch_size": args.batch_size,
    }
    with _dask_client(args.workers, args.scheduler):
        return _annotate_with(args, tl, new_file, adata, options)


def _gene_map(path: str) -> pd.DataFrame:
    """``--gene-map``: a CSV (or TSV) whose first two columns are query and model gene names."""
    import pandas as pd

    if not Path(path).is_file():
        raise InputError(f"--gene-map {path!r} is not a file.")
    sep = "\t" if path.endswith((".tsv", ".txt")) else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str)
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"--gene-map {path!r} is not a readable CSV/TSV table: {err}") from err
    return table


# The environment of the workers ``--workers N`` starts. dask's nanny sets
# MALLOC_TRIM_THRESHOLD_=65536, and setting any malloc threshold turns off glibc's
# dynamic mmap threshold: every array above 128 KiB is then mapped and unmapped per
# block, which doubled the kernel's time per block (docs/scaling.md, "Throughput").
# Raising both thresholds keeps a block's arrays in the heap. XLA's threads are left
# alone: its pool follows the CPU affinity, not XLA_FLAGS, and pinning each worker to
# one core was slower (docs/scaling.md).
WORKER_ENVIRON = {
    "MALLOC_TRIM_THRESHOLD_": "268435456",
    "MALLOC_MMAP_THRESHOLD_": "268435456",
}


def _dask_client(workers: int | None, scheduler: str | None):
    """``--workers N`` (a LocalCluster) or ``--scheduler ADDRESS``: a dask client, else none."""
    import contextlib

    if workers is None and scheduler is None:
        return contextlib.nullcontext()
    if workers is not None and scheduler is not None:
        raise InputError("give --workers or --scheduler, not both.")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}.")
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise InputError("--workers/--scheduler need dask: pip install 'ginseng[dask]'.") from err
    stack = contextlib.ExitStack()
    if workers is not None:
        import os

        # Read by malloc only when a worker process starts. The nanny gives each worker
        # this process's value of a variable before its own config's, and writes them
        # into this process's environment: set here for the start, then restored.
        environ = dict(os.environ)
        os.environ.update(WORKER_ENVIRON)
        try:
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
                )
            )
        finally:
            os.environ.clear()
            os.environ.update(environ)
        stack.enter_context(Client(cluster))
    else:
        stack.enter_context(Client(scheduler))
    return stack


def _annotate_with(args, tl, new_file, adata, options) -> int:
    if args.out is None:
        # return_table=True returns the DataFrame (the union type covers the other modes).
        table = cast("pd.DataFrame", tl.classify(adata, args.model, return_table=True, **options))
    else:
        tl.classify(adata, args.model, **options)
        # Written aside and renamed: a kill never leaves a partial file at --out.
        with new_file(args.out, "the annotated AnnData") as staged:
            adata.write_h5ad(staged)
        print(f"annotated data written to {args.out}")
        table = tl.results_table(adata)  # the same table, without classifying twice
    if args.table is not None:
        with new_file(args.table, "the predictions table") as staged:
            table.to_csv(staged)
        print(f"predictions for {len(table)} cells written to {args.table}")
    counts = table[DEFAULT_KEYS.cell_type].value_counts()
    print("predicted cell types:\n" + counts[counts > 0].to_string())
    return 0


def _info(args: argparse.Namespace) -> int:
    from .data.io import load_model

    print(load_model(args.model))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(Path(args.out), n_genes=args.n_genes, epochs=args.epochs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ginseng", description="Train cell-type classifiers and annotate single-cell data."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", help="train a classifier on annotated counts and save it (.h5)"
    )
    train.add_argument("input", help=_INPUT_HELP)
    train.add_argument("--labels", required=True, help="obs column with the cell types")
    train.add_argument("--layer", help=_LAYER_HELP)
    train.add_argument(
        "--genes",
        help="boolean var column or a file with one gene per line (default: "
        "var['ginseng_genes'] if present, else --n-top-genes highly variable genes)",
    )
    train.add_argument(
        "--n-top-genes", type=int,
        help="train on this many highly variable genes (default: 3000, or all genes if "
        "there are no more; 0: all genes)",
    )  # fmt: skip
    train.add_argument(
        "--query",
        help="a file you will annotate (same formats as input): train only on the genes it "
        "measures",
    )
    train.add_argument("--group", help="obs column of donors/batches (for group holdouts)")
    train.add_argument(
        "--hierarchy",
        nargs="+",
        metavar="COLUMN",
        help="obs columns of coarser levels of --labels, coarse to fine (e.g. lineage)",
    )
    train.add_argument(
        "--ontology-key",
        metavar="COLUMN",
        help="obs column of Cell Ontology ids (e.g. cell_type_ontology_term_id)",
    )
    train.add_argument("--epochs", type=int, default=10, help="default: %(default)s")
    train.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    train.add_argument("--out", default="model.h5", help="model file (default: %(default)s)")
    train.set_defaults(func=_train)

    annotate = commands.add_parser("annotate", help="annotate cells with a saved model")
    annotate.add_argument("input", help=_INPUT_HELP)
    annotate.add_argument("--model", required=True, help="model file from `ginseng train`")
    annotate.add_argument("--layer", help=_LAYER_HELP)
    annotate.add_argument("--out", help="write the annotated AnnData here (.h5ad)")
    annotate.add_argument("--table", help="write predictions here (.csv)")
    annotate.add_argument(
        "--threshold", type=float, help="label cells below this confidence 'Unassigned'"
    )
    annotate.add_argument("--majority-vote", help="obs column of clusters for majority voting")
    annotate.add_argument(
        "--novelty-threshold", type=float,
        help="label cells whose novelty exceeds this quantile of held-out reference cells "
        "'Novel' (e.g. 0.99)",
    )  # fmt: skip
    annotate.add_argument(
        "--prediction-sets", type=float, metavar="ALPHA",
        help="write conformal prediction sets covering the true label with probability "
        "1 - ALPHA (e.g. 0.1)",
    )  # fmt: skip
    annotate.add_argument("--gene-key", help="var column with gene names matching the model")
    annotate.add_argument(
        "--gene-map", metavar="TABLE",
        help="CSV/TSV whose first two columns map query gene names to the model's "
        "(e.g. one-to-one orthologs)",
    )  # fmt: skip
    annotate.add_argument(
        "--only-labels", nargs="+", metavar="LABEL",
        help="restrict the calls to these model labels (probabilities renormalised)",
    )  # fmt: skip
    annotate.add_argument(
        "--min-gene-overlap", type=float, default=0.5, help="default: %(default)s"
    )
    annotate.add_argument("--batch-size", type=int, help="cells per chunk")
    annotate.add_argument(
        "--workers",
        type=int,
        help="annotate on a local dask cluster of this many worker processes (needs ginseng[dask])",
    )
    annotate.add_argument(
        "--scheduler", help="annotate on the dask cluster at this scheduler address"
    )
    annotate.set_defaults(func=_annotate)

    info = commands.add_parser("info", help="print a model file's model card")
    info.add_argument("model", help="model file (.h5)")
    info.set_defaults(func=_info)

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
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "annotate" and args.out is None and args.table is None:
        parser.error("annotate: give --out annotated.h5ad and/or --table predictions.csv")
    try:
        return args.func(args)
    except Exception as err:  # every error ends as one line (or a traceback with --debug)
        if args.debug:
            raise
        print(f"ginseng: error: {_one_line(err)}", file=sys.stderr)
        return 1


def _one_line(err: Exception) -> str:
    """The message of ``err`` on one line; other errors than bad input name their type."""
    message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    if isinstance(err, GinsengError | OSError):
        return message
    # Not an error ginseng reports on purpose (a bug, or input it does not check yet):
    # name the exception so that the line is enough for a bug report.
    return f"unexpected {type(err).__name__}: {message} (rerun with --debug for the traceback)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
