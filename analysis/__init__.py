"""Polars + Altair analysis of rayrs results: every figure and table of Cianfarani et al., one module per family.

- `load`: the Parquet readers (through `rayrs.storage.Storage`) and how trials are named
- `layers`: layer axes in network order, named by block, with the layer-type dropdown
- `table1`: Table 1; `curves`: accuracy over training
- `heatmaps`: layer x layer CKA within and between networks (Figs 2, 2d, 3, 7)
- `adversarial`: benign vs adversarial representations (Fig 4) and transfer (Fig 5)
- `dynamics`: representations over training (Figs 6, 25)
- `measures`: CKA vs Procrustes vs SVCCA (App. B.1)
- `summary`: the numbers the paper only shows as pictures (``summary.parquet``)
- `uncertainty`: the 95% interval of every number, and the rule that turns one into a claim
- `findings`: what this run shows, in words; `report`: the registry of figures and the offline page
- `view`: `similarity_view`, the similarity rows joined with each layer's block and each model's training
"""

from analysis.view import similarity_view

__all__ = ["similarity_view"]
