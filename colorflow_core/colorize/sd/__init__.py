"""ICP on SD1.5 (the screenstyle style): ColorGuider, its residual injection into the UNet, the pipeline."""
