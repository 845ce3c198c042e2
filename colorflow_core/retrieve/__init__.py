"""Retrieval (RAP): image encoders, the reference pool, and the per-page canvas + mask."""
