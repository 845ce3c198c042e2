"""The text prompts of in-context colorization: the original uses "manga" and an empty negative prompt,
for the SD and the PixArt styles alike."""

PROMPT = "manga"
NEGATIVE_PROMPT = ""
