"""Feast's local compute engine, writing materialized Arrow batches to the online store
without a protobuf object per cell.

Switched on in ``feature_store.yaml``::

    batch_engine:
      type: materialize.feature_store.compute_engine.ArrowLocalComputeEngine

Stock's engine converts every cell of a batch to a ``ValueProto`` before the online store
sees it. This one is stock's plan (read, filter, dedup, validate) with three changes for
materialization:

- the filter step is skipped when the view has no filter expression (stock's step then
  only converts the batch to pandas and back);
- the dedup step is skipped when the read already returned each entity's latest row
  (``materialization: pull_latest_features: true``);
- when the online store offers ``online_write_arrow`` (this project's
  ``PostgresFastOnlineStore``) the batch goes to it as Arrow, and the store encodes the
  values straight from the columns.

Any other online store, or a column type the store cannot encode itself, takes stock's
path unchanged; historical retrieval through the engine is stock's.
"""
from __future__ import annotations

from typing import Literal

import pyarrow as pa

from feast.infra.common.materialization_job import MaterializationJobStatus, MaterializationTask
from feast.infra.compute_engines.dag.context import ExecutionContext
from feast.infra.compute_engines.local.arrow_table_value import ArrowTableValue
from feast.infra.compute_engines.local.compute import LocalComputeEngine, LocalComputeEngineConfig
from feast.infra.compute_engines.local.feature_builder import LocalFeatureBuilder
from feast.infra.compute_engines.local.job import LocalMaterializationJob
from feast.infra.compute_engines.local.nodes import LocalOutputNode
from feast.infra.registry.base_registry import BaseRegistry
from feast.utils import _convert_arrow_to_proto

ENGINE_TYPE = "materialize.feature_store.compute_engine.ArrowLocalComputeEngine"


class ArrowLocalComputeEngineConfig(LocalComputeEngineConfig):
    """The keys of Feast's ``type: local`` engine (``backend``)."""

    type: Literal["materialize.feature_store.compute_engine.ArrowLocalComputeEngine"] = ENGINE_TYPE  # type: ignore[assignment]


class ArrowOutputNode(LocalOutputNode):
    """Stock's output node; online writes go as Arrow to a store that takes them."""

    def execute(self, context: ExecutionContext) -> ArrowTableValue:
        write_arrow = getattr(context.online_store, "online_write_arrow", None)
        if not self.feature_view.online or write_arrow is None:
            return super().execute(context)
        table = self.get_single_table(context).data
        join_key_types = {e.name: e.dtype.to_value_type() for e in self.feature_view.entity_columns}
        batch_size = context.repo_config.materialization_config.online_write_batch_size
        batches = [table] if batch_size is None else table.to_batches(max_chunksize=batch_size)
        for batch in batches:
            if batch.num_rows and not write_arrow(context.repo_config, self.feature_view, batch, join_key_types):
                # a column the store cannot encode itself: stock's conversion for this batch
                context.online_store.online_write_batch(
                    config=context.repo_config, table=self.feature_view,
                    data=_convert_arrow_to_proto(_one_chunk(batch), self.feature_view, join_key_types),
                    progress=lambda _: None,
                )
        output = ArrowTableValue(data=table)
        context.node_outputs[self.name] = output
        if getattr(self.feature_view, "offline", False) and table.num_rows:
            context.offline_store.offline_write_batch(
                config=context.repo_config, feature_view=self.feature_view, table=table, progress=lambda _: None,
            )
        return output


def _one_chunk(batch: pa.Table | pa.RecordBatch) -> pa.RecordBatch:
    """Stock's conversion reads only the first chunk of a table."""
    return batch.combine_chunks().to_batches()[0] if isinstance(batch, pa.Table) else batch


class ArrowFeatureBuilder(LocalFeatureBuilder):
    """Stock's local plan ending in an ``ArrowOutputNode``, without the steps that have
    nothing to do in a materialization.

    Args:
        latest_rows_read: the source read returns one row per entity, the latest.
    """

    def __init__(self, registry: BaseRegistry, task, backend, latest_rows_read: bool):
        super().__init__(registry, task, backend=backend)
        self.latest_rows_read = latest_rows_read

    def build_dedup_node(self, view, input_node):
        if isinstance(self.task, MaterializationTask) and self.latest_rows_read:
            return input_node
        return super().build_dedup_node(view, input_node)

    def build_filter_node(self, view, input_node):
        # Materializing a view without a filter expression, stock's filter step only converts
        # the batch to pandas and back (an int column with nulls comes back as doubles); its
        # ttl test needs entity timestamps, which a materialization has none of.
        if isinstance(self.task, MaterializationTask) and not getattr(view, "filter", None):
            return input_node
        return super().build_filter_node(view, input_node)

    def build_output_nodes(self, view, input_node):
        node = ArrowOutputNode("output", self.dag_root.view, inputs=[input_node])
        self.nodes.append(node)
        return node


class ArrowLocalComputeEngine(LocalComputeEngine):
    """``type: local`` with Arrow writes to the online store."""

    def _materialize_one(self, registry: BaseRegistry, task: MaterializationTask, **kwargs) -> LocalMaterializationJob:
        job_id = f"{task.feature_view.name}-{task.start_time}-{task.end_time}"
        context = self.get_execution_context(registry, task)
        try:
            latest = self.repo_config.materialization_config.pull_latest_features
            ArrowFeatureBuilder(registry, task, self._get_backend(context), latest).build().execute(context)
            return LocalMaterializationJob(job_id=job_id, status=MaterializationJobStatus.SUCCEEDED)
        except Exception as error:  # reported through the job, as stock's engine does
            return LocalMaterializationJob(job_id=job_id, status=MaterializationJobStatus.ERROR, error=error)
