"""Representation similarity: all-pairs minibatch linear CKA (unbiased HSIC) and Grams recorded in hooks.

`cka_matrix(xs, ys)` is the notebook entry point; `layer_grams` / `GramRecorder` + `MinibatchCKA` are the
streaming path the similarity jobs use (one Gram per layer per minibatch, all layer pairs in one GEMM).
"""

from rayrs.similarity.cka import MinibatchCKA, centered_gram, cka_matrix, u_center
from rayrs.similarity.grams import GramRecorder, LayerRef, layer_grams

__all__ = ["GramRecorder", "LayerRef", "MinibatchCKA", "centered_gram", "cka_matrix", "layer_grams", "u_center"]
