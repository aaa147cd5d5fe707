"""Where the published datasets live, their sha256 sums, and a verified, cached download."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from stpredict._logging import logger
from stpredict._settings import settings

HER2ST_COMMIT = "85df7411b987a7dec3feff9718b869a7a82091ec"
HER2ST_BASE = f"https://github.com/almaan/her2st/raw/{HER2ST_COMMIT}/data"
MOB_COMMIT = "9a8f421499e58b13340ee386db07b0eba923c88c"
MOB_BASE = f"https://github.com/jbergenstrahle/STUtility/raw/{MOB_COMMIT}/inst/extdata/counts"

# Andersson et al. 2021: patients A-D have six sections, E-H three.
HER2ST_SECTIONS: tuple[str, ...] = tuple(
    f"{patient}{i}"
    for patient, n in (("A", 6), ("B", 6), ("C", 6), ("D", 6), ("E", 3), ("F", 3), ("G", 3), ("H", 3))
    for i in range(1, n + 1)
)

# Image file names in ST-imgs/<patient>/<section>/ do not follow the section names; these are the
# ones known from the repository listing at the pinned commit.
HER2ST_IMAGES: dict[str, str] = {
    "B4": "BT10737_D2_HE.jpg",
    "C2": "5714_HE_BT_C2.jpg",
    "C3": "5714_HE_BT_D1.jpg",
    "C4": "5714_HE_BT_D2.jpg",
    "C5": "5714_HE_BT_E1.jpg",
    "C6": "5714_HE_BT_E2.jpg",
}

MOB_SECTIONS: tuple[str, ...] = ("MOB1", "MOB2", "MOB3", "MOB4")

# HEST-1k (Jaume et al. 2024) on the Hugging Face Hub: a gated dataset (accept its terms, then log in)
HEST_BASE = "https://huggingface.co/datasets/MahmoodLab/hest/resolve/main"
_HF_HOST = "https://huggingface.co/"

# sha256 of the published files, by folder (a file not listed is downloaded unverified, with a warning).
_HER2ST_SHA256: dict[str, str] = {
    "ST-cnts/C2.tsv.gz": "c1c59ea6cffae36b9ecb561b8e2a97e3aa5f4085f748e991a0e330ed9d09773d",
    "ST-cnts/C3.tsv.gz": "e00c55a3eb9caac5d9c71b8906aae8be8b38f93e23938f4a0ebee17683ef6a2a",
    "ST-cnts/C4.tsv.gz": "33201f76d41d7131dc600a0f87d9a70383af3503e81698b4d11e6f2e8d73e9da",
    "ST-cnts/C5.tsv.gz": "c0f310315ca6110d74dbdf7011e5b42432ba0b8eb5f001824764911988f39338",
    "ST-imgs/C/C2/5714_HE_BT_C2.jpg": "26e2f73ae840cdd46c5bba405aae181f13a56a376b9848dff23f7a9c5de7f19e",
    "ST-imgs/C/C3/5714_HE_BT_D1.jpg": "0005a92674014d473040a28f0afca89ce5fa5c44019b479b638ceb3272ceb568",
    "ST-imgs/C/C4/5714_HE_BT_D2.jpg": "f40607eb1d5f0d125decd71c48b0c5d29cf6776ad92297fd185631208c82d6f2",
    "ST-imgs/C/C5/5714_HE_BT_E1.jpg": "34028ea41e376396b50c42b0a11a7e689c85be4a8022e668d0a09cc128c04c65",
    "ST-spotfiles/C2_selection.tsv": "235b5f4306b3b57c628ffc82c98c7109602474fbcc79a917b9c50517f99b6b1c",
    "ST-spotfiles/C3_selection.tsv": "7fd76c13370b7804ac3bb377b846d22485cf9223f9dd8dfc25be06e5aaf65755",
    "ST-spotfiles/C4_selection.tsv": "47e79f3b9dbfa3a8c18af9e948ba7ba4bf0a75ea1b4c292bc714ced7d0917d4c",
    "ST-spotfiles/C5_selection.tsv": "2114cc3b4da759772112897f1e247d5443c9f8c808e6a9a952eb4fda379a194c",
}
_MOB_SHA256: dict[str, str] = {
    "MOB1.jpg": "c1c292187221bab077ac1b15e95cf665db35684c98d6193af56d2e8b7772fe20",
    "MOB1.tsv": "82c0691f800355369fd8a72ff44ba1e3112d4e44a790f490a9fa267876a9352e",
    "MOB2.jpg": "1079fe52f600ec212a6a59cef76b8697fcd776d0cdb10461ad3bb738eaa5c0b6",
    "MOB2.tsv": "449dcc351ede5c63f9afe313479dbb830ba32c6e86b56b258276304102d1f7e9",
    "alignment_table_MOB1.tsv": "91ade06cf93bc0b3cd728846c34e310a8365200d1ad33498e6a0eb6951a92164",
    "alignment_table_MOB2.tsv": "6d86b226386b0a08f825b3bff4b5c359f00fd52d3f53d77db0376b0f7e0ec30d",
}
_SHA256: dict[str, str] = {f"her2st/{k}": v for k, v in _HER2ST_SHA256.items()} | {
    f"stutility-mob/{k}": v for k, v in _MOB_SHA256.items()
}


@dataclass(frozen=True)
class RemoteFile:
    """One published file.

    Attributes
    ----------
    key
        Path relative to a mirror and to the cache folder (``"her2st/ST-cnts/C2.tsv.gz"``).
    url
        Public URL.
    sha256
        Expected sha256 (hex), or ``None`` when unknown.
    """

    key: str
    url: str
    sha256: str | None


def _her2st_file(path: str) -> RemoteFile:
    key = f"her2st/{path}"
    return RemoteFile(key, f"{HER2ST_BASE}/{path}", _SHA256.get(key))


def her2st_files(section: str) -> dict[str, RemoteFile]:
    """The counts, spot table and image of one her2st section.

    Raises
    ------
    ValueError
        When ``section`` is not one of the 36 sections, or its image file name is unknown.
    """
    if section not in HER2ST_SECTIONS:
        raise ValueError(
            f"her2st: unknown section {section!r}; expected one of {', '.join(HER2ST_SECTIONS)}."
        )
    if section not in HER2ST_IMAGES:
        raise ValueError(
            f"her2st: the image file name of section {section!r} is unknown (it does not follow the section "
            f"name); sections with a known image: {', '.join(sorted(HER2ST_IMAGES))}. Download the section "
            "yourself and read it with stp.io.read_legacy_st."
        )
    return {
        "counts": _her2st_file(f"ST-cnts/{section}.tsv.gz"),
        "spots": _her2st_file(f"ST-spotfiles/{section}_selection.tsv"),
        "image": _her2st_file(f"ST-imgs/{section[0]}/{section}/{HER2ST_IMAGES[section]}"),
    }


def mob_files(section: str) -> dict[str, RemoteFile]:
    """The counts, spot table and image of one STUtility mouse olfactory bulb section."""
    if section not in MOB_SECTIONS:
        raise ValueError(
            f"mouse_olfactory_bulb: unknown section {section!r}; expected one of {', '.join(MOB_SECTIONS)}."
        )
    names = {"counts": f"{section}.tsv", "spots": f"alignment_table_{section}.tsv", "image": f"{section}.jpg"}
    return {
        kind: RemoteFile(f"stutility-mob/{name}", f"{MOB_BASE}/{name}", _SHA256.get(f"stutility-mob/{name}"))
        for kind, name in names.items()
    }


def hest_files(sample: str) -> dict[str, RemoteFile]:
    """The spots (``st``), whole-slide image (``wsi``) and metadata of one HEST-1k sample.

    HEST publishes no checksums next to the files, so they are downloaded unverified (a warning
    says so) and cached.
    """
    from stpredict._validation import check_key

    check_key(sample, what="hest: sample id")
    paths = {"st": f"st/{sample}.h5ad", "wsi": f"wsis/{sample}.tif", "metadata": f"metadata/{sample}.json"}
    return {kind: RemoteFile(f"hest/{path}", f"{HEST_BASE}/{path}", None) for kind, path in paths.items()}


def _auth_headers(url: str) -> dict[str, str]:
    """A Hugging Face token (``HF_TOKEN`` or ``huggingface-cli login``) for huggingface.co URLs only."""
    if not url.startswith(_HF_HOST):
        return {}  # never send the token to a mirror
    import os

    token = os.environ.get("HF_TOKEN")
    if token is None:
        try:
            from huggingface_hub import get_token

            token = get_token()
        except ImportError:  # pragma: no cover - huggingface_hub comes with timm
            token = None
    return {"Authorization": f"Bearer {token}"} if token else {}


def url_for(file: RemoteFile) -> str:
    """The URL a file is fetched from: the mirror ``settings.datasets_url`` when set, else the public one."""
    base = settings.datasets_url
    return f"{base.rstrip('/')}/{file.key}" if base else file.url


def _progressbar(progress: bool) -> bool:
    if not progress:
        return False
    try:
        import tqdm  # noqa: F401
    except ImportError:  # pragma: no cover - tqdm comes with scanpy
        return False
    return True


def fetch(file: RemoteFile, *, progress: bool = True) -> Path:
    """Download ``file`` into ``settings.datasetdir`` (unless cached) and verify its sha256.

    A cached file whose hash matches is used without any request. A download whose hash does not
    match is deleted (never cached) and raises a :class:`ValueError` naming the file and both hashes.
    Files without a known hash are downloaded once, with a warning that they are unverified.

    Parameters
    ----------
    file
        The file to fetch (see :func:`her2st_files`, :func:`mob_files`).
    progress
        Show a download progress bar.

    Returns
    -------
    Path of the cached file.
    """
    import pooch

    target = Path(settings.datasetdir) / file.key
    url = url_for(file)
    known_hash = f"sha256:{file.sha256}" if file.sha256 else None
    if known_hash is None and not target.is_file():
        logger.warning(f"{file.key}: no known sha256 for this file; it is downloaded from {url} unverified.")
    try:
        path = pooch.retrieve(
            url,
            known_hash=known_hash,
            fname=target.name,
            path=target.parent,
            downloader=pooch.HTTPDownloader(progressbar=_progressbar(progress), headers=_auth_headers(url)),
        )
    except OSError as err:  # requests' ConnectionError / Timeout / HTTPError are OSErrors
        mirror = settings.datasets_url
        where = (
            f"the mirror STPREDICT_DATASETS_URL={mirror!r} (stp.settings.datasets_url)"
            if mirror
            else "the public URL (set STPREDICT_DATASETS_URL to use a mirror)"
        )
        raise ConnectionError(
            f"Could not download {file.key!r} from {url} ({type(err).__name__}: {err}); check the network "
            f"or {where}. Files already in {settings.datasetdir} are used without a download."
        ) from err
    except ValueError as err:
        if file.sha256 is None or "hash" not in str(err).lower():
            raise
        match = re.search(r"got\s+'?(?:sha256:)?([0-9a-fA-F]{64})", str(err))
        actual = match.group(1) if match else "unknown"
        if target.is_file() and pooch.file_hash(str(target)) != file.sha256:
            target.unlink()  # a stale bad copy must not stay in the cache
        raise ValueError(
            f"Download of {file.key!r} from {url} is corrupted or has changed: "
            f"expected sha256 {file.sha256}, got {actual}. The download was discarded (nothing cached); "
            "retry, or check stp.settings.datasets_url."
        ) from err
    logger.info(f"{file.key}: cached at {path}")
    return Path(path)
