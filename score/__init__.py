"""Evaluation of generated samples: the FID Inception-v3 (`score.inception`), the metrics
FID / IS / PRD / improved precision-recall (`score.metrics`) and the high-level evaluation and
reference-statistics files used by main.py (`score.evaluate`).

Nothing here downloads anything: the Inception weights must already be in torch hub's
`checkpoints/` folder (where pytorch-fid caches them) or be given with --inception_weights.
"""
