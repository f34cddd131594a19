"""Zero-shot foundation-model metrics from intermediate CLIP/DINO layers (ZS-IQA, ICASSP 2025).

Not implemented yet: this package registers no metric until its issue lands.
"""
