"""Guided upscaling (GSRP): the fusion net and the VAE decode guided by the gray page's features."""
