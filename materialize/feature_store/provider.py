"""Feast provider: the stock local provider, with pushes written to the online store as Arrow.

``FeatureStore.push`` and ``write_to_online_store`` hand a DataFrame to the provider's
``ingest_df``, which turns every row into protobuf values before the online store sees
it: about 1.8 s for the three user pushes of 1,000 users here, 384-float embeddings
included. When the online store takes Arrow (``online_write_arrow``, as the project's
online store plugin does for materialization), this provider gives it the DataFrame as an
Arrow table instead; anything else goes the stock way. Chosen in ``feature_store.yaml``
with ``provider: materialize.feature_store.provider.ArrowPushProvider``.
"""
from __future__ import annotations

from typing import Dict, Optional

import pandas as pd
import pyarrow as pa
from feast import FeatureView
from feast.infra.passthrough_provider import PassthroughProvider
from feast.utils import _run_pyarrow_field_mapping

PROVIDER_TYPE = "materialize.feature_store.provider.ArrowPushProvider"


class ArrowPushProvider(PassthroughProvider):
    """``provider: local`` whose online ingestion skips the per-row protobuf conversion."""

    def ingest_df(self, feature_view, df: pd.DataFrame, field_mapping: Optional[Dict] = None):
        write_arrow = getattr(self.online_store, "online_write_arrow", None)
        if write_arrow is None or type(feature_view) is not FeatureView:  # on-demand and stream views: stock
            return super().ingest_df(feature_view, df, field_mapping)
        table = pa.Table.from_pandas(df, preserve_index=False)
        if feature_view.batch_source is not None and feature_view.batch_source.field_mapping:
            table = _run_pyarrow_field_mapping(table, feature_view.batch_source.field_mapping)
        join_key_types = {entity.name: entity.dtype.to_value_type() for entity in feature_view.entity_columns}
        if not write_arrow(self.repo_config, feature_view, table, join_key_types):  # a column it cannot encode
            super().ingest_df(feature_view, df, field_mapping)
