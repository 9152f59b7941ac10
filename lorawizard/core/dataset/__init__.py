"""The dataset step: scan, decode and orient, buckets and crops, the manifest, thumbnails."""
