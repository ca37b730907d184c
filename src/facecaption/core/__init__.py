"""The core every stage stands on: config (and each stage's view of it), shard I/O, seeded randomness,
opt-out, face alignment, the CelebA attribute list and file formats, the one open_clip loader, rejection
reasons, artifact schemas, the train/held-out split, and report helpers.

Import rule (tests/test_imports.py): ``facecaption.core`` imports nothing else of facecaption; a stage package
imports only the core, the ``synthface`` renderer library and itself; only the CLI, the ``dvc.yaml`` generator,
``preflight`` and the Snakemake rules know the stage registry (``facecaption.workflow``).
"""
