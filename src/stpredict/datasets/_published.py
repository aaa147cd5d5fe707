"""Published datasets, fetched with pooch: her2st, the STUtility mouse olfactory bulb, HEST-1k samples."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from stpredict._logging import logger

from ._registry import HER2ST_SECTIONS, MOB_SECTIONS, RemoteFile, fetch, her2st_files, mob_files

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from spatialdata import SpatialData


def _as_sections(sections: str | Sequence[str], name: str, known: Sequence[str]) -> list[str]:
    if isinstance(sections, str):
        sections = [sections]
    try:
        sections = list(sections)
    except TypeError:
        raise TypeError(
            f"{name}: `sections` must be a section name or a sequence of them, got {sections!r}."
        ) from None
    if not sections:
        raise ValueError(f"{name}: `sections` is empty; expected some of {', '.join(known)}.")
    bad = [s for s in sections if not isinstance(s, str)]
    if bad:
        raise TypeError(f"{name}: `sections` must hold strings, got {bad!r}.")
    dup = sorted({s for s in sections if sections.count(s) > 1})
    if dup:
        raise ValueError(f"{name}: `sections` lists {dup} more than once.")
    return sections


def concat_sections(adatas: Sequence[AnnData], *, library_key: str = "library_id") -> AnnData:
    """Concatenate single-slide AnnData objects of the Visium convention into one.

    Genes are the union over sections (outer join); a gene absent from a section gets zero counts
    there. ``obs[library_key]`` is categorical in section order, ``uns["spatial"]`` keeps one entry
    per section, ``obsm["spatial"]`` is stacked.

    Parameters
    ----------
    adatas
        One AnnData per section, each with ``uns["spatial"]`` holding its own library id.
    library_key
        Column of ``obs`` naming the section.

    Returns
    -------
    The concatenated AnnData (``X`` CSR float32).
    """
    import anndata as ad
    import scipy.sparse as sp

    libs: list[str] = []
    for a in adatas:
        libs.extend(pd.unique(a.obs[library_key].astype(str)).tolist())
    if len(set(libs)) != len(libs):
        raise ValueError(f"concat_sections: {library_key} values repeat across the inputs: {libs}.")
    combined = ad.concat(list(adatas), join="outer", fill_value=0, index_unique=None, uns_merge=None)
    combined.X = sp.csr_matrix(combined.X, dtype=np.float32)
    combined.obs[library_key] = pd.Categorical(combined.obs[library_key].astype(str), categories=libs)
    for col in ("array_row", "array_col"):
        if col in combined.obs:
            combined.obs[col] = combined.obs[col].astype(np.int64)
    combined.uns["spatial"] = {lib: a.uns["spatial"][lib] for a in adatas for lib in a.uns["spatial"]}
    return combined


def _load(
    name: str,
    sections: list[str],
    files_of: Callable[[str], dict[str, RemoteFile]],
    platform: Literal["1k", "2k"],
    progress: bool,
    patient_of: Callable[[str], str | None],
) -> AnnData:
    import pandas as pd

    from stpredict.io import read_legacy_st

    files = {s: files_of(s) for s in sections}  # validates every section before any download
    adatas = []
    for section, remote in files.items():
        paths = {kind: fetch(f, progress=progress) for kind, f in remote.items()}
        adatas.append(
            read_legacy_st(
                paths["counts"], paths["spots"], paths["image"], library_id=section, platform=platform
            )
        )
    adata = adatas[0] if len(adatas) == 1 else concat_sections(adatas)
    # the patient (animal) of each section: folds by patient keep serial sections on one side
    adata.obs["patient"] = pd.Categorical(adata.obs["library_id"].astype(str).map(patient_of))
    logger.info(f"{name}: {adata.n_obs} spots x {adata.n_vars} genes from sections {', '.join(sections)}")
    return adata


def her2st(sections: str | Sequence[str] = ("C2", "C3", "C4", "C5"), *, progress: bool = True) -> AnnData:
    """HER2-positive breast tumour sections (Andersson et al., Nat. Commun. 2021), legacy ST 1k array.

    Files are fetched from the her2st repository at a pinned commit (or the mirror
    ``stp.settings.datasets_url``), verified by sha256 where known, and cached in
    ``stp.settings.datasetdir``. The default sections C2-C5 are four consecutive sections of
    patient C (about 0.69 µm/px, 15,000 genes).

    Parameters
    ----------
    sections
        Section names among the 36 of the study (``"A1"``-``"A6"``, ``"B1"``-``"B6"``,
        ``"C1"``-``"C6"``, ``"D1"``-``"D6"``, ``"E1"``-``"E3"``, ``"F1"``-``"F3"``, ``"G1"``-``"G3"``,
        ``"H1"``-``"H3"``). Sections whose image file name is not known (all except B4 and C2-C6)
        raise a :class:`ValueError`.
    progress
        Show download progress bars.

    Returns
    -------
    AnnData in the Visium convention (see :func:`stpredict.io.read_legacy_st`) with
    ``obs["library_id"]`` = section and ``obs["patient"]`` = the section's first letter (use
    ``stp.tl.cross_validate(..., groups="patient")`` so that serial sections of one patient never
    sit on both sides of a fold). Genes are the union over sections: a gene missing from a
    section's counts file has zero counts in that section. Ready for :func:`stpredict.tl.fit`.

    Examples
    --------
    >>> import stpredict as stp
    >>> adata = stp.datasets.her2st(["C2", "C3"])  # doctest: +SKIP
    >>> adata.obs["library_id"].value_counts()  # doctest: +SKIP
    """
    sections = _as_sections(sections, "her2st", HER2ST_SECTIONS)
    return _load("her2st", sections, her2st_files, "1k", progress, patient_of=lambda section: section[0])


def mouse_olfactory_bulb(
    sections: str | Sequence[str] = ("MOB1", "MOB2"), *, progress: bool = True
) -> AnnData:
    """Mouse olfactory bulb sections shipped with STUtility (legacy ST 2k array).

    Files come from the STUtility repository at a pinned commit (MIT licence) or the mirror
    ``stp.settings.datasets_url``, verified by sha256 where known (MOB1, MOB2), and cached in
    ``stp.settings.datasetdir``. Only spots under the tissue (``selected == 1``) are kept. Genes
    are 1,000 Ensembl mouse ids. Pixels are not square (about 4.6 µm/px in x, 4.2 in y): the
    per-axis sizes are in ``uns["spatial"][section]["scalefactors"]``.

    Parameters
    ----------
    sections
        Among ``"MOB1"``-``"MOB4"`` (MOB1/MOB2 one animal, MOB3/MOB4 another).
    progress
        Show download progress bars.

    Returns
    -------
    AnnData in the Visium convention with ``obs["library_id"]`` = section; genes are the union over
    sections with zeros where a gene is absent.

    Examples
    --------
    >>> import stpredict as stp
    >>> adata = stp.datasets.mouse_olfactory_bulb("MOB1")  # doctest: +SKIP
    """
    sections = _as_sections(sections, "mouse_olfactory_bulb", MOB_SECTIONS)
    # STUtility's MOB1/MOB2 come from one animal, MOB3/MOB4 from another
    animal = {"MOB1": "animal1", "MOB2": "animal1", "MOB3": "animal2", "MOB4": "animal2"}
    return _load("mouse_olfactory_bulb", sections, mob_files, "2k", progress, patient_of=animal.get)


def hest(ids: str | Sequence[str], *, progress: bool = True) -> SpatialData:
    """HEST-1k samples (Jaume et al. 2024), downloaded once and read with :func:`stpredict.io.read_hest`.

    The files come from the Hugging Face dataset ``MahmoodLab/hest`` (gated: accept its terms on
    the Hub, then ``huggingface-cli login`` or set ``HF_TOKEN``; the token is sent to
    huggingface.co only), or from the mirror ``STPREDICT_DATASETS_URL`` holding the same layout
    under ``hest/``. They are cached in ``stp.settings.datasetdir``; whole-slide images are large
    (hundreds of MB to GBs each).

    Parameters
    ----------
    ids
        Sample id(s), e.g. ``"TENX95"`` or ``["NCBI783", "NCBI785"]`` (see HEST's metadata table).
    progress
        Show download progress bars.

    Returns
    -------
    SpatialData, one coordinate system per sample (see :func:`stpredict.io.read_hest`).
    """
    from stpredict.io import read_hest

    from ._registry import hest_files

    names = [ids] if isinstance(ids, str) else list(ids)
    paths = [fetch(file, progress=progress) for sample in names for file in hest_files(sample).values()]
    root = paths[0].parents[1]  # <datasetdir>/hest
    return read_hest(root, names)
