"""``ginseng demo``: the whole pipeline on scanpy's bundled PBMCs, offline.

Reference and query are a stratified 80/20 split of ``pbmc68k_reduced`` (counts
recovered from its log-normalised ``raw``). The labels (``bulk_labels``) come from
sorted bulk populations and overlap heavily (e.g. the CD4+ subsets), so expect
moderate accuracy: the point is the pipeline, not the dataset.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

LABEL_KEY = "bulk_labels"


def _split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a label-stratified ``fraction`` of the cells (the query)."""
    rng = np.random.default_rng(seed)
    query = np.zeros(labels.size, bool)
    for label in np.unique(labels):
        cells = rng.permutation(np.flatnonzero(labels == label))
        query[cells[: round(fraction * cells.size)]] = True
    return query


def run_demo(out: Path, *, n_genes: int = 300, epochs: int = 10, seed: int = 0) -> int:
    """Run the demo, writing everything under ``out``; return the exit code."""
    import anndata as ad
    from sklearn.metrics import f1_score

    import ginseng as gs
    from ginseng.data.io import load_model, save_model
    from ginseng.train import GinsengClassifierTrainer, GinsengClassifierTrainerSettings
    from ginseng.train.calibration import expected_calibration_error

    out.mkdir(parents=True, exist_ok=True)
    adata = gs.datasets.pbmc68k_counts()
    is_query = _split(adata.obs[LABEL_KEY].astype(str).to_numpy(), 0.2, seed)
    reference, query = adata[~is_query].copy(), adata[is_query].copy()
    print(
        f"pbmc68k_reduced counts: {adata.n_vars} genes; reference {reference.n_obs} cells, "
        f"held-out query {query.n_obs} cells (stratified by {LABEL_KEY})"
    )

    gs.pp.select_hvgs(reference, n_top_genes=n_genes, layer="counts")
    print(f"select_hvgs: {int(reference.var['ginseng_genes'].sum())} genes (seurat_v3)")

    # The store is built from the backed file, as it would be for data larger than memory.
    h5ad = out / "reference.h5ad"
    reference.write_h5ad(h5ad)
    backed = ad.read_h5ad(h5ad, backed="r")
    start = time.perf_counter()
    ds = gs.data.GinsengDataset.create(
        out / "reference.zarr", backed, LABEL_KEY, layer="counts", genes="ginseng_genes",
        overwrite=True, seed=seed,
    )  # fmt: skip
    backed.file.close()
    print(f"store written in {time.perf_counter() - start:.2f} s:\n{ds}")
    stored = np.vstack([x for x, _ in ds.stream(256, split="all", shuffle=False)])
    source = reference[:, reference.var["ginseng_genes"]].layers["counts"].toarray()
    exact = np.array_equal(stored, source[ds.cell_index])
    print(f"round trip exact for all {ds.n_cells} cells: {exact}")
    if not exact:
        return 1

    settings = GinsengClassifierTrainerSettings(holdout_fraction=0.2, seed=seed)
    _, state = GinsengClassifierTrainer(ds, settings).fit(epochs=epochs)
    model_path = save_model(state, out / "model.h5")
    state = load_model(model_path)
    print(f"model saved to {model_path} and reloaded:\n{state}")

    gs.tl.classify(query, state, layer="counts")
    truth = query.obs[LABEL_KEY].astype(str).to_numpy()
    predicted = query.obs["ginseng_cell_type"].astype(str).to_numpy()
    index = {label: i for i, label in enumerate(state.labels)}
    codes = np.array([index[t] for t in truth])  # every query label is in the reference
    ece = expected_calibration_error(query.obsm["ginseng_probabilities"], codes)
    print(
        f"held-out query ({query.n_obs} cells): accuracy {np.mean(predicted == truth):.3f}, "
        f"macro-F1 {f1_score(truth, predicted, average='macro'):.3f}, ECE {ece:.3f}"
    )
    query.write_h5ad(out / "query_annotated.h5ad")
    ax = gs.pl.confusion(query, LABEL_KEY, show=False, save=out / "confusion.png")
    ax.figure.clf()
    print(f"wrote {out / 'query_annotated.h5ad'} and {out / 'confusion.png'}")
    return 0
