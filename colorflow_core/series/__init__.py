"""Series scale: colorize many chapters on a Ray cluster with the pages one machine would make.

``python -m colorflow_core colorize-series SERIES --out OUT --ray local --workers 2`` (`command`).
`manifest` reads the series (a folder of chapter folders, or a JSON / CSV manifest), `storage` reads
and writes local paths and URIs, `ray_run` is the Ray Data pipeline. Ray itself is optional
(requirements-cluster.txt) and imported only when the command runs.
"""
