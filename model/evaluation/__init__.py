"""Evaluation: the NAB scorer and its plots; Tennessee Eastman metrics, PCA baseline, report and plots."""
