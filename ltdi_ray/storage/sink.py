"""A Ray Data sink that writes each block as one atomically published Parquet file."""

from __future__ import annotations

from typing import Iterable, List

from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from ltdi_ray.storage.artifact import PartSummary, write_part
from ltdi_ray.storage.fs import Location


class TrajectoryDatasink(Datasink[List[PartSummary]]):
    """Unlike ``write_parquet``, a file is never visible half-written (temp + rename locally,
    one completed upload on S3) and its name is a function of its task ids, so a retried write
    task replaces its own file instead of adding a duplicate.
    """

    def __init__(self, data_dir: Location):
        self.data_dir = data_dir
        self.summaries: List[PartSummary] = []

    def write(self, blocks: Iterable[Block], ctx) -> List[PartSummary]:
        return [write_part(self.data_dir, BlockAccessor.for_block(b).to_arrow()) for b in blocks
                if BlockAccessor.for_block(b).num_rows() > 0]

    def on_write_complete(self, write_result) -> None:
        self.summaries = [s for batch in write_result.write_returns for s in batch]

    def get_name(self) -> str:
        return "TrajectoryParquet"
