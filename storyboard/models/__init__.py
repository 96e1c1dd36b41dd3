"""Model loading and the models the stages share: SDXL parts, CLIP, DINOv2, Grounding DINO, face backends."""
