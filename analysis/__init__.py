"""Polars + Altair analysis of rayrs results: one module per figure family of the paper."""
