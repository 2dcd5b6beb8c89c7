"""nnU-Net v2 raw datasets from converted volumes and their masks (``export-nnunet``)."""
