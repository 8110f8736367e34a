"""Datasets: upload ingestion, archives, synthetic data, and the dataset service."""
