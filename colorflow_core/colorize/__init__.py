"""In-context colorization (ICP): the page batches shared by both base models, the ColorGuider's
conditioning, the release LoRA, and one subpackage per base model (``sd``, ``pixart``)."""
