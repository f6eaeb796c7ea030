"""Read a TerraMesh tree the way the dataset card's loader (`terramesh.py`) does.

Two halves:
- `official_venv()` builds (once, cached under build/) a venv with the card's versions,
  zarr 2.18.0 + numcodecs 0.15.1 (+ numpy < 2, fsspec), and returns its python;
- run as a script *inside that venv*, it walks every tar of a tree with tarfile, opens each
  member as the loader does (`fsspec.filesystem("zip", fo=BytesIO(bytes)).get_mapper("")`
  then `zarr.open_consolidated(mapper, mode="r")`), applies the loader's time rule
  (`data["time"][...] > 1e6`) and prints one JSON line per member with checksums of the
  arrays, so tests compare them with our reader.

This file must stay importable by both the project venv and the old one (stdlib only at
module level).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / "build" / "official-loader-venv"
REQUIREMENTS = ["zarr==2.18.0", "numcodecs==0.15.1", "numpy<2", "fsspec"]


def array_digest(a) -> str:
    """sha256 of an array's dtype, shape and C-order bytes (NaN bit patterns included)."""
    import numpy as np

    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def official_venv(extra: tuple[str, ...] = ()) -> Path:
    """The python of the cached old-zarr venv, created on first use; with `extra`
    requirements (benchmarks/ml.py adds torch, for the loader under a DataLoader), another
    venv beside it."""
    requirements = [*REQUIREMENTS, *extra]
    folder = VENV.with_name(VENV.name + "".join(f"-{r.split('=')[0]}" for r in extra))
    py = folder / "bin" / "python"
    stamp = folder / "requirements.txt"
    if py.exists() and stamp.exists() and stamp.read_text() == "\n".join(requirements):
        return py
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *requirements], check=True)
    stamp.write_text("\n".join(requirements))
    return py


def run_official(root: Path) -> list[dict]:
    """Run this file in the old venv over `root`; one dict per tar member."""
    out = subprocess.run(
        [str(official_venv()), __file__, str(root)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def _read_member(value: bytes) -> dict:
    # exactly the loader's calls (terramesh.py, zarr_metadata_decoding)
    import io

    import fsspec
    import zarr

    mapper = fsspec.filesystem("zip", fo=io.BytesIO(value), block_size=None).get_mapper("")
    data = zarr.open_consolidated(mapper, mode="r")
    rec = {
        "bands": array_digest(data["bands"][...]),
        "center_lon": float(data["center_lon"][...]),
        "center_lat": float(data["center_lat"][...]),
        "crs": int(data["crs"][...]),
        "file_id": [str(x) for x in data["file_id"][...]],
        "zarr_version": zarr.__version__,
    }
    if "cloud_mask" in data:
        rec["cloud_mask"] = array_digest(data["cloud_mask"][...])
    if data["time"][...] > 1e6:  # the loader's rule: DEM has no valid timestamp (value = 0)
        rec["time"] = int(data["time"][...].reshape(-1)[0])
    else:
        rec["time"] = None
    return rec


def main(root: str) -> None:
    for tar_path in sorted(Path(root).glob("*/*/*.tar")):
        split, modality = tar_path.parent.parent.name, tar_path.parent.name
        with tarfile.open(tar_path, "r|") as tf:
            for member in tf:
                if not member.name.endswith(".zarr.zip"):
                    continue
                rec = _read_member(tf.extractfile(member).read())
                rec.update(split=split, modality=modality, shard=tar_path.name, key=member.name.split(".", 1)[0])
                print(json.dumps(rec))


if __name__ == "__main__":
    main(sys.argv[1])
