"""Story side of the pipeline: frame plans, poses and the condition images drawn from them."""
