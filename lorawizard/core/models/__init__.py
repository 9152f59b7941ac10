"""The models step: the catalog, find-before-download, our resumable transfer, the files training uses, captioner folders."""
