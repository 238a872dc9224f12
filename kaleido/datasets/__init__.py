"""Real image data sets that install offline from PyPI, written as image folders (``metadata.jsonl`` +
images, ``docs/data.md``) by ``python -m kaleido prepare <name> --output DIR``: then ``kaleido extract``
and ``ImageFolderDataModule`` take them like any folder of one's own."""
