"""The native path: ColorFlow as a patch on a ComfyUI MODEL (`patch`) and its nodes (`nodes`)."""
