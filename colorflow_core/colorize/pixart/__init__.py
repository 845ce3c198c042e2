"""ICP on PixArt-alpha (the sketch / shading styles): ColorGuider, injection, prompt cache, pipeline."""
