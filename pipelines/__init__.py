"""Entrypoints that run the arinv library on Ray and record results in MLflow."""
