"""Cross-validate methods and baselines on the mouse olfactory bulb sections (MOB1 ↔ MOB2).

Same procedure as ``her2st_cv.py`` on the STUtility legacy-ST sections (2k array): two folds,
train on one section and test on the other, both directions. Reads the published files from a
local folder laid out like STUtility's ``inst/extdata/counts/``.

Examples
--------
::

    python benchmarks/mob_cv.py --methods cmrcnet cmrcnet_norecon --preset cpu
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from her2st_cv import REPO, add_common_arguments, run_and_report


def load_mob(data_dir: Path, sections: list[str]):
    """Read each section with ``stp.io.read_legacy_st`` (2k array) and concatenate."""
    import stpredict as stp
    from stpredict.datasets._published import concat_sections

    adatas = [
        stp.io.read_legacy_st(
            data_dir / f"{s}.tsv", data_dir / f"alignment_table_{s}.tsv", data_dir / f"{s}.jpg",
            library_id=s, platform="2k",
        )
        for s in sections
    ]  # fmt: skip
    return concat_sections(adatas)


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(os.environ.get("STPREDICT_SHARED_DATA", REPO.parent / "shared" / "data"))
    parser.add_argument("--data-dir", type=Path, default=shared / "stutility-mob")
    parser.add_argument("--sections", nargs="+", default=["MOB1", "MOB2"])
    add_common_arguments(parser, default_methods=["cmrcnet", "cmrcnet_norecon"])
    args = parser.parse_args(argv)
    start = time.perf_counter()
    adata = load_mob(args.data_dir, args.sections)
    print(f"loaded {adata.n_obs} spots × {adata.n_vars} genes in {time.perf_counter() - start:.1f} s")
    return run_and_report(adata, args, dataset="mob", extra={"sections": args.sections})


if __name__ == "__main__":
    main()
