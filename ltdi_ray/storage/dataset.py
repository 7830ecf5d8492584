"""Reading and validating a complete trajectory dataset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from ltdi_ray.base_nets.paramspec import ParamSpec
from ltdi_ray.errors import DataError
from ltdi_ray.storage.artifact import (
    DATA_DIR,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MANIFEST_KEYS,
    check_record,
    read_json,
    read_part,
    table_to_arrays,
)
from ltdi_ray.storage.fs import Location


@dataclass
class TrajectoryDataset:
    """A complete dataset: its manifest, ParamSpec and the files it lists."""

    loc: Location
    manifest: dict

    @classmethod
    def open(cls, uri: str, endpoint_url: Optional[str] = None) -> "TrajectoryDataset":
        """Open the dataset at ``uri``; fails with one line if it is incomplete or not a dataset."""
        loc = Location.parse(uri, endpoint_url)
        loc.check_reachable()
        manifest = read_json(loc, MANIFEST)
        if manifest is None:
            raise DataError(f"no complete trajectory dataset at {loc}: {MANIFEST} is missing "
                            "(collection unfinished? re-run the same collect command to complete it)")
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{loc.child(MANIFEST)} is not a {FORMAT} v{FORMAT_VERSION} manifest")
        check_record(manifest, MANIFEST_KEYS, loc.child(MANIFEST))
        return cls(loc, manifest)

    @property
    def spec(self) -> ParamSpec:
        return ParamSpec.from_json(self.manifest["param_spec"])

    @property
    def schema(self) -> Dict[str, dict]:
        return self.manifest["schema"]

    @property
    def num_tasks(self) -> int:
        return int(self.manifest["num_tasks"])

    @property
    def files(self) -> List[str]:
        """Full URIs of the data files."""
        return [str(self.loc.child(f["path"])) for f in self.manifest["files"]]

    def load(self, columns: Optional[List[str]] = None, verify: bool = True) -> Dict[str, np.ndarray]:
        """All rows (sorted by task id) as arrays; checks checksums, shapes and finiteness.

        Meant for small datasets, tests and evaluation; training streams the files with Ray Data.
        """
        parts = [self.read_file(rec, columns, verify) for rec in self.manifest["files"]]
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if "task_id" in out:
            order = np.argsort(out["task_id"], kind="stable")
            out = {k: v[order] for k, v in out.items()}
        return out

    def read_file(self, record: dict, columns: Optional[List[str]] = None, verify: bool = True) -> Dict[str, np.ndarray]:
        """One data file (a ``manifest["files"]`` record) as validated arrays."""
        data_dir, name = self.loc.child(DATA_DIR), record["path"].split("/", 1)[1]
        _, table = read_part(data_dir, name, record["sha256"] if verify else None)
        missing = set(columns or self.schema) - set(table.column_names)
        if missing:
            raise DataError(f"trajectory file {data_dir.child(name)} lacks columns {sorted(missing)}")
        arrays = table_to_arrays(table, self.schema, columns)
        if verify:
            self._check_part(arrays, data_dir.child(name))
        return arrays

    def _check_part(self, arrays: Dict[str, np.ndarray], where: Location) -> None:
        ckpt = arrays.get("checkpoints")
        if ckpt is None:
            return
        if ckpt.shape[-1] != self.spec.dim:
            raise DataError(f"trajectory file {where} holds {ckpt.shape[-1]}-dim weights, "
                            f"the manifest's ParamSpec needs {self.spec.dim}")
        if not np.isfinite(ckpt).all():
            raise DataError(f"trajectory file {where} contains NaN/Inf weights")
