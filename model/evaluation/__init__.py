"""Evaluation: the NAB scorer and its plots."""
