"""Where features are stored: Parquet partitions offline, packed values in Redis online."""
