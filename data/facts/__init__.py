"""The synthetic facts dataset (data/facts/prepare.py)."""
