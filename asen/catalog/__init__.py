"""Product catalogs: unlabelled items with ids and metadata, embedded for every attribute.

`asen.catalog.files` is the file format (docs/architecture.md, "Catalog files");
`asen.catalog.embed` writes it.
"""
