"""Datasets: the format and readers in data/common.py, preparers in data/prepare.py and data/*/prepare.py."""
