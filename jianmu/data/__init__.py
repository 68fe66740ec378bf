"""Finding samples, decoding images, auditing a dataset, splits and manifests, transforms."""
