"""enrich inside the engines analytics teams already run.

- :mod:`enrich.integrations.spark`: :func:`~enrich.integrations.spark.enrich_dataframe` enriches
  a Spark DataFrame of conversations (``mapInPandas``), one :class:`~enrich.Enricher` per task,
  the ledger and the rate limit shared by every executor; the results come back as columns.

Each integration imports its engine lazily (``import enrich.integrations.spark`` does not import
pyspark), and says which extra to install when it is missing (``pip install 'enrich[spark]'``).
Nothing here is imported by ``import enrich``.
"""

__all__: list[str] = []
