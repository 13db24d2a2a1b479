"""Prefect flows, deployments and the `videorefer` CLI: the only package that imports prefect."""
