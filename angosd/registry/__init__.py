"""Registry semantics over a storage driver: blobs, uploads, manifests, tags, referrers."""
