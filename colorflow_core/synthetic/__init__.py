"""Random-weight releases in the official layout (tests, benchmarks, the ComfyUI end-to-end test).

`sd.py`: SD1.5 base, `GraySD/` guider + LoRA, `image_encoder/`; `preprocess.py`: line extractor and
ScreenStyle networks. The real weights are never needed for any of these.
"""
